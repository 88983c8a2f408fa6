"""The interface every learner shares."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from ._common import Stats, data_stats, integrate, lift, savgol_derivative_weights


class AbstractModel(nnx.Module):
    """A learner of trajectories sampled every `dt`.

    Subclasses give `loss(windows)` (the training objective on a batch of
    windows `(B, W, state_dim)` cut from the training trajectories),
    `window_length(n_train_steps)` and `forecast(context, n_steps)`.
    `prepare(dataset)` (called by `fit` before training) records `dt` and the
    normalisation statistics of the training data on the model.
    """

    needs_canonical: ClassVar[bool] = False
    min_context: ClassVar[int] = 1
    #: trained in closed form (`recipe(...)` solves, nothing is optimised): the study then
    #: skips its learning-rate and width choice (`experiments.training`)
    closed_form: ClassVar[bool] = False

    def __init__(self, state_dim: int):
        self.state_dim = int(state_dim)
        self.dt: float | None = None
        self.mean = Stats(jnp.zeros(state_dim))
        self.std = Stats(jnp.ones(state_dim))

    # ------------------------------------------------------------ data plumbing
    def prepare(self, dataset) -> None:
        self.dt = float(dataset.dt)
        mean, std = data_stats(dataset.train)
        self.mean.set_value(jnp.asarray(mean, self.mean[...].dtype))
        self.std.set_value(jnp.asarray(std, self.std[...].dtype))

    def window_length(self, n_train_steps: int) -> int:
        return min(n_train_steps, 10)

    def recipe(self, n_train_steps: int, *, budget: int, **recipe_kwargs):
        """How the study trains this model (a `models.recipes.Recipe`); `budget` is the
        total of optimisation steps. The default: the model's own `loss` on its own
        windows, stopped early on the validation rollout."""
        from .recipes import Recipe, Stage

        stage = Stage("own loss", None, self.window_length(n_train_steps), budget)
        return Recipe(stages=(stage,), **recipe_kwargs)

    def _check_forecast(self, context, n_steps):
        if self.dt is None:
            raise ValueError(
                f"{type(self).__name__}.dt is unset: fit the model (or set model.dt) first"
            )
        context = jnp.asarray(context)
        if context.ndim != 2 or context.shape[-1] != self.state_dim:
            raise ValueError(
                f"context must have shape (C, {self.state_dim}), got {tuple(context.shape)}"
            )
        if context.shape[0] < self.min_context:
            raise ValueError(
                f"{type(self).__name__} needs a context of at least {self.min_context} states, "
                f"got {context.shape[0]}"
            )
        if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
        return context

    def _normalised_mse(self, pred, target):
        return jnp.mean(((pred - target) / lift(self.std[...], pred.ndim)) ** 2)

    def forecast_jacobian(
        self, context: Float[Array, "C d"], n_steps: int
    ) -> Float[Array, "n_steps d C d"]:
        """`J[k, a, c, b] = d forecast(context, n_steps)[k, a] / d context[c, b]`, by forward-mode
        differentiation (`jax.jacfwd`: one tangent per context entry, `C d` of them). Models
        whose forecast reads less of the context override it with something cheaper."""
        return jax.jacfwd(lambda ctx: self.forecast(ctx, n_steps))(context)


class ODEModel(AbstractModel):
    """A model whose forecast integrates a vector field `y' = field(y)`.

    Objectives (both public, so that a recipe can switch between them):

    - `trajectory_loss(windows)` (`objective="trajectory"`, the default):
      trajectory matching over windows (multiple shooting): from the first
      state of each window, integrate on the data grid and take the mean
      squared error over the window, each coordinate divided by its standard
      deviation in the training data. Short windows avoid the known collapse
      of long oscillatory rollouts to the mean; a curriculum lengthens them.
    - `derivative_loss(windows)` (`objective="derivative"`): matches
      `field(y_c)` at the centre of each odd-length window to the
      Savitzky-Golay derivative of the window (`_common.savgol_derivative_weights`;
      windows of 3 give the central difference `(y_{t+1} - y_{t-1}) / 2dt`,
      the HNN paper's set-up, used by the reproductions; wider windows smooth
      noisy observations).

    `recipe(...)` (see `models.recipes`) is how the study trains these models:
    a derivative stage, then trajectory stages of growing window length.
    """

    def __init__(
        self, state_dim: int, *, window: int = 10, substeps: int = 1, objective: str = "trajectory"
    ):
        super().__init__(state_dim)
        if objective not in ("trajectory", "derivative"):
            raise ValueError(f"objective must be 'trajectory' or 'derivative', got {objective!r}")
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.window = int(window)
        self.substeps = int(substeps)
        self.objective = objective

    def field(self, y: Float[Array, " d"]) -> Float[Array, " d"]:
        raise NotImplementedError

    def to_model(self, y: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        """The observed state `y` in the coordinates `field` works in (the identity here; a
        model that integrates in other coordinates, canonical or latent, overrides it). The
        rest state of the field is `to_model(y_rest)` (`models.probes.linearisation_spectrum`)."""
        return y

    def window_length(self, n_train_steps: int) -> int:
        return 3 if self.objective == "derivative" else min(n_train_steps, self.window)

    def recipe(self, n_train_steps: int, *, budget: int, **recipe_kwargs):
        """`models.recipes.ode_recipe`: a derivative stage, then trajectory stages of growing
        window length up to the whole training window."""
        from .recipes import ode_recipe

        return ode_recipe(n_train_steps, budget=budget, **recipe_kwargs)

    def initial_state(self, context):
        """The state from which the forecast integrates (the last observed one)."""
        return context[-1]

    def rollout(self, y0, n_steps: int):
        return integrate(self.field, y0, n_steps, self.dt, substeps=self.substeps)

    def derivative_loss(self, windows: Float[Array, "B W d"]) -> Float[Array, ""]:
        """`mean(((field(y_c) - dy_c) / s)^2)`: the field at each window's centre against the
        window's Savitzky-Golay derivative, per coordinate in units of the training std `s`."""
        c = jnp.asarray(savgol_derivative_weights(windows.shape[1]), windows.dtype)
        dy = jnp.einsum("w,bwd->bd", c, windows) / self.dt
        pred = jax.vmap(self.field)(windows[:, windows.shape[1] // 2])
        return jnp.mean(((pred - dy) / lift(self.std[...], pred.ndim)) ** 2)

    def trajectory_loss(self, windows: Float[Array, "B W d"]) -> Float[Array, ""]:
        """The normalised mean squared error of the rollout from each window's first state."""
        w = windows.shape[1]
        pred = jax.vmap(lambda y0: self.rollout(y0, w - 1))(windows[:, 0])
        return self._normalised_mse(pred, windows[:, 1:])

    def loss(self, windows: Float[Array, "B W d"]) -> Float[Array, ""]:
        if self.objective == "derivative":
            return self.derivative_loss(windows)
        return self.trajectory_loss(windows)

    def forecast_from(self, y0: Float[Array, " d"], n_steps: int) -> Float[Array, "n_steps d"]:
        """The forecast from the observed state `y0 = initial_state(context)`: the learned field
        integrated for `n_steps` steps of `dt` (states at `dt, ..., n_steps dt`)."""
        return self.rollout(y0, int(n_steps))

    def forecast(self, context: Float[ArrayLike, "C d"], n_steps: int) -> Float[Array, "n_steps d"]:
        """Integrates the learned field from the last context state for `n_steps` steps of `dt`:
        `forecast_from(initial_state(context), n_steps)`."""
        context = self._check_forecast(context, n_steps)
        return self.forecast_from(self.initial_state(context), int(n_steps))

    def forecast_jacobian(
        self, context: Float[Array, "C d"], n_steps: int
    ) -> Float[Array, "n_steps d C d"]:
        """The chain rule through the state the forecast starts from, `y0 = initial_state(context)`:
        `J = (d forecast_from(y0) / d y0) (d y0 / d context)`, so the rollout carries `d`
        tangents instead of `C d` (the last state alone is read: `C` times cheaper than
        differentiating `forecast` itself; equal up to rounding)."""
        context = self._check_forecast(context, n_steps)
        y0 = self.initial_state(context)
        inner = jax.jacfwd(lambda y: self.forecast_from(y, n_steps))(y0)  # (n, d, *y0)
        outer = jax.jacfwd(self.initial_state)(context)  # (*y0, C, d)
        return jnp.tensordot(inner, outer, axes=y0.ndim)
