"""Sparse identification of nonlinear dynamics (`SINDy`, Brunton, Proctor and Kutz 2016) on
pysindy, as a model of the common interface.

The vector field is a sparse linear combination of a fixed library of candidate functions,

`y' = f(y) = Xi theta(y)`,

with `theta(y)` (`F` terms) the monomials of the coordinates up to `degree` (pysindy's
`PolynomialLibrary`: the constant, then every monomial of degree 1, 2, ..., each degree in
the order of `itertools.combinations_with_replacement`) followed, with `trig=True`, by
`sin(y_j), cos(y_j)` for every coordinate `j` (pysindy's `FourierLibrary` with one frequency),
and `Xi` (`d x F`) the identified coefficients. `Xi` is found by sequentially thresholded
least squares (pysindy's `STLSQ`): a ridge regression of the derivatives `dy_t` on
`theta(y_t)`, every coefficient of magnitude below the threshold set to zero, the regression
repeated on the terms left until the support stops changing, then refitted without the
penalty on that support (`unbias`).

Derivatives come from the observed (noisy) trajectories by the Savitzky-Golay filter the
ODE models' derivative stage uses (`models._common.savgol_derivative_weights`): at the
centre of every `window` consecutive states, the slope of their least-squares cubic, and the
state itself replaced by that cubic's value there (the smoothed state, as pysindy's
`SmoothedFiniteDifference` smooths `x`). The first and last `window // 2` states of each
trajectory give no pair. Every training trajectory contributes its pairs (pysindy's
multiple trajectories).

The identified `Xi` is stored on the model (an `nnx.Param`), and `field(y)` evaluates the
library in `jax.numpy`, term for term in pysindy's order (`feature_names`), so the forecast is
the project's RK4 integration of `Xi theta(y)` (`models.ODEModel`), differentiable for
attribution. `models.recipes.SINDyRecipe` chooses the threshold and the derivative window on
the validation rollout. The model works in the observed coordinates (not normalised): the
true equations of the unit-mass chains are polynomials (and sines) of exactly these.

`score_coefficients(model, system)` compares `Xi` with the true equations where they lie in
the library (`HarmonicChain`, `CoupledVanDerPol`, `CoupledPendulums`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

import dynamics

from ._base import ODEModel
from ._common import check_state_dim, savgol_derivative_weights, savgol_value_weights
from .recipes import DEFAULT_DERIVATIVE_WINDOWS, DEFAULT_THRESHOLDS


def _monomial_name(indices: tuple[int, ...]) -> str:
    """pysindy's name of the monomial `prod_k x_{indices_k}` (`"1"`, `"x0"`, `"x0^2 x1"`)."""
    if not indices:
        return "1"
    counts = {i: indices.count(i) for i in sorted(set(indices))}
    return " ".join(f"x{i}" if e == 1 else f"x{i}^{e}" for i, e in counts.items())


def _library(degree: int, trig: bool):
    """A fresh pysindy library: polynomials to `degree`, plus `sin`, `cos` of each coordinate."""
    import pysindy as ps

    lib = ps.PolynomialLibrary(degree=degree, include_bias=True)
    return lib + ps.FourierLibrary(n_frequencies=1) if trig else lib


