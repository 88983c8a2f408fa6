r"""Looking inside a learner: linear probes, unit dissection, hidden-state PCA and the
fixed points of the LSTM's autonomous map.

Probes
    `ridge_probe` (cross-validated ridge regression from hidden states to a
    target, scored by out-of-fold `R^2`), `probe_with_control` and
    `probe_report` (the same probe on the hidden states of a randomly
    initialised network of the same architecture, fed the same inputs:
    `random_features_control`), and the physical targets of a system,
    `physical_targets`, read through the layout the system declares
    (`split_state`, `natural_frequencies`, `angular`, `observables`).
Dissection
    `dissect` (network dissection, Bau et al. 2017: each unit's top-quantile
    activation mask against binary concepts, scored by IoU) and the physical
    concepts of a system, `physical_concepts`.
Hidden-state geometry
    `pca_fit`, `pca_transform` and `manifold_departure` (how far hidden states
    produced beyond the training window leave the subspace the states inside
    it span).
Fixed points
    `lstm_autonomous_map`, `lstm_fixed_points` (the fixed points of the
    free-running LSTM and the eigenvalues of its linearisation),
    `eigen_frequencies` and `compare_to_normal_modes` (against the system's
    true normal-mode frequencies).
Linear spectra
    `dmd` (exact dynamic mode decomposition of trajectories), `linearisation_spectrum`
    (the Jacobian of an ODE model's field at a rest state; for any other model,
    `forecast_spectrum`: the DMD of its own forecasts from small-amplitude contexts) and
    `match_normal_modes`, each a `Spectrum`.

Everything here is analysis on stored arrays: plain NumPy (float64) except
where a model is evaluated (the fixed-point search, which jits and
differentiates the LSTM step with JAX). Argument checks raise `ValueError`.
"""

from ._dissect import Dissection as Dissection, dissect as dissect
from ._fixed_points import (
    AutonomousMap as AutonomousMap,
    FixedPoints as FixedPoints,
    ModeComparison as ModeComparison,
    compare_to_normal_modes as compare_to_normal_modes,
    eigen_frequencies as eigen_frequencies,
    lstm_autonomous_map as lstm_autonomous_map,
    lstm_fixed_points as lstm_fixed_points,
)
from ._geometry import (
    PCA as PCA,
    ManifoldDeparture as ManifoldDeparture,
    manifold_departure as manifold_departure,
    pca_fit as pca_fit,
    pca_transform as pca_transform,
)
from ._ridge import (
    ALPHA_GRID as ALPHA_GRID,
    ControlledProbe as ControlledProbe,
    ProbeResult as ProbeResult,
    probe_report as probe_report,
    probe_with_control as probe_with_control,
    random_features_control as random_features_control,
    ridge_probe as ridge_probe,
)
from ._spectra import (
    Spectrum as Spectrum,
    dmd as dmd,
    forecast_spectrum as forecast_spectrum,
    linearisation_spectrum as linearisation_spectrum,
    match_normal_modes as match_normal_modes,
)
from ._targets import physical_concepts as physical_concepts, physical_targets as physical_targets

__all__ = [
    "ALPHA_GRID",
    "AutonomousMap",
    "ControlledProbe",
    "Dissection",
    "FixedPoints",
    "ManifoldDeparture",
    "ModeComparison",
    "PCA",
    "ProbeResult",
    "Spectrum",
    "compare_to_normal_modes",
    "dissect",
    "dmd",
    "eigen_frequencies",
    "forecast_spectrum",
    "linearisation_spectrum",
    "lstm_autonomous_map",
    "lstm_fixed_points",
    "manifold_departure",
    "match_normal_modes",
    "pca_fit",
    "pca_transform",
    "physical_concepts",
    "physical_targets",
    "probe_report",
    "probe_with_control",
    "random_features_control",
    "ridge_probe",
]
