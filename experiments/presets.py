"""Named configurations of the study and the command line that overrides them.

`tiny` (tests), `quick` (a laptop CPU, minutes), `full` (one GPU). A preset is
a frozen `Preset`: the systems and models (objects from `experiments.specs`)
and flat settings, every one of which is a command-line flag of every study
command (`--steps 300 --seeds 0 1 2 --n-train 1 8`). `--preset NAME` picks the
defaults; `--preset package.module:NAME` loads a user's own `Preset` object.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import math
from typing import Annotated

import numpy as np
import tyro

import dynamics
import models

from .specs import ModelSpec, OscillatorSpec, ParametricSpec, SystemSpec

# --------------------------------------------------------------------------- systems
_GRAPHS = {
    "chain": dynamics.chain_coupling,
    "ring": dynamics.ring_coupling,
    "all": dynamics.all_to_all_coupling,
}


def _detuned(n: int, spread: float = 0.15) -> np.ndarray:
    """Fixed, slightly detuned frequencies `1 + spread * U(-1, 1)` (seed 12345)."""
    return 1.0 + spread * np.random.default_rng(12345).uniform(-1, 1, n)


def coupled(cls: type, n: int = 4, graph: str = "chain", kappa: float = 0.2, **kwargs):
    """`cls(omega=_detuned(n), coupling=graph(n, kappa), **kwargs)` for the unit-mass chains."""
    return cls(omega=_detuned(n), coupling=_GRAPHS[graph](n, kappa), **kwargs)


def huygens(n: int = 2) -> dynamics.HuygensClocks:
    """Clocks on a heavy beam tuned near their frequency (`mass_ratio = 0.4`,
    `beam_omega = 1.0`): they lock within the forecast (measured over 16 sampled starts: median
    lock time 19.5, all by t = 38 < t_end = 40), so `phase_lock_error` scores the locking itself.
    With the class's light default beam (0.05, 1.5) the median lock time is 126."""
    return dynamics.HuygensClocks(omega=_detuned(n, 0.01), mass_ratio=0.4, beam_omega=1.0)


def kuramoto(n: int = 8, graph: str = "ring", kappa: float = 0.1) -> dynamics.Kuramoto:
    omega = np.random.default_rng(12345).normal(0.0, 0.5, n)
    return dynamics.Kuramoto(omega=omega, coupling=_GRAPHS[graph](n, kappa))


PENDULUMS4 = SystemSpec(
    "CoupledPendulums",
    functools.partial(coupled, dynamics.CoupledPendulums),
    oscillator_kind="pendulum",
)
HARMONIC4 = SystemSpec(
    "HarmonicChain",
    functools.partial(coupled, dynamics.HarmonicChain, kappa=0.3),
    oscillator_kind="harmonic",
)
VANDERPOL4 = SystemSpec(
    "CoupledVanDerPol",
    functools.partial(coupled, dynamics.CoupledVanDerPol, graph="ring", kappa=0.1, mu=0.5),
    oscillator_kind="vanderpol",
)
HUYGENS2 = SystemSpec("HuygensClocks", huygens, oscillator_kind="huygens")
KURAMOTO8 = SystemSpec("Kuramoto", kuramoto)
DOUBLE_PENDULUM = SystemSpec("DoublePendulum", dynamics.DoublePendulum, oscillator_kind="pendulum")
#: the double pendulum started over `|theta|, |w| <= 2`: into its chaotic regime (largest
#: Lyapunov exponents 0.02 to 1.1 over the sampled starts, against < 0.025 at the default
#: amplitude 0.5; see `dynamics.DoublePendulum`)
DOUBLE_PENDULUM_CHAOTIC = SystemSpec(
    "DoublePendulumChaotic",
    functools.partial(dynamics.DoublePendulum, amplitude=2.0),
    oscillator_kind="pendulum",
)

