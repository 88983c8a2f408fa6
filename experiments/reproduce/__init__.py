"""Reproductions of the HNN and LNN papers' headline numbers, beside the published figures.

`python -m experiments.reproduce [--preset tiny|quick|full] [--out DIR] [--hnn-steps N ...]`
(default `results/<preset>/`; every field of `Preset` is a flag).

- `_hnn`: the HNN paper's ideal mass-spring and pendulum, set up as the authors' code did
  (data, derivative targets, networks, optimizer and the energy metric of their notebooks).
- `_lnn`: the LNN paper's double pendulum (fresh random states every step, L1 loss on the
  accelerations, the energy error of long rollouts).
- `_presets`: the budgets (`Preset`, `PRESETS`) and the hash that identifies a task's results.
- `_report`: `reproduce.csv` and `reproduce.md`, with the published numbers beside ours.
- `_run`: the driver, which stores every result as it lands and skips what is complete.
- `_cli`: the command line.

Both reproductions train through `models.fit` with their papers' optimizers and losses
(`optimizer=`, `loss=`), on the full batch of derivative targets (HNN) or on states their loss
draws at every step (LNN).

Outputs in `--out`: `reproduce.csv` (one row per task and model, the mean over seeds, with
`*_std` over seeds and the published numbers beside them), `reproduce.md`, `reproduce.json`
(configuration, environment, git commit, per-seed results) and `reproduce_runs.json` (per-seed
results, so that a rerun resumes where it stopped). A rerun skips rows already complete for the
same configuration; every file is written atomically.
"""

from ._cli import Command as Command, main as main, parse as parse
from ._common import n_params as n_params, rollout as rollout
from ._hnn import (
    HNN_TASKS as HNN_TASKS,
    NOISE_STD as NOISE_STD,
    derivative_mse as derivative_mse,
    hnn_dataset as hnn_dataset,
    hnn_energy as hnn_energy,
    hnn_eval_states as hnn_eval_states,
    hnn_optimizer as hnn_optimizer,
    hnn_true_field as hnn_true_field,
    orthogonal_init as orthogonal_init,
    run_hnn_task as run_hnn_task,
)
from ._lnn import (
    MAX_POTENTIAL as MAX_POTENTIAL,
    dp_eval_states as dp_eval_states,
    dp_l1_loss as dp_l1_loss,
    dp_loss as dp_loss,
    dp_states as dp_states,
    integrator_floor as integrator_floor,
    lnn_optimizer as lnn_optimizer,
    run_dp as run_dp,
)
from ._presets import (
    MODELS as MODELS,
    PRESETS as PRESETS,
    TASKS as TASKS,
    Preset as Preset,
    get_preset as get_preset,
)
from ._report import (
    COLUMNS as COLUMNS,
    PUBLISHED as PUBLISHED,
    aggregate as aggregate,
    read_rows as read_rows,
    summary_markdown as summary_markdown,
    write_rows as write_rows,
)
from ._run import run as run
