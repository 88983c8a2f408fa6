"""Named configurations of the study: `tiny` (tests), `quick` (a laptop CPU, minutes), `full` (one GPU)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

import dynamics

PresetName = Literal["tiny", "quick", "full"]

#: every model label the study knows; `OscillatorModel(k=K)` with K an integer or "n"
MODEL_LABELS = ("LSTM", "NeuralODE", "SecondOrderNODE", "HNN", "LNN", "DissipativeHNN")


@dataclasses.dataclass(frozen=True)
class SystemSpec:
    """A system of the study: its name, constructor keyword arguments and the oscillator kind
    the structured model should assume."""

    name: str
    kind: str = "pendulum"
    n: int = 4
    graph: str = "chain"
    kappa: float = 0.2

    def build(self) -> dynamics.AbstractSystem:
        n = self.n
        rng = np.random.default_rng(12345)  # fixed, slightly detuned frequencies
        omega = 1.0 + 0.15 * rng.uniform(-1, 1, n)
        coupling = {"chain": dynamics.chain_coupling, "ring": dynamics.ring_coupling,
                    "all": dynamics.all_to_all_coupling}[self.graph](n, self.kappa)
        if self.name == "CoupledPendulums":
            return dynamics.CoupledPendulums(omega=omega, coupling=coupling)
        if self.name == "HarmonicChain":
            return dynamics.HarmonicChain(omega=omega, coupling=coupling)
        if self.name == "CoupledVanDerPol":
            return dynamics.CoupledVanDerPol(omega=omega, mu=0.5, coupling=coupling)
        if self.name == "HuygensClocks":
            return dynamics.HuygensClocks(omega=np.ones(n) + 0.01 * rng.uniform(-1, 1, n))
        if self.name == "Kuramoto":
            return dynamics.Kuramoto(omega=rng.normal(0, 0.5, n), coupling=coupling)
        if self.name == "DoublePendulum":
            return dynamics.DoublePendulum()
        raise ValueError(f"unknown system {self.name!r}")


@dataclasses.dataclass(frozen=True)
class Preset:
    """Everything that defines a study run (recorded with its results)."""

    name: str
    systems: tuple[SystemSpec, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    n_train: int = 128
    n_val: int = 16
    n_test: int = 16
    dt: float = 0.05
    t_train: float = 10.0
    t_end: float = 40.0
    noise: float = 0.0
    ood_scale: float = 2.0
    context: int = 20
    steps: int = 1500
    lstm_steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    width: int = 64
    hidden: int = 64
    eval_every: int = 250
    window: int = 30
    """multiple-shooting window (steps) of the ODE models"""
    attr_traj: int = 2
    """test trajectories attributed per model"""
    attr_horizons: int = 12
    """forecast horizons (log-spaced) at which attributions are scored"""
    ig_steps: int = 8
    """Gauss-Legendre nodes of integrated gradients in the study"""

    def __post_init__(self):
        for label in self.models:
            parse_model_label(label)
        for f in ("n_train", "n_test", "context", "steps", "lstm_steps", "batch_size", "width",
                  "hidden", "eval_every", "window"):
            if getattr(self, f) < 1:
                raise ValueError(f"preset {self.name!r}: {f} must be >= 1, got {getattr(self, f)!r}")
        if not (0 < self.dt and 0 < self.t_train <= self.t_end):
            raise ValueError(f"preset {self.name!r}: need 0 < dt and 0 < t_train <= t_end")
        if self.context * self.dt >= self.t_train:
            raise ValueError(f"preset {self.name!r}: the context must end inside the training window")
        if not self.seeds:
            raise ValueError(f"preset {self.name!r}: needs at least one seed")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_model_label(label: str) -> tuple[str, str | int | None]:
    """`"OscillatorModel(k=2)"` -> `("OscillatorModel", 2)`; `"LSTM"` -> `("LSTM", None)`."""
    if label.startswith("OscillatorModel(k=") and label.endswith(")"):
        k = label[len("OscillatorModel(k="):-1]
        if k == "n":
            return "OscillatorModel", "n"
        if k.isdigit() and int(k) >= 1:
            return "OscillatorModel", int(k)
        raise ValueError(f"bad OscillatorModel label {label!r}: k must be a positive integer or n")
    if label in MODEL_LABELS:
        return label, None
    raise ValueError(f"unknown model {label!r}; expected one of {MODEL_LABELS} or 'OscillatorModel(k=K)'")


_PENDULUMS4 = SystemSpec("CoupledPendulums", kind="pendulum", n=4, graph="chain", kappa=0.2)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        systems=(SystemSpec("CoupledPendulums", kind="pendulum", n=2, graph="chain", kappa=0.2),),
        models=("OscillatorModel(k=2)", "LSTM"),
        seeds=(0,), n_train=8, n_val=2, n_test=4, t_train=5.0, t_end=10.0, dt=0.1, context=10,
        steps=60, lstm_steps=60, eval_every=20, width=16, hidden=16, batch_size=8, window=10,
    ),
    "quick": Preset(
        name="quick",
        systems=(_PENDULUMS4,),
        models=("LSTM", "NeuralODE", "SecondOrderNODE", "OscillatorModel(k=4)",
                "OscillatorModel(k=2)", "HNN"),
        seeds=(0,),
    ),
    "full": Preset(
        name="full",
        systems=(
            _PENDULUMS4,
            SystemSpec("HarmonicChain", kind="harmonic", n=4, graph="chain", kappa=0.3),
            SystemSpec("CoupledVanDerPol", kind="vanderpol", n=4, graph="ring", kappa=0.1),
            SystemSpec("HuygensClocks", kind="pendulum", n=2),
            SystemSpec("Kuramoto", n=8, graph="all", kappa=0.1),
            SystemSpec("DoublePendulum", kind="pendulum", n=2),
        ),
        models=("LSTM", "NeuralODE", "SecondOrderNODE", "OscillatorModel(k=n)",
                "OscillatorModel(k=2)", "HNN", "LNN", "DissipativeHNN"),
        seeds=(0, 1, 2, 3, 4),
        n_train=256, n_test=32, steps=5000, lstm_steps=5000, eval_every=500,
        attr_traj=8, attr_horizons=24, ig_steps=32,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
