"""Learners of coupled-oscillator dynamics: black boxes, structured models and
constraint-imposing networks, one training loop for all, and tools to look inside."""

from . import attribution as attribution, probes as probes
from ._autoregressive import AutoregressiveModel as AutoregressiveModel
from ._base import AbstractModel as AbstractModel, ODEModel as ODEModel
from ._common import MLP as MLP, integrate as integrate, own_transform as own_transform
from .gru import GRU as GRU
from .hnn import (
    HNN as HNN,
    CanonicalODEModel as CanonicalODEModel,
    DissipativeHNN as DissipativeHNN,
)
from .lnn import LNN as LNN
from .lstm import LSTM as LSTM
from .neural_ode import NeuralODE as NeuralODE, SecondOrderNODE as SecondOrderNODE
from .oscillators import OscillatorModel as OscillatorModel
from .parametric import (
    Constraint as Constraint,
    ParametricModel as ParametricModel,
)
from .recipes import (
    Recipe as Recipe,
    RecipeResult as RecipeResult,
    RidgeRecipe as RidgeRecipe,
    SINDyRecipe as SINDyRecipe,
    Stage as Stage,
    ode_recipe as ode_recipe,
    rollout_recipe as rollout_recipe,
    smoothing_window as smoothing_window,
)
from .reservoir import ESN as ESN, NVAR as NVAR
from .sindy import (
    CoefficientScore as CoefficientScore,
    SINDy as SINDy,
    score_coefficients as score_coefficients,
    true_coefficients as true_coefficients,
)
from .train import (
    TrainConfig as TrainConfig,
    TrainingDiverged as TrainingDiverged,
    fit as fit,
    fit_ensemble as fit_ensemble,
    fit_members as fit_members,
)
from .transformer import Transformer as Transformer
