"""The study's systems and models as objects: `SystemSpec` and `ModelSpec`.

A preset lists these objects; nothing downstream parses a label or switches on a
name. A user's own system enters the study as a `SystemSpec` holding a factory
of any `dynamics.AbstractSystem` subclass, and a user's own model as a
`ModelSpec` holding any `models.AbstractModel` subclass:

```python
import functools, dynamics, models
from experiments.specs import ModelSpec, SystemSpec

def my_system():
    return MyClocks(omega=[1.0, 1.1])           # any dynamics.AbstractSystem

mine = SystemSpec("MyClocks", my_system, oscillator_kind="pendulum")
gru = ModelSpec(MyGRU, kwargs={"hidden": 32}, preset_kwargs={"width": "width"})
```
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

import dynamics
import models


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def jsonable(value):
    """Plain JSON for hashing: arrays to lists, callables and classes to `module:qualname`."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    if isinstance(value, functools.partial):
        return {
            "partial": _qualname(value.func),
            "args": jsonable(value.args),
            "kwargs": jsonable(value.keywords),
        }
    if callable(value):
        return _qualname(value)
    return repr(value)


def config_hash(obj) -> str:
    """A short, stable SHA-256 of a JSON-able description (sorted keys)."""
    text = json.dumps(jsonable(obj), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class SystemSpec:
    """A system of the study.

    - `name`: its label in the results (unique within a preset);
    - `factory`: a zero-argument callable returning any `dynamics.AbstractSystem`
      (the same system on every call: fix its random parameters);
    - `oscillator_kind`: the oscillator law the structured model
      (`models.OscillatorModel(kind=...)`) assumes on this system, or None where
      the structured model does not apply.
    """

    name: str
    factory: Callable[[], dynamics.AbstractSystem]
    oscillator_kind: str | None = None

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"SystemSpec.name must be a non-empty string, got {self.name!r}")
        if not callable(self.factory):
            raise ValueError(
                f"SystemSpec {self.name!r}: factory must be callable, got {self.factory!r}"
            )

    def build(self) -> dynamics.AbstractSystem:
        system = self.factory()
        if not isinstance(system, dynamics.AbstractSystem):
            raise ValueError(
                f"SystemSpec {self.name!r}: factory returned {type(system).__name__}, "
                "not a dynamics.AbstractSystem"
            )
        return system

    def describe(self, system: dynamics.AbstractSystem | None = None) -> dict:
        """What determines the system: its class and its parameters (for the run hash)."""
        system = self.build() if system is None else system
        try:
            params = system.parameters()
        except (TypeError, ValueError):  # a field that is not an array (a callable)
            params = {f.name: getattr(system, f.name) for f in dataclasses.fields(system)}
        return {
            "name": self.name,
            "class": _qualname(type(system)),
            "params": jsonable(params),
            "oscillator_kind": self.oscillator_kind,
        }


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of the study.

    - `cls`: any `models.AbstractModel` subclass, built as
      `cls(state_dim, **kwargs, rngs=rngs)`;
    - `kwargs`: fixed constructor keyword arguments;
    - `preset_kwargs`: constructor keyword -> preset field, resolved at build
      time (so `--width 128` on the command line reaches every model that
      takes its width from the preset);
    - `label`: the name in the results (default: the class name);
    - `train`: training overrides of the preset's settings for this model
      (`steps`, `lr`, `batch_size`, `eval_every`), and `budget_scale`, the
      fraction of the preset's budget (`steps`) that this model's recipe gets
      (for models whose steps cost far more than the others').

    `applicable(system)` returns None, or the reason this model cannot be
    fitted to `system`; such runs are recorded as `n/a` with that reason.
    """

    cls: type
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    preset_kwargs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    label: str | None = None
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cost: float = 1.0

    _TRAIN_KEYS = ("steps", "lr", "batch_size", "eval_every", "budget_scale")

    def __post_init__(self):
        if not (isinstance(self.cls, type) and issubclass(self.cls, models.AbstractModel)):
            raise ValueError(
                f"ModelSpec.cls must be a models.AbstractModel subclass, got {self.cls!r}"
            )
        bad = set(self.train) - set(self._TRAIN_KEYS)
        if bad:
            raise ValueError(
                f"ModelSpec {self.cls.__name__}: unknown training overrides {sorted(bad)}; "
                f"allowed: {self._TRAIN_KEYS}"
            )

    def label_for(self, system: dynamics.AbstractSystem) -> str:
        """The label of this model on `system` (unique among a preset's models on it)."""
        return self.label or self.cls.__name__

    def applicable(self, system: dynamics.AbstractSystem, spec: SystemSpec) -> str | None:
        if getattr(self.cls, "needs_canonical", False) and not system.second_order:
            return (
                f"{self.cls.__name__} needs a canonical (q, p) state; "
                f"{type(system).__name__} is first order"
            )
        return None

    def constructor_kwargs(self, system: dynamics.AbstractSystem, spec: SystemSpec, preset) -> dict:
        out = {k: getattr(preset, f) for k, f in self.preset_kwargs.items()}
        out.update(self.kwargs)
        return out

    def _in_canonical(self, system: dynamics.AbstractSystem) -> bool:
        """Whether the model works in `system`'s own canonical coordinates (an HNN on the
        double pendulum or the clocks on their beam), which it is then built with, so that a
        model rebuilt to receive stored variables has the state structure of the trained one."""
        return issubclass(self.cls, models.CanonicalODEModel) and models.own_transform(system)

    def build(self, system: dynamics.AbstractSystem, spec: SystemSpec, preset, *, rngs):
        kwargs = self.constructor_kwargs(system, spec, preset)
        if self._in_canonical(system):
            kwargs.setdefault("coordinates", system)
        return self.cls(system.state_dim, **kwargs, rngs=rngs)

    def recipe(self, model: models.AbstractModel, n_train_steps: int, preset, *, lr: float):
        """The recipe the study trains `model` with (`models.AbstractModel.recipe`): the
        preset's budget (`steps`) times this spec's `train["budget_scale"]`, its context,
        evaluation interval and batch size (each overridable in `train`), at the learning
        rate `lr` (the candidate's)."""
        train = {"steps": preset.steps, "batch_size": preset.batch_size, **self.train}
        return model.recipe(
            n_train_steps,
            budget=max(1, int(train["steps"] * train.get("budget_scale", 1.0))),
            context=preset.context,
            eval_every=int(train.get("eval_every", preset.eval_every)),
            batch_size=int(train["batch_size"]),
            lr=float(lr),
        )

    def describe(self, system: dynamics.AbstractSystem, spec: SystemSpec, preset) -> dict:
        """What determines the model's runs (for the run hash): its class, label, constructor
        arguments and training overrides, and the recipe it is trained with as `describe`d
        at the preset's learning rate, so that a changed recipe (a subclass's own `recipe`
        edited, or the package's) is not answered with results of the old one."""
        out = {
            "class": _qualname(self.cls),
            "label": self.label_for(system),
            "kwargs": jsonable(self.constructor_kwargs(system, spec, preset)),
            "train": jsonable(dict(self.train)),
        }
        if self._in_canonical(system):  # a new model there: runs in (q, q') are not reused
            out["coordinates"] = "canonical"
        if self.applicable(system, spec) is None:
            out["recipe"] = self._recipe_description(system, spec, preset)
        return out

    def _recipe_description(self, system, spec, preset) -> dict:
        """The recipe's description, from a model built with abstract parameters where its
        class allows (a recipe depends on the structure, not on values; tens of ms). Not
        memoised: a recipe is the class's code, which may change within a process."""

        def build():
            return self.build(system, spec, preset, rngs=nnx.Rngs(0))

        try:
            model = nnx.eval_shape(build)
        except jax.errors.JAXTypeError:  # a constructor that computes on its values (ESN)
            model = build()
        n_train_steps = round(preset.t_train / preset.dt) + 1
        recipe = self.recipe(model, n_train_steps, preset, lr=self.train.get("lr", preset.lr))
        return jsonable(recipe.describe())


@dataclasses.dataclass(frozen=True)
class OscillatorSpec(ModelSpec):
    """The structured model `OscillatorModel(k=K)`: `k` counts oscillators (never a beam or
    other extra coordinate); `k="n"` means the system's `n_oscillators`. A fixed `k` applies
    only where it is below the system's `n` (at `k >= n` it would duplicate `k="n"`), and
    only on systems whose `SystemSpec.oscillator_kind` is set."""

    cls: type = models.OscillatorModel
    k: int | str = "n"
    init: str = "lstsq"

    def __post_init__(self):
        super().__post_init__()
        if self.k != "n" and not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"OscillatorSpec.k must be a positive integer or 'n', got {self.k!r}")
        if self.init not in ("lstsq", "agnostic"):
            raise ValueError(
                f"OscillatorSpec.init must be 'lstsq' or 'agnostic', got {self.init!r}"
            )

    def resolved_k(self, system) -> int:
        return system.n_oscillators if self.k == "n" else int(self.k)

    def label_for(self, system) -> str:
        """`OscillatorModel(k=K)` (identified from the data: `init="lstsq"`) or
        `OscillatorModel(k=K, agnostic)` (started from unit frequencies); where a fixed `k` is
        not below the system's `n` (the run is n/a, the same model as `k="n"`),
        `OscillatorModel(k=K >= n)`, so no label repeats."""
        if self.label:
            return self.label
        k = self.resolved_k(system)
        return (
            f"OscillatorModel(k={k}"
            f"{' >= n' if self.k != 'n' and k >= system.n_oscillators else ''}"
            f"{', agnostic' if self.init == 'agnostic' else ''})"
        )

    def applicable(self, system, spec: SystemSpec) -> str | None:
        if spec.oscillator_kind is None:
            return f"no oscillator law is declared for {spec.name} (SystemSpec.oscillator_kind)"
        if system.state_dim % 2:
            return (
                f"OscillatorModel observes (q, p) pairs; {spec.name} has an odd state of "
                f"{system.state_dim} coordinates"
            )
        if self.k != "n" and self.k >= system.n_oscillators:
            return (
                f"k={self.k} is not fewer than the {system.n_oscillators} oscillators of "
                f"{spec.name}; OscillatorModel(k=n) is that model"
            )
        if spec.oscillator_kind == "huygens" and self.k != "n":
            return (
                "OscillatorModel(kind='huygens') models every clock on the beam (k = n); "
                "a readout of fewer latent clocks would break the beam's cos(theta) coupling"
            )
        return super().applicable(system, spec)

    def constructor_kwargs(self, system, spec: SystemSpec, preset) -> dict:
        return {
            "k": self.resolved_k(system),
            "kind": spec.oscillator_kind,
            "init": self.init,
            **super().constructor_kwargs(system, spec, preset),
        }


@dataclasses.dataclass(frozen=True)
class ParametricSpec(ModelSpec):
    """`models.ParametricModel(system)`: the system's own equations with its parameters
    learned from a data-agnostic start (the exact-structure white box). Built from the system
    itself, so it applies to every system whose parameters are arrays, first-order ones
    (Kuramoto) included."""

    cls: type = models.ParametricModel

    def label_for(self, system) -> str:
        return self.label or "ParametricModel"

    def applicable(self, system, spec: SystemSpec) -> str | None:
        try:
            models.ParametricModel(system)
        except ValueError as e:
            return f"ParametricModel cannot learn {spec.name}'s parameters: {e}"
        return None

    def build(self, system, spec: SystemSpec, preset, *, rngs):
        return models.ParametricModel(
            system, **self.constructor_kwargs(system, spec, preset), rngs=rngs
        )