def _check_trajectories(trajectories, state_dim: int) -> np.ndarray:
    try:
        x = np.asarray(trajectories, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("trajectories must be an array of numbers") from None
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != state_dim or x.shape[0] < 1:
        raise ValueError(
            f"trajectories must have shape (N, T, {state_dim}) or (T, {state_dim}), "
            f"got {tuple(np.shape(trajectories))}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("trajectories contain NaN or inf")
    return x


def derivative_pairs(
    trajectories: Float[ArrayLike, "*N T d"], dt: float, window: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The smoothed states and their Savitzky-Golay derivatives of every trajectory
    `(N, T, d)` (or one `(T, d)`): for trajectory `n`, the states `T - window + 1`, at the
    centres of every `window` consecutive states, as two lists of `N` arrays (pysindy's
    multiple trajectories)."""
    x = np.asarray(trajectories, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if not (isinstance(window, (int, np.integer)) and window >= 3 and window % 2 == 1):
        raise ValueError(f"the derivative window must be an odd integer >= 3, got {window!r}")
    if x.shape[1] < window:
        raise ValueError(
            f"trajectories of {x.shape[1]} states are shorter than the derivative window {window}"
        )
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive finite number, got {dt!r}")
    windows = np.lib.stride_tricks.sliding_window_view(x, window, axis=1)  # (N, M, d, w)
    c1 = savgol_derivative_weights(window)
    c0 = savgol_value_weights(window)
    states = np.einsum("nmdw,w->nmd", windows, c0)
    derivs = np.einsum("nmdw,w->nmd", windows, c1) / dt
    return list(states), list(derivs)


class SINDy(ODEModel):
    r"""Sparse identification of nonlinear dynamics (see `models.sindy`): `y' = Xi theta(y)`,
    `theta` the library of monomials of the coordinates up to `degree` (and, with `trig`,
    `sin y_j, cos y_j`), `Xi` found by pysindy's sequentially thresholded least squares
    (`STLSQ`, ridge `alpha`) on Savitzky-Golay derivatives of the training trajectories.

    Trained in closed form (`closed_form`): `recipe(...)` is a `models.recipes.SINDyRecipe`,
    which chooses the threshold from `thresholds` and the derivative window from
    `derivative_windows` on the validation rollout. `identify(trajectories, ...)` fits one
    setting directly. After fitting, `coefficients` (`(d, F)`, pysindy's
    `model.coefficients()`) and `feature_names` (pysindy's names, inputs `x0 .. x{d-1}`) hold
    the identified equations; `equations()` prints them. The forecast integrates the field
    from the last context state (RK4, `substeps` per `dt`). `rngs` is accepted for the common
    constructor and unused (nothing is random).
    """

    closed_form: ClassVar[bool] = True

    def __init__(
        self,
        state_dim: int,
        *,
        degree: int = 3,
        trig: bool = True,
        thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
        derivative_windows: tuple[int, ...] = DEFAULT_DERIVATIVE_WINDOWS,
        alpha: float = 0.05,
        max_iter: int = 20,
        substeps: int = 1,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        state_dim = check_state_dim(state_dim)
        super().__init__(state_dim, substeps=substeps)
        if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
            raise ValueError(f"degree must be an integer >= 1, got {degree!r}")
        if not isinstance(trig, (bool, np.bool_)):
            raise ValueError(f"trig must be a bool, got {trig!r}")
        self.degree, self.trig = int(degree), bool(trig)
        self.thresholds = _check_thresholds(thresholds)
        self.derivative_windows = _check_windows(derivative_windows)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)):
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.alpha, self.max_iter = float(alpha), int(max_iter)
        # the monomials of each degree 1..degree: index tuples (plain tuples: static,
        # hashable attributes of the module)
        self._mono = tuple(
            tuple(itertools.combinations_with_replacement(range(state_dim), p))
            for p in range(1, self.degree + 1)
        )
        names = ["1"] + [_monomial_name(m) for ms in self._mono for m in ms]
        if self.trig:
            names += [f"{f}(1 x{j})" for j in range(state_dim) for f in ("sin", "cos")]
        self.feature_names: tuple[str, ...] = tuple(names)
        _check_against_pysindy(self.feature_names, state_dim, self.degree, self.trig)
        self.n_features = len(names)
        self.coefficients = nnx.Param(jnp.zeros((state_dim, self.n_features)))
        self.threshold: float | None = None
        self.derivative_window: int | None = None

    # ------------------------------------------------------------- the library
    def library(self, y: Float[Array, " d"]) -> Float[Array, " F"]:
        """`theta(y)`: `[1, monomials of degree 1..degree, sin y_0, cos y_0, sin y_1, ...]`, in
        pysindy's order (`feature_names`)."""
        parts = [jnp.ones((1,), y.dtype)]
        parts += [jnp.prod(y[np.asarray(m)], axis=-1) for m in self._mono]
        if self.trig:
            parts.append(jnp.stack([jnp.sin(y), jnp.cos(y)], axis=-1).reshape(-1))
        return jnp.concatenate(parts)

    def field(self, y: Float[Array, " d"]) -> Float[Array, " d"]:
        """`Xi theta(y)`."""
        xi = self.coefficients[...]
        return xi @ self.library(y.astype(jnp.result_type(y.dtype, xi.dtype)))

    def equations(self, precision: int = 3) -> list[str]:
        """The identified equations, one string per coordinate (`x0' = 1.000 x2 + ...`)."""
        xi = np.asarray(self.coefficients[...])
        out = []
        for i, row in enumerate(xi):
            terms = [f"{c:.{precision}f} {n}" for c, n in zip(row, self.feature_names) if c != 0]
            out.append(f"x{i}' = " + (" + ".join(terms) if terms else "0"))
        return out

    # ------------------------------------------------------------ identification
    def set_coefficients(self, xi: Float[ArrayLike, "d F"]) -> None:
        xi = jnp.asarray(xi)
        if xi.shape != (self.state_dim, self.n_features):
            raise ValueError(
                f"coefficients must have shape ({self.state_dim}, {self.n_features}), "
                f"got {tuple(xi.shape)}"
            )
        self.coefficients.set_value(xi.astype(self.coefficients[...].dtype))

    def identify(
        self,
        trajectories: Float[ArrayLike, "*N T d"],
        *,
        threshold: float,
        window: int = 5,
        dt: float | None = None,
    ):
        """Identifies `Xi` by STLSQ at `threshold` from Savitzky-Golay derivatives over `window`
        states of `trajectories` `(N, T, d)` (or one `(T, d)`), sets it on the model (and `dt`,
        when given), and returns the fitted `pysindy.SINDy` (whose `coefficients()` and
        `predict` this model's `coefficients` and `field` reproduce). The study's route is
        `recipe(...).fit(model, dataset)`."""
        import pysindy as ps

        if dt is not None:
            if not (math.isfinite(dt) and dt > 0):
                raise ValueError(f"dt must be a positive finite number, got {dt!r}")
            self.dt = float(dt)
        if self.dt is None:
            raise ValueError("SINDy.identify needs dt (pass dt= or fit the model first)")
        threshold = _check_thresholds((threshold,))[0]
        window = _check_windows((window,))[0]
        x = _check_trajectories(trajectories, self.state_dim)
        states, derivs = derivative_pairs(x, self.dt, window)
        opt = ps.STLSQ(threshold=threshold, alpha=self.alpha, max_iter=self.max_iter)
        fitted = ps.SINDy(optimizer=opt, feature_library=_library(self.degree, self.trig))
        with warnings.catch_warnings():
            # "eliminated all coefficients", STLSQ's non-convergence and ill-conditioning
            # warnings: the grid of thresholds visits such settings on purpose, and the
            # validation rollout judges them
            warnings.simplefilter("ignore")
            # one array of every trajectory's pairs: the same rows, the same regression as
            # pysindy's list of trajectories (the derivatives are given, so nothing is
            # differentiated across the joins), 1.6x faster on 128 trajectories
            fitted.fit(np.concatenate(states), t=self.dt, x_dot=np.concatenate(derivs))
        if tuple(fitted.get_feature_names()) != self.feature_names:  # pragma: no cover
            raise RuntimeError("pysindy's library order differs from SINDy.library's")
        self.set_coefficients(np.asarray(fitted.coefficients()))
        self.threshold, self.derivative_window = threshold, window
        return fitted

    def recipe(self, n_train_steps: int, *, budget: int, **recipe_kwargs):
        """`models.recipes.SINDyRecipe`: STLSQ for every threshold and derivative window of the
        model's grids, the pair with the lowest validation rollout kept (`budget` and the
        optimiser settings unused)."""
        from .recipes import SINDyRecipe

        del budget
        return SINDyRecipe(
            thresholds=self.thresholds, windows=self.derivative_windows, **recipe_kwargs
        )


def _check_thresholds(thresholds) -> tuple[float, ...]:
    try:
        out = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError):
        raise ValueError(f"thresholds must be a tuple of numbers, got {thresholds!r}") from None
    if not out or any(not (math.isfinite(t) and t >= 0) for t in out):
        raise ValueError(f"thresholds must be a non-empty tuple of finite values >= 0, got {out}")
    return out


def _check_windows(windows) -> tuple[int, ...]:
    try:
        items = tuple(windows)
    except TypeError:
        raise ValueError(
            f"derivative windows must be a tuple of integers, got {windows!r}"
        ) from None
    ok = items and all(
        isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 3 and w % 2 == 1
        for w in items
    )
    if not ok:
        raise ValueError(f"derivative windows must be odd integers >= 3, got {windows!r}")
    return tuple(int(w) for w in items)


_CHECKED: set[tuple[int, int, bool]] = set()


def _check_against_pysindy(names: tuple[str, ...], d: int, degree: int, trig: bool) -> None:
    """pysindy's feature names for the library equal `names` (the order `SINDy.library`
    evaluates), checked once per library."""
    if (d, degree, trig) in _CHECKED:
        return
    from pysindy.utils import AxesArray, comprehend_axes

    z = np.zeros((2, d))
    lib = _library(degree, trig)
    lib.fit([AxesArray(z, comprehend_axes(z))])
    theirs = tuple(lib.get_feature_names())
    if theirs != names:  # pragma: no cover
        raise RuntimeError(f"pysindy's library order {theirs} differs from SINDy's {names}")
    _CHECKED.add((d, degree, trig))


# --------------------------------------------------------------------------- scoring
def true_coefficients(
    model: SINDy, system: dynamics.AbstractSystem
) -> tuple[np.ndarray, dict[tuple[int, str], float]]:
    """The true `Xi` of `system` in `model`'s library, and the true terms the library lacks
    (`{(coordinate, term name): coefficient}`), for the unit-mass chains:

    - `HarmonicChain`: `q_i' = p_i`, `p_i' = -sum_j K_ij q_j` with the stiffness matrix
      `K = diag(omega^2) + L`, `L = diag(sum_j kappa_ij) - kappa` (the coupling's Laplacian);
    - `CoupledVanDerPol`: the same plus `mu p_i - mu q_i^2 p_i`;
    - `CoupledPendulums`: `p_i' = -omega_i^2 sin q_i - sum_j L_ij q_j`.

    Coordinates are `x_i = q_i`, `x_{n+i} = p_i`. Other systems raise `ValueError`."""
    if not isinstance(
        system, (dynamics.HarmonicChain, dynamics.CoupledVanDerPol, dynamics.CoupledPendulums)
    ):
        raise ValueError(
            "true_coefficients knows the equations of HarmonicChain, CoupledVanDerPol and "
            f"CoupledPendulums, got {type(system).__name__}"
        )
    n = system.n_oscillators
    if model.state_dim != 2 * n:
        raise ValueError(
            f"the model has state_dim {model.state_dim}, the system {2 * n} coordinates"
        )
    omega2 = np.asarray(system.omega, np.float64) ** 2
    kappa = np.asarray(system.coupling, np.float64)
    lap = np.diag(kappa.sum(1)) - kappa
    terms: dict[tuple[int, str], float] = {}
    for i in range(n):
        terms[(i, f"x{n + i}")] = 1.0
        for j in range(n):
            if lap[i, j] != 0:
                terms[(n + i, f"x{j}")] = terms.get((n + i, f"x{j}"), 0.0) - lap[i, j]
        if isinstance(system, dynamics.CoupledPendulums):
            terms[(n + i, f"sin(1 x{i})")] = -omega2[i]
        else:
            terms[(n + i, f"x{i}")] = terms.get((n + i, f"x{i}"), 0.0) - omega2[i]
        if isinstance(system, dynamics.CoupledVanDerPol):
            mu = float(system.mu)
            terms[(n + i, f"x{n + i}")] = mu
            terms[(n + i, f"x{i}^2 x{n + i}")] = -mu
    terms = {k: v for k, v in terms.items() if v != 0}
    index = {name: f for f, name in enumerate(model.feature_names)}
    xi = np.zeros((model.state_dim, model.n_features))
    missing = {}
    for (row, name), value in terms.items():
        if name in index:
            xi[row, index[name]] = value
        else:
            missing[(row, name)] = value
    return xi, missing


@dataclasses.dataclass(frozen=True)
class CoefficientScore:
    """The identified equations against the true ones (`score_coefficients`).

    `max_true_error`: the largest `|Xi_hat - Xi|` over the true terms (those the library
    lacks count with their whole coefficient); `n_true`, `n_missed` (true terms identified as
    zero, or not in the library); `n_spurious` and `spurious_l1`: the number and total
    magnitude of the identified terms that the true equations do not have."""

    max_true_error: float
    n_true: int
    n_missed: int
    n_spurious: int
    spurious_l1: float


def score_coefficients(model: SINDy, system: dynamics.AbstractSystem) -> CoefficientScore:
    """Scores `model.coefficients` against `true_coefficients(model, system)`."""
    xi_true, missing = true_coefficients(model, system)
    xi = np.asarray(model.coefficients[...], np.float64)
    true = xi_true != 0
    errors = np.abs(xi - xi_true)[true]
    max_err = max(
        [float(errors.max()) if errors.size else 0.0] + [abs(v) for v in missing.values()]
    )
    spurious = (~true) & (xi != 0)
    return CoefficientScore(
        max_true_error=max_err,
        n_true=int(true.sum()) + len(missing),
        n_missed=int((true & (xi == 0)).sum()) + len(missing),
        n_spurious=int(spurious.sum()),
        spurious_l1=float(np.abs(xi[spurious]).sum()),
    )