# --------------------------------------------------------------------------- models
_ODE = {"width": "width", "window": "window"}
#: a free rollout as long as the whole training window: the recipe's windows set its length.
#: Four times the preset's budget: at 1x (1,812 steps) the LSTM had not converged at
#: n_train = 128 on any of 3 seeds (interp 2.5e-4, extrap 3.2e-3, validation rollout still
#: improving); at 4x all three converged (interp 2.4e-5 to 4.4e-5, extrap 2.7e-4 to 5.8e-4)
LSTM = ModelSpec(
    models.LSTM,
    kwargs={"rollout": 200},
    preset_kwargs={"hidden": "hidden"},
    train={"budget_scale": 4.0},
    cost=4.0,
)
NEURAL_ODE = ModelSpec(models.NeuralODE, kwargs={"depth": 2}, preset_kwargs=_ODE)
SECOND_ORDER_NODE = ModelSpec(models.SecondOrderNODE, kwargs={"depth": 2}, preset_kwargs=_ODE)
HNN = ModelSpec(models.HNN, kwargs={"depth": 2}, preset_kwargs=_ODE)
#: a step costs about ten times another ODE model's (a Hessian solve per state): a quarter of
#: the budget
LNN = ModelSpec(
    models.LNN, kwargs={"depth": 2}, preset_kwargs=_ODE, train={"budget_scale": 0.25}, cost=3.0
)
DISSIPATIVE_HNN = ModelSpec(
    models.DissipativeHNN, kwargs={"depth": 2}, preset_kwargs=_ODE, cost=2.0
)
OSCILLATORS_N = OscillatorSpec(k="n", preset_kwargs={"window": "window"})
#: the same structure trained from unit frequencies and small couplings by the same recipe as
#: every other model (no least-squares identification)
OSCILLATORS_N_AGNOSTIC = OscillatorSpec(k="n", init="agnostic", preset_kwargs={"window": "window"})
OSCILLATORS_2 = OscillatorSpec(k=2, preset_kwargs={"window": "window"})
PARAMETRIC = ParametricSpec(preset_kwargs={"window": "window"})
#: the reservoir baselines of the field (ridge readouts in closed form; seconds to fit):
#: NG-RC with the paper's two delays of stride one and quadratic monomials, and an ESN of 200
#: leaky units
NVAR_SPEC = ModelSpec(models.NVAR, kwargs={"k": 2, "s": 1}, cost=0.2)
ESN_SPEC = ModelSpec(models.ESN, kwargs={"units": 200}, cost=0.3)
#: sparse identification (pysindy's STLSQ on polynomials to degree 3, threshold and derivative
#: window chosen on `val`; 18 regressions, about 20 s at n_train = 128 in the quick study).
#: Without sin/cos: with them the chains are not identifiable at the sampled amplitudes
#: (`sin q = q - q^3/6 + ...`; 1% noise then gives coefficients of 30-40 on the harmonic chain,
#: see tests/test_sindy.py)
SINDY_SPEC = ModelSpec(models.SINDy, kwargs={"degree": 3, "trig": False}, label="SINDy", cost=1.0)
#: the LSTM's sibling black boxes, trained by the same recipe (`rollout_recipe`) and stopping
#: rule: a GRU of the preset's `hidden` units, and a causal Transformer whose window is the
#: study's context (`W = C`; 2 pre-layer-norm blocks of 4 heads, d_model 32). The GRU gets the
#: LSTM's fourfold budget for the same reason: at 1x it had not converged at n_train = 128
#: (quick settings, seed 0: extrap 9.2e-3, validation rollout still improving); at 4x all three
#: seeds converge at n_train 1 and 128 (extrap 6.7e-4 ± 2.5e-4 at 128; 93 to 131 s of training
#: a run on one core). The Transformer gets it too: at 1x its first stage was still improving at
#: n_train = 128 (validation rollout 2.0e-3); at 4x (seed 0) 6.5e-4, still falling when that
#: stage's budget ran out. A run costs about ten of the LSTM's (`cost`; its window-61 step
#: about 4.7 LSTM steps, and the longer windows' free rollouts more)
GRU_SPEC = ModelSpec(
    models.GRU,
    kwargs={"rollout": 200},
    preset_kwargs={"hidden": "hidden"},
    label="GRU",
    train={"budget_scale": 4.0},
    cost=4.8,
)
TRANSFORMER_SPEC = ModelSpec(
    models.Transformer,
    kwargs={"rollout": 200, "d_model": 32, "heads": 4, "layers": 2},
    preset_kwargs={"context": "context"},
    label="Transformer",
    train={"budget_scale": 4.0},
    cost=40.0,
)


