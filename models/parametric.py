"""The exact-structure white box: a system's own equations with its parameters learned."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

import dynamics

from ._base import ODEModel
from ._common import Stats

ConstraintKind = Literal["real", "positive", "nonnegative", "coupling", "interval"]


@dataclasses.dataclass(frozen=True)
class Constraint:
    r"""How one array field of a system is learned: the map from an unconstrained raw
    parameter `r` to the field's value, and the data-agnostic start.

    - `"real"`: `value = r`;
    - `"positive"`: `value = exp(r) > 0` (frequencies, lengths, masses: steps in log scale);
    - `"nonnegative"`: `value = softplus(r) >= 0` (damping, escapement gain);
    - `"coupling"`: a square matrix `K = (S + S^T) / 2 * (1 - I)` with `S = softplus(R)`:
      symmetric, non-negative, zero diagonal;
    - `"interval"`: `value = upper * sigmoid(r)` in `(0, upper)` (Huygens' `mass_ratio`,
      with `upper = 1 / n`, so that `mass_ratio * n < 1`).

    `start` is the value every entry takes in the data-agnostic start (for
    `"coupling"`: every off-diagonal entry).
    """

    kind: ConstraintKind
    start: float
    upper: float | None = None

    def __post_init__(self):
        kinds = ("real", "positive", "nonnegative", "coupling", "interval")
        if self.kind not in kinds:
            raise ValueError(f"Constraint.kind must be one of {kinds}, got {self.kind!r}")
        if self.kind == "interval" and not (self.upper is not None and self.upper > 0):
            raise ValueError(f"an 'interval' Constraint needs upper > 0, got {self.upper!r}")
        if self.kind in ("positive", "interval") and not self.start > 0:
            raise ValueError(f"a {self.kind!r} Constraint needs start > 0, got {self.start!r}")
        if self.kind == "interval" and not self.start < self.upper:
            raise ValueError(f"start {self.start!r} must be below upper {self.upper!r}")
        if self.kind in ("nonnegative", "coupling") and not self.start >= 0:
            raise ValueError(f"a {self.kind!r} Constraint needs start >= 0, got {self.start!r}")

    # value <-> raw
    def value(self, raw: Array) -> Array:
        if self.kind == "real":
            return raw
        if self.kind == "positive":
            return jnp.exp(raw)
        if self.kind == "nonnegative":
            return jax.nn.softplus(raw)
        if self.kind == "interval":
            return self.upper * jax.nn.sigmoid(raw)
        c = jax.nn.softplus(raw)
        c = 0.5 * (c + c.T)
        return c * (1 - jnp.eye(c.shape[0], dtype=c.dtype))

    def raw(self, value) -> np.ndarray:
        """The inverse of `value` (values on the boundary moved just inside it)."""
        x = np.asarray(value, dtype=np.float64)
        if self.kind == "real":
            return x
        if self.kind == "positive":
            return np.asarray(np.log(np.maximum(x, 1e-12)))
        if self.kind == "interval":
            f = np.clip(x / self.upper, 1e-9, 1 - 1e-9)
            return np.asarray(np.log(f) - np.log1p(-f))
        x = np.maximum(x, 1e-9)
        return np.asarray(np.where(x > 30, x, np.log(np.expm1(np.minimum(x, 30)))))

    def start_value(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.kind == "coupling":
            return self.start * (1 - np.eye(shape[0]))
        return np.full(shape, self.start)


def _oscillator_constraints(system) -> dict[str, Constraint]:
    return {"omega": Constraint("positive", 1.0), "coupling": Constraint("coupling", 0.05)}


def _vanderpol_constraints(system) -> dict[str, Constraint]:
    return dict(_oscillator_constraints(system), mu=Constraint("nonnegative", 0.5))


def _huygens_constraints(system) -> dict[str, Constraint]:
    n = system.n_oscillators
    return {
        "omega": Constraint("positive", 1.0),
        "gamma": Constraint("nonnegative", 0.05),
        "mu": Constraint("nonnegative", 0.5),
        "theta0": Constraint("positive", 1.0),
        "beam_omega": Constraint("positive", 1.0),
        "beam_gamma": Constraint("nonnegative", 0.1),
        "mass_ratio": Constraint("interval", 0.25 / n, upper=1.0 / n),
    }


def _kuramoto_constraints(system) -> dict[str, Constraint]:
    return {"omega": Constraint("real", 0.0), "coupling": Constraint("coupling", 0.05)}


def _double_pendulum_constraints(system) -> dict[str, Constraint]:
    # g > 0 here (the system allows g = 0): a pendulum under gravity
    return {name: Constraint("positive", 1.0) for name in ("m1", "m2", "l1", "l2", "g")}


#: the constraints and data-agnostic starts of the package's systems (looked up along the MRO)
CONSTRAINTS: dict[type, Callable[[dynamics.AbstractSystem], dict[str, Constraint]]] = {
    dynamics.HarmonicChain: _oscillator_constraints,
    dynamics.CoupledPendulums: _oscillator_constraints,
    dynamics.CoupledVanDerPol: _vanderpol_constraints,
    dynamics.HuygensClocks: _huygens_constraints,
    dynamics.Kuramoto: _kuramoto_constraints,
    dynamics.DoublePendulum: _double_pendulum_constraints,
}

#: the fields held at their start by default: the double pendulum's accelerations depend on
#: its parameters only through m2/m1, l2/l1 and g/l1, so m1 and l1 fix the gauge
GAUGES: dict[type, tuple[str, ...]] = {dynamics.DoublePendulum: ("m1", "l1")}


def _lookup(table: Mapping[type, object], cls: type):
    for base in cls.__mro__:
        if base in table:
            return table[base]
    return None


def _inferred_constraint(value: np.ndarray) -> Constraint:
    """For a field of a system not in `CONSTRAINTS`, read off its given value: a symmetric,
    non-negative, zero-diagonal square matrix is a coupling; an array with every entry > 0 is
    positive; anything else is real."""
    if (
        value.ndim == 2
        and value.shape[0] == value.shape[1]
        and np.allclose(value, value.T)
        and np.all(value >= 0)
        and np.all(np.diag(value) == 0)
    ):
        return Constraint("coupling", 0.05)
    if value.size and np.all(value > 0):
        return Constraint("positive", 1.0)
    return Constraint("real", 0.0)


def _leaf_name(path) -> str | None:
    """The field name of a top-level attribute leaf, else None."""
    if len(path) == 1 and isinstance(path[0], jax.tree_util.GetAttrKey):
        return path[0].name
    return None


class ParametricModel(ODEModel):
    r"""A system's own equations with its parameters learned through them.

    `y' = f_theta(y) = S(theta).vector_field(0, y)` where `S(theta)` is the
    system `system` with every learnable array field replaced by `c(r)`, `c` the
    field's `Constraint` (see `CONSTRAINTS`: frequencies, lengths and masses
    `exp(r) > 0`; damping `softplus(r) >= 0`; coupling matrices symmetric,
    non-negative, zero diagonal; Huygens' `mass_ratio` in `(0, 1/n)`; Kuramoto's
    `omega` real) and `r` an unconstrained `nnx.Param`. The system is rebuilt
    from its pytree (`jax.tree_util.tree_unflatten`), not through its
    constructor, so nothing is validated under tracing (the constraints keep
    every value physical). The forecast integrates `f_theta` with RK4 on the
    data grid from the last context state (`ODEModel`); `needs_canonical` is
    False, so first-order systems (Kuramoto) are served too. This model can
    represent the truth exactly: it is the white-box ceiling of the study.

    **Unlike the other models, it is built from a system**, not a `state_dim`:
    `ParametricModel(system, ...)`; `system` gives the equations, the shapes
    and the layout, never the starting values (unless `init=system`).

    **Arguments:**

    - `system`: any `dynamics.AbstractSystem`; its inexact array fields are learned.
    - `init`: None or `"agnostic"`: the data-agnostic start (each field at its
      `Constraint.start`: unit frequencies, masses, lengths and g, couplings
      0.05, Kuramoto `omega = 0`; the true values are never read); or a system
      of the same class and size, whose values are the start.
    - `constraints`: field name -> `Constraint`, replacing the defaults; fields
      of a system not in `CONSTRAINTS` are inferred from the given values
      (`_inferred_constraint`).
    - `fixed`: the fields held at their start (None: the class's gauge in
      `GAUGES`, `("m1", "l1")` for the double pendulum, whose accelerations
      depend only on `m2/m1`, `l2/l1` and `g/l1`; `()` learns everything).
    - `window`, `substeps`, `objective`: as `ODEModel`.
    - `rngs`: unused (the start is deterministic); accepted for a uniform signature.

    Read the learned values with `learned_system()` (a system of the same class)
    or `learned_parameters()` (a dict of arrays).

    **Identifiability:** the Huygens clocks' escapement enters the field only
    through `mu - gamma` and `mu / theta0^2`, so `gamma`, `mu` and `theta0` are
    not separately identified from trajectories; compare those combinations.
    """

    needs_canonical = False

    def __init__(
        self,
        system: dynamics.AbstractSystem,
        *,
        init: str | dynamics.AbstractSystem | None = None,
        constraints: Mapping[str, Constraint] | None = None,
        fixed: tuple[str, ...] | None = None,
        window: int = 10,
        substeps: int = 1,
        objective: str = "trajectory",
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        if not isinstance(system, dynamics.AbstractSystem):
            raise ValueError(
                f"ParametricModel needs a dynamics.AbstractSystem, got {type(system).__name__}"
            )
        if init is not None and not (
            (isinstance(init, str) and init == "agnostic") or type(init) is type(system)
        ):
            raise ValueError(
                f"init must be None, 'agnostic' or a {type(system).__name__}, got {init!r}"
            )
        super().__init__(system.state_dim, window=window, substeps=substeps, objective=objective)
        leaves, self._treedef = jax.tree_util.tree_flatten_with_path(system)
        names = [_leaf_name(path) for path, _ in leaves]
        table = _lookup(CONSTRAINTS, type(system))
        defaults = table(system) if table is not None else {}
        constraints = dict(constraints or {})
        fixed = tuple(_lookup(GAUGES, type(system)) or ()) if fixed is None else tuple(fixed)
        learnable_names = [
            name
            for name, (_, leaf) in zip(names, leaves)
            if name is not None and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
        ]
        unknown = sorted((set(constraints) | set(fixed)) - set(learnable_names))
        if unknown:
            raise ValueError(
                f"{type(system).__name__} has no learnable array field(s) {unknown}; "
                f"its fields are {learnable_names}"
            )
        if not learnable_names:
            raise ValueError(f"{type(system).__name__} has no array parameters to learn")
        init_leaves = None
        if isinstance(init, dynamics.AbstractSystem):
            init_leaves, init_def = jax.tree_util.tree_flatten(init)
            if init_def != jax.tree_util.tree_structure(system) or any(
                np.shape(a) != np.shape(b) for a, b in zip(init_leaves, (x for _, x in leaves))
            ):
                raise ValueError(
                    f"init must be a {type(system).__name__} of the same size as the system"
                )
        chosen: dict[str, Constraint] = {}
        self._slots: list[tuple[str, str]] = []  # per leaf: ("raw" | "fixed", attribute)
        for i, (name, (_, leaf)) in enumerate(zip(names, leaves)):
            leaf = np.asarray(leaf)
            if name in learnable_names:
                c = constraints.get(name) or defaults.get(name) or _inferred_constraint(leaf)
                chosen[name] = c
                start = (
                    np.asarray(init_leaves[i], dtype=np.float64)
                    if init_leaves is not None
                    else c.start_value(leaf.shape)
                )
                dtype = jnp.result_type(float)
                if name in fixed:
                    setattr(self, f"fixed_{name}", Stats(jnp.asarray(start, dtype)))
                    self._slots.append(("fixed", f"fixed_{name}"))
                else:
                    setattr(self, f"raw_{name}", nnx.Param(jnp.asarray(c.raw(start), dtype)))
                    self._slots.append(("raw", name))
            else:  # an integer array or a nested leaf: carried as it is
                setattr(self, f"leaf_{i}", Stats(jnp.asarray(leaf)))
                self._slots.append(("fixed", f"leaf_{i}"))
        self._slots = tuple(self._slots)
        # a tuple, not a dict: static attributes of an nnx module must be hashable
        self.constraints = tuple(chosen.items())
        self.learned_names = tuple(name for kind, name in self._slots if kind == "raw")

    # ------------------------------------------------------------ parameters
    def learned_parameters(self) -> dict[str, Array]:
        """The current value of every learned field, by name (the fixed ones excluded)."""
        constraints = dict(self.constraints)
        return {
            name: constraints[name].value(getattr(self, f"raw_{name}")[...])
            for name in self.learned_names
        }

    def learned_system(self) -> dynamics.AbstractSystem:
        """The system with the learned values (and the fixed fields at their start)."""
        values = self.learned_parameters()
        leaves = [
            values[attr] if kind == "raw" else getattr(self, attr)[...]
            for kind, attr in self._slots
        ]
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

    # ------------------------------------------------------------ dynamics
    def field(self, y: Float[Array, " d"]) -> Float[Array, " d"]:
        return self.learned_system().vector_field(0.0, y)
