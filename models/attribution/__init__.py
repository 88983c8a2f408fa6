r"""Attribution for any JAX function, scored against the simulator's ground truth.

Every method works on a plain function `fn` that maps **one** input array `x`
to a scalar; batch with `jax.vmap`, compile with `jax.jit`, differentiate with
`jax.grad`. Argument checks are static (shapes, dtypes, Python numbers) and
raise `ValueError` before anything is traced; nothing inspects traced values.

Gradient methods
    `saliency`, `gradient_x_input`, `integrated_gradients` (with the quadrature
    rules of Captum and a correct trapezoid rule, see `quadrature`),
    `integrated_gradients_with_delta`, `completeness_delta`, `smoothgrad`,
    `vargrad`.
Perturbation
    `occlusion` over time windows of a `(T, D)` sequence.
Relevance propagation
    `lstm_lrp`: LRP for a stacked LSTM with the gate rule of Arras et al. 2017;
    `lstm_forward` is the forward pass it explains.
Faithfulness
    `infidelity`, `max_sensitivity` (Yeh et al. 2019) and `randomisation_check`
    (the cascading model-parameter randomisation test of Adebayo et al. 2018).
Ground truth
    `true_jacobian` (`d y(t) / d y0` through `dynamics.simulate`),
    `oscillator_scores` and `oscillator_membership` (state coordinates pooled
    to oscillators by the layout the system declares), `coupling_auroc`,
    `spearman`, `jacobian_spearman` and `score_by_horizon` (scores inside
    versus beyond the training window).

Sums over many evaluation points (path steps, noise samples, windows) run in
chunks of `chunk_size` points: `jax.vmap` inside a chunk, `jax.lax.scan` over
chunks, so memory grows with `chunk_size`, not with the number of points.

Each eager call compiles its own program (the function `fn` is new to JAX on
every call). To explain many inputs, `jax.vmap` over them or wrap the call in
`jax.jit` once, e.g. `ig = jax.jit(lambda x: integrated_gradients(fn, x))`.
"""

from ._faithfulness import (
    RandomisationResult as RandomisationResult,
    infidelity as infidelity,
    max_sensitivity as max_sensitivity,
    randomisation_check as randomisation_check,
)
from ._gradients import gradient_x_input as gradient_x_input, saliency as saliency
from ._ground_truth import (
    HorizonScores as HorizonScores,
    coupling_auroc as coupling_auroc,
    jacobian_spearman as jacobian_spearman,
    score_by_horizon as score_by_horizon,
    spearman as spearman,
    true_jacobian as true_jacobian,
)
from ._integrated import (
    QUADRATURE_METHODS as QUADRATURE_METHODS,
    completeness_delta as completeness_delta,
    integrated_gradients as integrated_gradients,
    integrated_gradients_with_delta as integrated_gradients_with_delta,
    quadrature as quadrature,
)
from ._layout import (
    oscillator_membership as oscillator_membership,
    oscillator_scores as oscillator_scores,
)
from ._lrp import lstm_forward as lstm_forward, lstm_lrp as lstm_lrp
from ._noise import smoothgrad as smoothgrad, vargrad as vargrad
from ._occlusion import occlusion as occlusion

__all__ = [
    "HorizonScores",
    "RandomisationResult",
    "QUADRATURE_METHODS",
    "completeness_delta",
    "coupling_auroc",
    "gradient_x_input",
    "infidelity",
    "integrated_gradients",
    "integrated_gradients_with_delta",
    "jacobian_spearman",
    "lstm_forward",
    "lstm_lrp",
    "max_sensitivity",
    "occlusion",
    "oscillator_membership",
    "oscillator_scores",
    "quadrature",
    "randomisation_check",
    "saliency",
    "score_by_horizon",
    "smoothgrad",
    "spearman",
    "true_jacobian",
    "vargrad",
]