# --------------------------------------------------------------------------- presets
@dataclasses.dataclass(frozen=True)
class Preset:
    """Everything that defines a study run (recorded with its results; each run is keyed by
    a hash of what determines it). The systems and models are objects (set in Python); every
    other field is a command-line flag."""

    name: Annotated[str, tyro.conf.Suppress]
    systems: Annotated[tuple[SystemSpec, ...], tyro.conf.Suppress]
    models: Annotated[tuple[ModelSpec, ...], tyro.conf.Suppress]
    seeds: tuple[int, ...] = (0,)
    """training seeds (each also draws its own dataset)"""
    n_train: tuple[int, ...] = (128,)
    """numbers of training trajectories (an axis of the study, like seeds)"""
    n_val: int = 16
    n_test: int = 16
    dt: float = 0.05
    t_train: float = 10.0
    t_end: float = 40.0
    noise: float = 0.01
    """observation noise on train and val: its standard deviation as a fraction of each
    coordinate's spread (standard deviation) over the clean training trajectories"""
    ood_scale: float = 2.0
    context: int = 20
    """observed states a forecast starts from"""
    steps: int = 1500
    """each model's training budget: the steps of its recipe's first stage (the derivative
    stage of the ODE models; see `models.recipes`), the later stages in proportion"""
    batch_size: int = 32
    lr: float = 3e-3
    lr_grid: tuple[float, ...] = ()
    """learning rates to choose from on val (empty: `lr` alone)"""
    width: int = 64
    """width of the ODE-type models' networks"""
    width_grid: tuple[int, ...] = ()
    """widths to choose from on val (empty: `width` alone)"""
    pilot: float = 0.2
    """the fraction of the recipe's budget that each candidate's pilot run gets"""
    hidden: int = 64
    """LSTM hidden size"""
    eval_every: int = 250
    window: int = 30
    """multiple-shooting window (steps) of the ODE models"""
    attr_traj: int = 2
    """test trajectories attributed per model"""
    attr_horizons: int = 12
    """forecast horizons (log-spaced) at which attributions are scored"""
    ig_steps: int = 8
    """Gauss-Legendre nodes of integrated gradients in the study"""
    ensemble_seeds: bool | None = None
    """train a model's seeds (at one system and n_train) as one ensemble (None: on
    accelerators only; on a CPU it is no faster). Not part of a run's hash: the results equal
    separate fits up to rounding"""

    #: the fields that concern only the attribution study (not part of a run's hash)
    ATTRIBUTION_FIELDS = ("attr_traj", "attr_horizons", "ig_steps")

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"preset {self.name!r}: {msg}")

        if not isinstance(self.n_val, int) or self.n_val < 0:
            fail(f"n_val must be an integer >= 0, got {self.n_val!r}")
        for f in (
            "n_test",
            "context",
            "steps",
            "batch_size",
            "width",
            "hidden",
            "eval_every",
            "window",
            "attr_traj",
            "attr_horizons",
            "ig_steps",
        ):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                fail(f"{f} must be an integer >= 1, got {getattr(self, f)!r}")
        if not (isinstance(self.pilot, float) and 0 < self.pilot <= 1):
            fail(f"pilot must be a fraction in (0, 1], got {self.pilot!r}")
        if any(not (isinstance(x, float) and math.isfinite(x) and x > 0) for x in self.lr_grid):
            fail(f"lr_grid must hold finite learning rates > 0, got {self.lr_grid!r}")
        if any(not isinstance(x, int) or x < 1 for x in self.width_grid):
            fail(f"width_grid must hold positive integers, got {self.width_grid!r}")
        for f in ("dt", "t_train", "t_end", "lr", "ood_scale"):
            if not (math.isfinite(getattr(self, f)) and getattr(self, f) > 0):
                fail(f"{f} must be finite and > 0, got {getattr(self, f)!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            fail(f"noise must be finite and >= 0, got {self.noise!r}")
        if not self.t_train <= self.t_end:
            fail(f"need t_train <= t_end, got {self.t_train} > {self.t_end}")
        if self.context * self.dt >= self.t_train:
            fail(
                f"the context ({self.context} states of dt={self.dt}) "
                "must end inside the training window"
            )
        for f in ("seeds", "n_train"):
            vals = getattr(self, f)
            if not vals or len(set(vals)) != len(vals):
                fail(f"{f} must be a non-empty tuple without repeats, got {vals!r}")
        if any(not isinstance(s, int) or s < 0 for s in self.seeds):
            fail(f"seeds must be non-negative integers, got {self.seeds!r}")
        if any(not isinstance(n, int) or n < 1 for n in self.n_train):
            fail(f"n_train must be positive integers, got {self.n_train!r}")
        if self.ensemble_seeds not in (None, True, False):
            fail(f"ensemble_seeds must be True, False or None, got {self.ensemble_seeds!r}")
        if not self.systems or not all(isinstance(s, SystemSpec) for s in self.systems):
            fail("systems must be a non-empty tuple of SystemSpec")
        if len({s.name for s in self.systems}) != len(self.systems):
            fail(f"system names must be unique, got {[s.name for s in self.systems]}")
        if not self.models or not all(isinstance(m, ModelSpec) for m in self.models):
            fail("models must be a non-empty tuple of ModelSpec")

    def settings(self) -> dict:
        """The flat settings (every field but the name, systems and models)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("name", "systems", "models")
        }

    def as_dict(self) -> dict:
        from .specs import jsonable

        return {
            "name": self.name,
            "systems": [s.describe() for s in self.systems],
            "models": [jsonable(dataclasses.asdict(m)) for m in self.models],
            **self.settings(),
        }

    def overrides(self, base: Preset) -> dict:
        """The settings that differ from `base` (what the command line changed)."""
        mine, theirs = self.settings(), base.settings()
        return {k: v for k, v in mine.items() if v != theirs[k]}


ALL_MODELS = (
    LSTM,
    NEURAL_ODE,
    SECOND_ORDER_NODE,
    OSCILLATORS_N,
    OSCILLATORS_N_AGNOSTIC,
    OSCILLATORS_2,
    PARAMETRIC,
    HNN,
    LNN,
    DISSIPATIVE_HNN,
    NVAR_SPEC,
    ESN_SPEC,
    SINDY_SPEC,
    GRU_SPEC,
    TRANSFORMER_SPEC,
)

#: every system of the study (the double pendulum twice: near-regular and chaotic)
ALL_SYSTEMS = (
    PENDULUMS4,
    HARMONIC4,
    VANDERPOL4,
    HUYGENS2,
    KURAMOTO8,
    DOUBLE_PENDULUM,
    DOUBLE_PENDULUM_CHAOTIC,
)
#: the training settings of the CPU presets (quick and standard)
_CPU_TRAINING = dict(steps=20000, width=128, lr_grid=(1e-3, 3e-3), pilot=0.1, eval_every=500)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        systems=(
            SystemSpec(
                "CoupledPendulums",
                functools.partial(coupled, dynamics.CoupledPendulums, n=3),
                oscillator_kind="pendulum",
            ),
        ),
        # the LSTM at the preset's own budget: the tests choose their budgets themselves
        models=(OSCILLATORS_N, dataclasses.replace(LSTM, train={}, cost=1.5)),
        seeds=(0,),
        n_train=(8,),
        n_val=2,
        n_test=4,
        t_train=5.0,
        t_end=10.0,
        dt=0.1,
        context=10,
        steps=60,
        eval_every=20,
        width=16,
        hidden=16,
        batch_size=8,
        window=10,
    ),
    "quick": Preset(
        name="quick",
        systems=(PENDULUMS4,),
        models=(
            LSTM,
            NEURAL_ODE,
            SECOND_ORDER_NODE,
            OSCILLATORS_N,
            OSCILLATORS_N_AGNOSTIC,
            OSCILLATORS_2,
            HNN,
            DISSIPATIVE_HNN,
            LNN,
            NVAR_SPEC,
            ESN_SPEC,
            SINDY_SPEC,
        ),
        seeds=(0, 1, 2),
        n_train=(1, 128),
        **_CPU_TRAINING,
    ),
    "standard": Preset(
        name="standard",
        systems=ALL_SYSTEMS,
        models=(
            LSTM,
            NEURAL_ODE,
            SECOND_ORDER_NODE,
            OSCILLATORS_N,
            OSCILLATORS_N_AGNOSTIC,
            OSCILLATORS_2,
            HNN,
            DISSIPATIVE_HNN,
            LNN,
            NVAR_SPEC,
            ESN_SPEC,
            SINDY_SPEC,
            GRU_SPEC,
            TRANSFORMER_SPEC,
            # the exact-structure white box: the only structured model for Kuramoto and the
            # only one that can represent the double pendulum (about 25 s a run)
            PARAMETRIC,
        ),
        seeds=(0, 1, 2),
        n_train=(1, 4, 16, 128),
        **_CPU_TRAINING,
    ),
    "full": Preset(
        name="full",
        systems=ALL_SYSTEMS,
        models=ALL_MODELS,
        seeds=(0, 1, 2, 3, 4),
        n_train=(256,),
        n_test=32,
        steps=5000,
        eval_every=500,
        attr_traj=8,
        attr_horizons=24,
        ig_steps=32,
    ),
}


def get_preset(name: str) -> Preset:
    """A preset by name, or a user's own as `package.module:NAME` (a `Preset` object there)."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load preset {name!r}: {e}") from e
        if not isinstance(obj, Preset):
            raise ValueError(
                f"{name!r} is a {type(obj).__name__}, not an experiments.presets.Preset"
            )
        return obj
    if name not in PRESETS:
        raise ValueError(
            f"unknown preset {name!r}; choose one of {sorted(PRESETS)} or give package.module:NAME"
        )
    return PRESETS[name]


def cli(command: type, argv=None, *, default_preset: str = "quick", description: str | None = None):
    """Parses a command line into `(command_args, preset, overrides)`.

    `command` is a dataclass of the command's own flags (`out`, `figures`,
    `progress`, ...). `--preset` picks the defaults of every preset field;
    each field is then a flat flag (`--steps 300 --seeds 0 1 2`). The preset
    returned carries the overrides; `overrides` lists them (see `Preset.overrides`).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=default_preset)
    known, _ = pre.parse_known_args(argv)
    base = get_preset(known.preset)  # a bad name fails here, before any work

    # built with real type objects (this module's annotations are strings)
    args_cls = dataclasses.make_dataclass(
        "Args",
        [
            ("cmd", Annotated[command, tyro.conf.OmitArgPrefixes]),
            ("preset_settings", Annotated[Preset, tyro.conf.OmitArgPrefixes]),
            (
                "preset",
                Annotated[
                    str,
                    tyro.conf.arg(
                        help=f"{', '.join(PRESETS)}, or package.module:NAME "
                        "(a Preset object of your own)"
                    ),
                ],
            ),
        ],
    )
    doc = (description or command.__doc__ or "").strip()
    doc += (
        f"\n\nPresets: {', '.join(sorted(PRESETS))} (or package.module:NAME); "
        f"the defaults below are {base.name!r}'s."
    )
    args = tyro.cli(
        args_cls,
        args=argv,
        description=doc,
        default=args_cls(cmd=command(), preset_settings=base, preset=known.preset),
    )
    try:
        preset = dataclasses.replace(base, **args.preset_settings.settings())
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return args.cmd, preset, preset.overrides(base)
