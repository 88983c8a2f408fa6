"""Hamiltonian neural networks: conservative and dissipative, in canonical coordinates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from ._base import ODEModel
from ._common import MLP, Coordinates, Quadratic, check_state_dim, data_stats, own_transform


class CanonicalODEModel(ODEModel):
    r"""An ODE model that learns and forecasts in a system's canonical coordinates.

    The observed state is `y = (q, q')`; the model works on `z = phi(y) = (q, p)` with
    `p = dL/dq'` (`system.to_canonical`, e.g. `p = M(q) q'` for the double pendulum), where a
    Hamiltonian field `J grad H(z)` can represent the dynamics. Where `(q, q')` is already
    canonical (unit masses: `phi` is the identity) nothing changes.

    - `coordinates` (constructor) or `prepare(dataset)` (from `dataset.system`, called by
      `fit`) fix `phi`; the system is kept in the model's state (a `Coordinates` variable),
      so it survives `nnx.split` / `nnx.merge`, `jit` and stored variables. A model rebuilt to
      receive stored variables must be built with the same `coordinates` (the state's structure
      contains the system's parameters).
    - `derivative_loss` / `trajectory_loss` (and so `loss`): windows of observed states are
      mapped to `z` first; the normalisation
      statistics (`mean`, `std`) are those of `z` over the training data, so both objectives
      (trajectory matching, and the central differences `(z_{t+1} - z_{t-1}) / 2dt` of
      `objective="derivative"`) are taken in `z`.
    - `field(z)` is the learned field **in canonical coordinates** (what the integrator sees);
      `observed_field(y) = D phi^{-1}(z) field(z)` at `z = phi(y)` is the same field pushed
      to the observed coordinates (`dy/dt` of the model).
    - `forecast(context, n_steps)`: `z_0 = phi(context[-1])`, integrated, mapped back with
      `phi^{-1}` (`from_canonical`): the forecast is in observed coordinates.
    """

    def __init__(self, state_dim: int, *, coordinates=None, **kwargs):
        super().__init__(state_dim, **kwargs)
        self.transform = Coordinates(None)
        if coordinates is not None:
            self._use_coordinates(coordinates)

    # ------------------------------------------------------------ the coordinate change
    def _use_coordinates(self, system) -> None:
        if not own_transform(system):
            if self.transform.get_value() is not None:
                raise ValueError(
                    f"{type(self).__name__} works in the canonical coordinates of "
                    f"{type(self.transform.get_value()).__name__}, but {type(system).__name__} "
                    "has none of its own"
                )
            return  # identity: the observed coordinates
        if system.state_dim != self.state_dim:
            raise ValueError(
                f"coordinates: {type(system).__name__} has state_dim {system.state_dim}, "
                f"the model {self.state_dim}"
            )
        old = self.transform.get_value()
        if old is not None and jax.tree.structure(old) != jax.tree.structure(system):
            raise ValueError(
                f"{type(self).__name__} was built in the coordinates of {type(old).__name__}, "
                f"which cannot be replaced by those of {type(system).__name__}"
            )
        self.transform.set_value(system)

    @property
    def coordinates(self):
        """The system whose canonical coordinates the model works in (None: the observed)."""
        return self.transform.get_value()

    def to_model(self, y: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        """`z = phi(y)`: observed states `(..., d)` to the model's canonical coordinates."""
        system = self.transform.get_value()
        return y if system is None else jnp.asarray(system.to_canonical(y), y.dtype)

    def to_observed(self, z: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        """`y = phi^{-1}(z)`: the inverse of `to_model`."""
        system = self.transform.get_value()
        return z if system is None else jnp.asarray(system.from_canonical(z), z.dtype)

    def observed_field(self, y: Float[Array, " d"]) -> Float[Array, " d"]:
        """`dy/dt = D phi^{-1}(z) field(z)` at `z = phi(y)`: the learned field in observed
        coordinates (equal to `field(y)` where `phi` is the identity)."""
        z = self.to_model(y)
        return jax.jvp(self.to_observed, (z,), (self.field(z),))[1]

    # ------------------------------------------------------------ training and forecasting
    def prepare(self, dataset) -> None:
        """Records `dt`, adopts `dataset.system`'s canonical coordinates (where it has its own;
        a dataset without a system keeps the constructor's) and sets `mean`, `std` to the
        statistics of `z = phi(y)` over the training data."""
        super().prepare(dataset)
        system = getattr(dataset, "system", None)
        if system is not None:
            self._use_coordinates(system)
        if self.transform.get_value() is not None:
            z = self.to_model(jnp.asarray(dataset.train, self.mean[...].dtype))
            mean, std = data_stats(np.asarray(z))
            self.mean.set_value(jnp.asarray(mean, self.mean[...].dtype))
            self.std.set_value(jnp.asarray(std, self.std[...].dtype))

    def derivative_loss(self, windows: Float[Array, "B W d"]) -> Float[Array, ""]:
        """`ODEModel.derivative_loss` on the windows mapped to canonical coordinates."""
        return super().derivative_loss(self.to_model(windows))

    def trajectory_loss(self, windows: Float[Array, "B W d"]) -> Float[Array, ""]:
        """`ODEModel.trajectory_loss` on the windows mapped to canonical coordinates."""
        return super().trajectory_loss(self.to_model(windows))

    def forecast_from(self, y0: Float[Array, " d"], n_steps: int) -> Float[Array, "n_steps d"]:
        """`phi^{-1}` of the learned flow from `z_0 = phi(y0)` (`y0` the last context state, in
        observed coordinates): `n_steps` states at `dt, ..., n_steps dt`, in observed
        coordinates."""
        return self.to_observed(self.rollout(self.to_model(y0), int(n_steps)))


class HNN(CanonicalODEModel):
    r"""Hamiltonian neural network (Greydanus et al. 2019), in canonical coordinates.

    Learns a scalar `H(z) = MLP(u) + u^T S u / 2`, `u = (z - m) / s`, of the canonical state
    `z = (q, p)` (see `CanonicalODEModel`: `z = system.to_canonical(y)`, the identity for unit
    masses), with the learned symmetric `S` (`quadratic=True`, the default; `Quadratic`) so
    that `H` contains every quadratic (harmonic) energy; the vector field is `J grad H`, i.e.
    `q' = dH/dp`, `p' = -dH/dq`, so every forecast conserves the learned `H` up to the
    integrator's error, and is mapped back to the observed `(q, q')`.
    Trained by trajectory matching over short windows (or, for the paper's reproduction,
    derivative matching: `objective="derivative"`). Needs a second-order state.
    """

    needs_canonical = True

    def __init__(
        self,
        state_dim: int,
        *,
        width: int = 64,
        depth: int = 2,
        window: int = 10,
        objective: str = "trajectory",
        coordinates=None,
        quadratic: bool = True,
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim, even=True, who="HNN")
        super().__init__(state_dim, window=window, objective=objective, coordinates=coordinates)
        self.n = state_dim // 2
        self.net = MLP(state_dim, 1, width=width, depth=depth, rngs=rngs)
        self.quadratic = Quadratic(state_dim) if quadratic else None

    def hamiltonian(self, z: Float[Array, " d"]) -> Float[Array, ""]:
        """The learned energy `H(z)` of one canonical state."""
        u = (z - self.mean[...]) / self.std[...]
        h = self.net(u)[0]
        return h if self.quadratic is None else h + self.quadratic(u)

    def field(self, z: Float[Array, " d"]) -> Float[Array, " d"]:
        """`J grad H(z) = (dH/dp, -dH/dq)`, in canonical coordinates."""
        dh = jax.grad(self.hamiltonian)(z)
        return jnp.concatenate([dh[self.n :], -dh[: self.n]])


class DissipativeHNN(CanonicalODEModel):
    r"""Dissipative HNN (Sosanya and Greydanus 2022), in canonical coordinates.

    Learns a Hamiltonian `H(z)` and a dissipation potential `D(z)` (two MLPs, each with a
    learned quadratic part as in `HNN`) of the canonical state `z = (q, p)` (see
    `CanonicalODEModel`); the field is `J grad H + grad D` (Helmholtz
    decomposition into a divergence-free and a curl-free part). `D` captures damping and
    driving, `H` the conservative dynamics. Needs a second-order state.
    """

    needs_canonical = True

    def __init__(
        self,
        state_dim: int,
        *,
        width: int = 64,
        depth: int = 2,
        window: int = 10,
        objective: str = "trajectory",
        coordinates=None,
        quadratic: bool = True,
        rngs: nnx.Rngs,
    ):
        check_state_dim(state_dim, even=True, who="DissipativeHNN")
        super().__init__(state_dim, window=window, objective=objective, coordinates=coordinates)
        self.n = state_dim // 2
        self.h_net = MLP(state_dim, 1, width=width, depth=depth, rngs=rngs)
        self.d_net = MLP(state_dim, 1, width=width, depth=depth, rngs=rngs)
        self.h_quadratic = Quadratic(state_dim) if quadratic else None
        self.d_quadratic = Quadratic(state_dim) if quadratic else None

    def _potential(self, net, quadratic, z):
        u = (z - self.mean[...]) / self.std[...]
        v = net(u)[0]
        return v if quadratic is None else v + quadratic(u)

    def hamiltonian(self, z: Float[Array, " d"]) -> Float[Array, ""]:
        """The learned conservative energy `H(z)` of one canonical state."""
        return self._potential(self.h_net, self.h_quadratic, z)

    def dissipation(self, z: Float[Array, " d"]) -> Float[Array, ""]:
        """The learned dissipation potential `D(z)` of one canonical state."""
        return self._potential(self.d_net, self.d_quadratic, z)

    def field(self, z: Float[Array, " d"]) -> Float[Array, " d"]:
        """`J grad H(z) + grad D(z)`, in canonical coordinates."""
        dh = jax.grad(self.hamiltonian)(z)
        return jnp.concatenate([dh[self.n :], -dh[: self.n]]) + jax.grad(self.dissipation)(z)
