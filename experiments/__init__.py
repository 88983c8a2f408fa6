"""Experiments: the commands that run the study, the benchmarks and the figures."""

import os as _os

# The study's NumPy linear algebra is small (probes, PCA, least squares); a multithreaded BLAS
# only fights XLA's own threads for the cores (measured: the LSTM probes took 202 s with
# OpenBLAS threads on a busy 2-core machine, 20 s with one). Users can override these.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

from .presets import PRESETS as PRESETS, Preset as Preset, get_preset as get_preset
from .runs import Output as Output, RunKey as RunKey
from .specs import (
    ModelSpec as ModelSpec,
    OscillatorSpec as OscillatorSpec,
    SystemSpec as SystemSpec,
)
