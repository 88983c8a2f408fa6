"""Exact, JIT-compiled simulators of coupled oscillators, and datasets built from them."""

from ._base import AbstractSystem as AbstractSystem
from ._dataset import Dataset as Dataset, make_dataset as make_dataset
from ._double_pendulum import DoublePendulum as DoublePendulum
from ._graphs import (
    all_to_all_coupling as all_to_all_coupling,
    chain_coupling as chain_coupling,
    ring_coupling as ring_coupling,
)
from ._hamiltonian import HamiltonianSystem as HamiltonianSystem
from ._huygens import HuygensClocks as HuygensClocks
from ._kuramoto import Kuramoto as Kuramoto
from ._lyapunov import lyapunov_exponent as lyapunov_exponent
from ._oscillators import (
    CoupledPendulums as CoupledPendulums,
    CoupledVanDerPol as CoupledVanDerPol,
    HarmonicChain as HarmonicChain,
)
from ._simulate import SimulationError as SimulationError, simulate as simulate
