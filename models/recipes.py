"""Training recipes: how each learner is trained to convergence before it is compared.

A `Recipe` is a sequence of `Stage`s, each one call of `models.fit` with its own
objective, window length, budget and learning rate, and every one of them
stopped early on the same criterion: the **long-horizon validation rollout**
(`TrainConfig.val_context`: every `val` trajectory forecast from its first `C`
states over the rest of the training window, the test protocol on held-out
states; `val_rollout_nmse`). Each stage starts from the best validated
parameters of the stages before it, and the recipe ends with the best
validated parameters of all of them, so a stage that does not help cannot
make the model worse. A run has `converged` when the stopping rule of the
stage whose parameters it keeps fired before that stage's budget ran out
(patience evaluations without improvement); otherwise its validation loss may
still be falling and the run is not a result. The default recipes anneal each
stage on its cosine schedule and then hold the final rate (`Stage.hold`,
`Recipe.held`), and patience counts only in the hold: a stage converges when
the smallest rate brings no improvement by more than `min_delta` within its
patience. A stage that runs its whole budget (`patience=None`, no hold) is
judged by the same rule at the default patience: converged when its last 4
evaluations brought no improvement by more than `min_delta`. (A later stage that stops by its rule
without beating the kept parameters is no evidence for them: it trains another
objective or window, and the kept stage may have been cut off still improving.)

A stage may instead
use the plateau schedule (`Stage.lr_decay`, `Stage.lr_decays`; see
`models.TrainConfig`): the rate held, lowered on each plateau, and the plateau
at the smallest rate stopping it, so that `converged` means lowering the rate
brought nothing more. It is not the default because on the study's noisy
validation rollouts it certifies worse models: on `CoupledPendulums` (quick
settings, 128 records, seed 0; rate x0.1 twice, twice the budget) the HNN,
NeuralODE and LSTM all stopped by its rule, at validation rollouts of 4.9e-4,
1.7e-3 and 2.5e-4 against 2.5e-4, 3.0e-4 and 2.3e-4 for the cosine recipe,
whose annealing tail was still improving them: patience counts noisy
evaluations, and a plateau of 4 of them at 1% ends each rate before the
slower progress at the next one would show. The hold after the cosine schedule
converged them all at 2.4e-4, 2.9e-4 and 2.2e-4 instead.

Why these stages (the anchors):

- ODE-type models (neural ODEs, HNN, LNN, structured models whose state is
  observed) start with a **derivative stage**: regression of `field(y_t)` on
  the Savitzky-Golay derivative of the observed (noisy) trajectories. It is
  the HNN paper's objective (Greydanus et al. 2019: derivative targets, Adam
  1e-3), dense supervision at every state, and costs a few seconds on a CPU.
  Fitting from random weights by trajectory matching alone leaves these models
  far from converged at any affordable budget.
- Then **trajectory stages with a curriculum of window lengths** (short
  windows first, then up to the whole training window), as in diffrax's
  neural-ODE example (10% of each series, then all of it) and Gruver et al.
  2022 (short chunks): the derivative stage's bias (finite differences, noise)
  is removed by matching what is scored, the forecast.
- The LSTM has no vector field: the same stopping rule with a **rollout
  curriculum** (its window sets how many steps it free-runs after its warm-up).
- The reservoir baselines (`models.NVAR`, `models.ESN`) are linear readouts of fixed
  features: `RidgeRecipe` solves them in closed form and chooses the ridge strength on the
  same validation rollout (nothing is optimised, so nothing is left unconverged).

`models.AbstractModel.recipe(n_train_steps, budget=...)` returns each model's
default; a user's model inherits its parent's or overrides `recipe`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._common import savgol_value_weights
from .train import (
    Loss,
    TrainConfig,
    TrainingDiverged,
    _CompileTimer,
    _inverse_variance,
    _rollout_nmse,
    fit,
)


def derivative_objective(model, windows, key):
    """`model.derivative_loss(windows)` as a `fit` loss (the derivative stage)."""
    del key
    return model.derivative_loss(windows)


def trajectory_objective(model, windows, key):
    """`model.trajectory_loss(windows)` as a `fit` loss (the trajectory stages)."""
    del key
    return model.trajectory_loss(windows)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One `fit` of a recipe.

    - `name`: a label in the records (`"derivative"`, `"window 40"`, ...);
    - `objective`: a `fit` loss `loss(model, windows, key)`, or None for the
      model's own `loss`;
    - `window`: the window length (None: whole training trajectories);
    - `steps`: the budget; `lr_scale`: the peak learning rate as a multiple of
      the recipe's `lr`; `patience`: evaluations without an improvement of the
      validation rollout by more than the fraction `min_delta` before the stage
      stops (None: the stage runs its whole budget); `lr_decay` and
      `lr_decays`: the plateau schedule (`models.TrainConfig`: the rate held,
      lowered by `lr_decay` on each plateau, `lr_decays` times, before the
      plateau that stops the stage; None: the cosine schedule); `hold`: at most
      that many steps after the `steps` of the cosine schedule, at its final
      rate, the only ones in which patience counts (`models.TrainConfig.hold`:
      the stage converges when patience evaluations at the smallest rate bring
      no improvement, and is not stopped on the noise of the high rates);
      `batch_size` and
      `eval_every` override the recipe's;
    - `window_choices`: odd window lengths from which the stage's window is chosen on the
      training data before training (`Recipe.for_data`, by `smoothing_window`: the
      Savitzky-Golay window of lowest leave-one-out error), instead of `window`; the choice is
      recorded in each of the stage's records (`window`).
    """

    name: str
    objective: Loss | None
    window: int | None
    steps: int
    lr_scale: float = 1.0
    patience: int | None = 4
    min_delta: float = 0.01
    lr_decay: float | None = None
    lr_decays: int = 2
    hold: int = 0
    batch_size: int | None = None
    eval_every: int | None = None
    window_choices: tuple[int, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"Stage {self.name!r}: steps must be a positive integer")
        if self.window is not None and self.window < 2:
            raise ValueError(f"Stage {self.name!r}: window must be None or >= 2")
        if not isinstance(self.hold, int) or self.hold < 0:
            raise ValueError(
                f"Stage {self.name!r}: hold must be a non-negative integer, got {self.hold!r}"
            )
        if self.hold and self.patience is None:
            raise ValueError(f"Stage {self.name!r}: a hold needs a patience to count in it")
        if self.window_choices is not None and (
            not self.window_choices
            or any(not isinstance(w, int) or w < 5 or w % 2 == 0 for w in self.window_choices)
        ):
            raise ValueError(
                f"Stage {self.name!r}: window_choices must be odd integers >= 5, "
                f"got {self.window_choices!r}"
            )


@dataclasses.dataclass(frozen=True)
class RecipeResult:
    """What a recipe reports of a training run.

    `val_rollout_nmse` (the best validation rollout, the selection criterion),
    `steps_run` (optimisation steps over all stages), `converged` (the stage
    whose parameters were kept stopped by its rule), `train_seconds` (wall time without
    compilation), `compile_seconds`, `best_stage` (whose parameters were kept)
    and `history` (every stage's `fit` records, tagged with the stage).
    """

    val_rollout_nmse: float
    steps_run: int
    converged: bool
    train_seconds: float
    compile_seconds: float
    best_stage: str
    history: list[dict]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Stages trained one after another, each stopped early on the validation rollout.

    `context` is the number of observed states a validation forecast starts
    from (the study's `C`); `eval_every` the steps between validations;
    `batch_size` the default windows per step; `lr` the base learning rate.
    """

    stages: tuple[Stage, ...]
    context: int = 20
    eval_every: int = 250
    batch_size: int = 32
    lr: float = 1e-3

    def __post_init__(self):
        if not self.stages:
            raise ValueError("a Recipe needs at least one Stage")

    def pilot(self, fraction: float) -> Recipe:
        """The first stage alone, at `fraction` of its budget (at least one evaluation; its
        `hold` in proportion): the cheap run on which candidate settings are compared."""
        first = self.stages[0]
        steps = max(min(self.eval_every, first.steps), int(first.steps * fraction))
        hold = first.hold * steps // first.steps
        return dataclasses.replace(
            self, stages=(dataclasses.replace(first, steps=steps, hold=hold),)
        )

    def held(self, rounds: int = 2) -> Recipe:
        """The recipe with a hold after every stage's cosine schedule (`Stage.hold`): up to
        `rounds` times its patience in evaluations at the final rate, in which alone its
        patience counts, but no longer than the schedule itself where that leaves room for
        one patience (small test budgets); a stage without patience gets the default (4)."""
        default = Stage.__dataclass_fields__["patience"].default
        stages = []
        for s in self.stages:
            patience = default if s.patience is None else s.patience
            every = self._eval_every(s)
            hold = min(rounds * patience * every, max(s.steps, patience * every))
            stages.append(dataclasses.replace(s, patience=patience, hold=hold))
        return dataclasses.replace(self, stages=tuple(stages))

    def _eval_every(self, stage: Stage) -> int:
        """The steps between a stage's validations (its own, else the recipe's; at most its
        budget): what its patience, and so its hold, is counted in."""
        return min(stage.eval_every or self.eval_every, stage.steps)

    def describe(self) -> dict[str, Any]:
        def name(fn):
            return None if fn is None else f"{fn.__module__}.{fn.__qualname__}"

        return {
            "context": self.context,
            "eval_every": self.eval_every,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "stages": [_describe_stage(s, name(s.objective)) for s in self.stages],
        }

    def fit(
        self,
        model: nnx.Module,
        dataset,
        *,
        key,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = False,
        precision: str = "float32",
    ) -> tuple[nnx.Module, RecipeResult]:
        """Trains `model` on `dataset` stage by stage; returns `(model, RecipeResult)`.

        Stage `i` runs `models.fit` with the key `fold_in(key, i)` and, with a
        `checkpoint_dir`, checkpoints in its own subdirectory, so an
        interrupted recipe resumes where it stopped (finished stages restore
        at once). Raises `models.TrainingDiverged` like `fit`.
        """

        def run_stage(i, stage, cfg, members, directory):
            (member,) = members
            member, records = fit(
                member,
                dataset,
                key=jax.random.fold_in(key, i),
                config=cfg,
                loss=stage.objective,
                checkpoint_dir=directory,
                progress=progress,
            )
            return [member], [records]

        recipe = self.for_data(dataset)
        (model,), (result,) = recipe._stages([model], dataset, run_stage, checkpoint_dir, precision)
        return model, result

    def for_data(self, dataset) -> Recipe:
        """The recipe with every window chosen from `dataset`'s training trajectories
        (`Stage.window_choices`, by `smoothing_window`) fixed as that stage's `window`."""
        stages = tuple(
            s
            if s.window_choices is None
            else dataclasses.replace(
                s, window=smoothing_window(dataset.train, s.window_choices), window_choices=None
            )
            for s in self.stages
        )
        return dataclasses.replace(self, stages=stages)

    def fit_members(
        self,
        members,
        datasets,
        *,
        keys,
        lrs=None,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = False,
        precision: str = "float32",
        strategy=None,
    ) -> tuple[list, list[RecipeResult]]:
        """Trains `members` (one architecture) as one ensemble, member `j` on `datasets[j]`
        (or all on one dataset) with `keys[j]` and the base learning rate `lrs[j]` (default:
        the recipe's `lr`), through the same stages, stopping rule and selection as `fit`,
        each stage one `models.fit_members` call; returns `(members, results)`, one
        `RecipeResult` per member, equal to what `fit` gives each alone (up to the rounding of
        a batched program; members whose data choose different windows, `Stage.window_choices`,
        train as separate ensembles). `train_seconds` and
        `compile_seconds` of each are the ensemble's divided by the number of members.
        `strategy` as in `models.fit_ensemble`. Raises `models.TrainingDiverged` (naming the
        member) like `models.fit_members`."""
        from .train import fit_members

        members, keys = list(members), list(keys)
        lrs = [self.lr] * len(members) if lrs is None else [float(x) for x in lrs]

        def run_stage(i, stage, cfg, members, directory):
            return fit_members(
                members,
                datasets,
                keys=[jax.random.fold_in(k, i) for k in keys],
                config=cfg,
                loss=stage.objective,
                lrs=[lr * stage.lr_scale for lr in lrs],
                checkpoint_dir=directory,
                progress=progress,
                strategy=strategy,
            )

        data = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets] * len(members)
        resolved = [self.for_data(d) for d in data]
        # members whose data choose different windows (`Stage.window_choices`) train apart
        groups: dict[tuple, list[int]] = {}
        for j, r in enumerate(resolved):
            groups.setdefault(r.stages, []).append(j)
        if len(groups) > 1:
            out_members, out_results = [None] * len(members), [None] * len(members)
            for g, idx in enumerate(groups.values()):
                got, results = resolved[idx[0]].fit_members(
                    [members[j] for j in idx],
                    [data[j] for j in idx],
                    keys=[keys[j] for j in idx],
                    lrs=[lrs[j] for j in idx],
                    checkpoint_dir=None
                    if checkpoint_dir is None
                    else Path(checkpoint_dir) / f"group{g}",
                    progress=progress,
                    precision=precision,
                    strategy=strategy,
                )
                for j, member, result in zip(idx, got, results):
                    out_members[j], out_results[j] = member, result
            return out_members, out_results
        return resolved[0]._stages(members, data[0], run_stage, checkpoint_dir, precision)

    def _stages(self, members, dataset, run_stage, checkpoint_dir, precision):
        """The stages in turn, `run_stage(i, stage, config, members, directory) -> (members,
        records of each member)` training them; the best validated parameters of each member
        kept over the stages."""
        n_states = dataset.train.shape[1]
        n = len(members)
        best_params, best_val, best_stage = [None] * n, [float("inf")] * n, [""] * n
        history: list[list[dict]] = [[] for _ in range(n)]
        steps_run, converged = [0] * n, [False] * n  # converged: of the stage kept
        seconds, compile_seconds = 0.0, 0.0
        for i, stage in enumerate(self.stages):
            window = n_states if stage.window is None else min(stage.window, n_states)
            cfg = TrainConfig(
                steps=stage.steps + stage.hold,
                batch_size=stage.batch_size or self.batch_size,
                lr=self.lr * stage.lr_scale,
                eval_every=self._eval_every(stage),
                patience=stage.patience,
                min_delta=stage.min_delta,
                lr_decay=stage.lr_decay,
                lr_decays=stage.lr_decays,
                hold=stage.hold,
                precision=precision,
                window=window,
                val_context=self.context,
            )
            directory = None if checkpoint_dir is None else Path(checkpoint_dir) / f"stage{i}"
            members, records_of = run_stage(i, stage, cfg, members, directory)
            if records_of[0]:  # the wall time is the ensemble's
                seconds += records_of[0][-1]["seconds"]
                compile_seconds += records_of[0][-1]["compile_seconds"]
            for j, (member, records) in enumerate(zip(members, records_of)):
                history[j].extend(dict(r, stage=stage.name, window=window) for r in records)
                val, stopped = None, False
                if records:
                    steps_run[j] += records[-1]["step"]
                    stopped = _plateaued(records, stage)
                    val = records[-1]["best_val"]
                val = float("inf") if val is None else val
                if val < best_val[j] or best_params[j] is None:
                    best_val[j], best_stage[j], converged[j] = val, stage.name, stopped
                    best_params[j] = jax.tree.map(jnp.copy, nnx.state(member, nnx.Param))
                else:  # this stage did not improve on the earlier ones: start the next from those
                    nnx.update(member, best_params[j])
        results = [
            RecipeResult(
                val_rollout_nmse=best_val[j],
                steps_run=steps_run[j],
                converged=converged[j],
                train_seconds=max(0.0, seconds - compile_seconds) / n,
                compile_seconds=compile_seconds / n,
                best_stage=best_stage[j],
                history=history[j],
            )
            for j in range(n)
        ]
        return members, results


def _describe_stage(stage: Stage, objective: str | None) -> dict[str, Any]:
    """A stage's fields as JSON, the objective by name; the plateau schedule's fields and
    `hold` only where they are used (so that the descriptions, and the run keys hashed from them, of
    cosine-schedule stages are those they had before the plateau schedule existed)."""
    out = dict(dataclasses.asdict(stage), objective=objective)
    if stage.lr_decay is None:
        del out["lr_decay"], out["lr_decays"]
    if not stage.hold:
        del out["hold"]
    return out


def _plateaued(records: list[dict], stage: Stage) -> bool:
    """Whether a stage ended on a plateau of its validation rollout: its stopping rule fired
    (`converged` in its last record), or, for a stage without one (`patience=None`), the
    evaluations since its last improvement by more than `min_delta` (`bad_evals`, which `fit`
    counts either way) reached the default patience at its last evaluation."""
    if stage.patience is not None:
        return bool(records[-1]["converged"])
    return records[-1].get("bad_evals", 0) >= Stage.__dataclass_fields__["patience"].default


def smoothing_window(trajectories, windows: tuple[int, ...]) -> int:
    """The window of `windows` (odd lengths) whose Savitzky-Golay smoothing of `trajectories`
    `(N, T, d)` has the lowest leave-one-out error.

    The smoother of window `w` (the local polynomial of degree `min(w - 1, 3)`, its value at
    the centre: weights `h`, `models._common.savgol_value_weights`) is linear, so the error
    of predicting each state `y_c` from its neighbours alone is
    `(y_c - sum_j h_j y_(c+j)) / (1 - h_0)` without refitting (cross-validation of a linear
    smoother). Its mean square, each coordinate in units of its standard deviation, trades
    the noise a narrow window lets through against the bias a wide one puts on fast motion:
    the derivative targets of the same window inherit both. Windows longer than the
    trajectories are skipped (the shortest is used if all are)."""
    y = np.asarray(trajectories, dtype=np.float64)
    if y.ndim != 3:
        raise ValueError(f"trajectories must have shape (N, T, d), got {y.shape}")
    scale = y.reshape(-1, y.shape[-1]).std(0)
    scale = np.where(scale > 0, scale, 1.0)
    t = y.shape[1]
    fits = [w for w in windows if w <= t]
    if not fits:
        return int(min(windows))
    errors = {}
    for w in fits:
        half = w // 2
        h = savgol_value_weights(w)
        smooth = sum(h[k] * y[:, k : t - w + 1 + k] for k in range(w))
        loo = (y[:, half : t - half] - smooth) / (1.0 - h[half])
        errors[w] = float(np.mean((loo / scale) ** 2))
    return int(min(errors, key=errors.get))


def ode_recipe(
    n_train_steps: int,
    *,
    budget: int = 20000,
    derivative: bool = True,
    derivative_window: int | None = None,
    derivative_windows: tuple[int, ...] = (5, 7, 9, 11, 13, 15),
    windows: tuple[int, ...] = (10, 40),
    whole_eval_every: int = 20,
    **recipe_kwargs,
) -> Recipe:
    """The ODE-type models' recipe.

    1. `derivative`: `budget` steps of regression on Savitzky-Golay derivatives
       (cubic) of the observed trajectories, batches of 128 states (a step costs
       little). The window is `derivative_window` points, or by default the one of
       `derivative_windows` whose smoothing of the training trajectories has the
       lowest leave-one-out error (`smoothing_window`): wide windows smooth noise
       (15 points smooth 1% noise about fivefold against the central difference),
       but they bias the derivative of fast motion, and a biased target moves the
       minimum (on the double pendulum, whose fast mode has a period of 22 samples,
       the true field's loss against 15-point targets is 0.61 and against 7-point
       ones 0.022; a ParametricModel trained on 15-point targets ended at g = 17
       instead of 9.8). The rule chooses 15 or 13 points on the chains and the
       clocks at 1% noise and 5 on the double pendulum. Skipped with
       `derivative=False` (models whose state is latent). This stage runs its
       whole cosine schedule, keeping its best validated parameters: most of its
       gain comes as the schedule anneals, and stopping it at a noisy minimum
       mid-schedule cost the HNN a factor of 40 in interp_nmse.
    2. trajectory matching on windows of `windows[0]` states (`budget / 20`
       steps), of `windows[1]` (`budget / 80`), then of the whole training
       window (`budget / 40` steps, batches of 4, validated every
       `whole_eval_every` steps, patience 3):
       the longer the window, the dearer a step. The learning rates are low
       (0.1x, 0.1x, 0.03x the recipe's `lr`): at 0.3x each stage's warm-up
       threw the model out of the derivative stage's optimum and spent the
       stage recovering.

    Every stage runs its cosine schedule to its end and then holds its final rate
    (`Recipe.held`: up to twice its patience in evaluations), where alone it stops on the
    validation rollout (patience 4, 3 for the whole window; improvements under 1% do not
    count): converged when the smallest rate brings nothing more. Patience counted on the
    schedule's high rates fired on noise (the HNN's window-40 stage at four times its budget
    stopped after 125 steps on a worse model), and never in the annealing tail."""
    stages = []
    if derivative:
        stages.append(
            Stage(
                "derivative",
                derivative_objective,
                15 if derivative_window is None else derivative_window,
                budget,
                batch_size=128,
                patience=None,
                window_choices=tuple(derivative_windows) if derivative_window is None else None,
            )
        )
    ws = [w for w in windows if w < n_train_steps + 1]
    for w, share in zip(ws, (20, 80)):
        stages.append(
            Stage(
                f"window {w}",
                trajectory_objective,
                w,
                max(1, budget // share),
                lr_scale=0.1,
                eval_every=max(25, budget // (share * 10)),
            )
        )
    stages.append(
        Stage(
            "whole window",
            trajectory_objective,
            None,
            max(1, budget // 40),
            lr_scale=0.03,
            batch_size=4,
            eval_every=whole_eval_every,
            patience=3,
        )
    )
    return Recipe(stages=tuple(stages), **recipe_kwargs).held()


def rollout_recipe(
    n_train_steps: int,
    *,
    budget: int = 20000,
    windows: tuple[int, ...] = (61, 121),
    **recipe_kwargs,
) -> Recipe:
    """The LSTM's recipe: its own objective (teacher forcing plus a free rollout after a
    warm-up) on windows of `windows[0]` states (`budget / 16` steps: an LSTM step on such a
    window costs about as much as sixteen derivative steps of an ODE model), of `windows[1]`
    (`budget / 64`), then of the whole training window (`budget / 80`, 0.3x the learning
    rate, validated every 25 steps), so the free rollout grows from 40 steps to the whole
    window; after each stage's cosine schedule, a hold at its final rate (`Recipe.held`: up
    to twice its patience in evaluations) in which alone it may stop, converged."""
    ws = [w for w in windows if w < n_train_steps + 1]
    stages = [
        Stage(
            f"window {w}",
            None,
            w,
            max(1, budget // share),
            eval_every=max(25, budget // (share * 10)),
        )
        for w, share in zip(ws, (16, 64))
    ]
    # trajectories too short for the shorter windows: the whole window gets the first share
    whole = budget // 80 if stages else budget // 16
    stages.append(Stage("whole window", None, None, max(1, whole), lr_scale=0.3, eval_every=25))
    return Recipe(stages=tuple(stages), **recipe_kwargs).held()


class _ClosedFormRecipe(Recipe):
    """What the closed-form recipes share: no optimisation and one stage. `fit` checks the
    data, calls `model.prepare(dataset)`, then sets the model to each candidate of
    `_candidates` in turn and scores its validation rollout (each `val` trajectory forecast
    from its first `context` states to its end, squared errors over each coordinate's
    variance over `val`: `val_rollout_nmse`, the criterion of every other recipe; without
    `val`, `train` stands in). Candidates whose rollout is not finite are skipped; the best is
    restored, and if none is finite `TrainingDiverged` is raised. The result has
    `steps_run=1` (a solve) and `converged=True` (a closed-form solution is the optimum of its
    objective)."""

    def pilot(self, fraction: float) -> Recipe:
        """The whole recipe: a closed-form fit has nothing cheaper to compare."""
        del fraction
        return self

    def fit_members(
        self,
        members,
        datasets,
        *,
        keys=None,
        lrs=None,
        checkpoint_dir=None,
        progress: bool = False,
        precision: str = "float32",
        strategy=None,
    ) -> tuple[list, list[RecipeResult]]:
        """Each member solved alone by `fit` (a closed-form fit has no program to share)."""
        del keys, lrs, checkpoint_dir, progress, precision, strategy
        members = list(members)
        if not isinstance(datasets, (list, tuple)):
            datasets = [datasets] * len(members)
        fitted = [self.fit(m, d) for m, d in zip(members, datasets, strict=True)]
        return [m for m, _ in fitted], [r for _, r in fitted]

    def _check(self, dataset) -> None:
        """Refuses data the recipe cannot use, before any work (subclasses add their own)."""

    def _candidates(self, model, dataset):
        """Sets `model` to each candidate in turn, yielding `(row, restore, label)`: the
        candidate's settings for the history, a callable that sets the model to it again, and
        its name for `best_stage`."""
        raise NotImplementedError

    def fit(
        self,
        model: nnx.Module,
        dataset,
        *,
        key=None,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = False,
        precision: str = "float32",
    ) -> tuple[nnx.Module, RecipeResult]:
        del key, checkpoint_dir, progress, precision
        name = type(self).__name__
        if not (np.all(np.isfinite(dataset.train)) and np.all(np.isfinite(dataset.val))):
            raise ValueError(f"{name}: the train or val trajectories contain NaN or inf")
        val = np.asarray(dataset.val if np.shape(dataset.val)[0] > 0 else dataset.train)
        if not 1 <= self.context < val.shape[1]:
            raise ValueError(
                f"{name}: context={self.context} leaves nothing to forecast in "
                f"validation trajectories of {val.shape[1]} states"
            )
        self._check(dataset)
        stage = self.stages[0].name
        start = time.perf_counter()
        with _CompileTimer() as timer:
            model.prepare(dataset)
            graphdef = nnx.graphdef(model)
            context = self.context

            @jax.jit
            def score(state, val, inv_var):
                return _rollout_nmse(nnx.merge(graphdef, state), val, inv_var, context)

            val_j, inv_var = jnp.asarray(val), jnp.asarray(_inverse_variance(val))
            history, chosen, best = [], [], None
            for row, restore, label in self._candidates(model, dataset):
                v = float(score(nnx.state(model), val_j, inv_var))
                v = v if math.isfinite(v) else float("inf")
                history.append({"stage": stage, **row, "val_rollout_nmse": v})
                chosen.append((restore, label))
                if v < float("inf") and (best is None or v < history[best]["val_rollout_nmse"]):
                    best = len(history) - 1
            if best is None:
                raise TrainingDiverged(
                    1,
                    float("nan"),
                    model,
                    message=(
                        f"{name}: the validation rollout of every candidate "
                        f"({', '.join(label for _, label in chosen)}) is non-finite: the fitted "
                        "model blows up when it forecasts val from its context"
                    ),
                )
            restore, label = chosen[best]
            restore()
        seconds = time.perf_counter() - start
        return model, RecipeResult(
            val_rollout_nmse=history[best]["val_rollout_nmse"],
            steps_run=1,
            converged=True,
            train_seconds=max(0.0, seconds - timer.seconds),
            compile_seconds=timer.seconds,
            best_stage=label,
            history=history,
        )


#: the default grid of ridge strengths `lambda` of `RidgeRecipe`: every decade from 1e-10 to
#: 1e3 (on standardised features with unnormalised sums; see `models.reservoir`)
DEFAULT_RIDGES: tuple[float, ...] = tuple(float(x) for x in np.logspace(-10, 3, 14))


@dataclasses.dataclass(frozen=True)
class RidgeRecipe(_ClosedFormRecipe):
    """The closed-form recipe of the readout models (`models.NVAR`, `models.ESN`): no
    optimisation, one stage.

    `fit` calls `model.prepare(dataset)`, solves the ridge readout on every `train` trajectory
    for each `lambda` in `ridges` (`model.readout_path`: one SVD for the whole grid), and keeps
    the `lambda` whose validation rollout is lowest: each `val` trajectory forecast from its
    first `context` states to its end, squared errors divided by each coordinate's variance
    over `val` (the criterion of every other recipe, `val_rollout_nmse`; without `val`, the
    `train` trajectories stand in). The result has `steps_run=1` (one solve) and
    `converged=True` (a closed-form solution is the optimum of its objective); every `lambda`
    that gives a non-finite rollout is skipped, and if all do, `TrainingDiverged` is raised.
    `eval_every`, `batch_size`, `lr`, `key`, `checkpoint_dir` and `precision` are accepted for
    the common interface and unused: the solve takes seconds, and runs in float64 where
    `jax_enable_x64` is on (the study enables it).
    """

    stages: tuple[Stage, ...] = (Stage("ridge readout", None, None, 1, patience=None),)
    ridges: tuple[float, ...] = DEFAULT_RIDGES

    def __post_init__(self):
        super().__post_init__()
        if not self.ridges or any(not (math.isfinite(r) and r >= 0) for r in self.ridges):
            raise ValueError(f"RidgeRecipe: ridges must be finite values >= 0, got {self.ridges}")

    def describe(self) -> dict[str, Any]:
        return {"kind": "ridge", "context": self.context, "ridges": list(self.ridges)}

    def _candidates(self, model, dataset):
        ws, bs = model.readout_path(dataset.train, self.ridges)
        for w, b, ridge in zip(ws, bs, self.ridges):

            def restore(w=w, b=b):
                model.set_readout(w, b)

            restore()
            yield {"ridge": ridge}, restore, f"ridge {ridge:.3g}"


#: the default grid of STLSQ thresholds of `SINDyRecipe` (absolute coefficient magnitudes in
#: the observed coordinates, where the chains' true coefficients are of order 0.1 to 10)
DEFAULT_THRESHOLDS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
#: the default Savitzky-Golay derivative windows of `SINDyRecipe`: 5 points (the fourth-order
#: stencil, for clean data) to 15 (the ODE models' derivative stage, for 1% noise)
DEFAULT_DERIVATIVE_WINDOWS: tuple[int, ...] = (5, 9, 15)


@dataclasses.dataclass(frozen=True)
class SINDyRecipe(_ClosedFormRecipe):
    """The closed-form recipe of `models.SINDy`: no optimisation, one stage.

    `fit` calls `model.prepare(dataset)`, then, for every derivative window in `windows`
    (those no longer than the training trajectories) and every threshold in `thresholds`,
    identifies the coefficients by STLSQ on every `train` trajectory (`model.identify`) and
    scores the validation rollout as `RidgeRecipe` does (each `val` trajectory forecast from
    its first `context` states to its end, squared errors over each coordinate's variance over
    `val`; without `val`, `train` stands in). The setting with the lowest rollout is kept;
    settings whose rollout is not finite (an identified field that blows up) are skipped, and
    if all are, `TrainingDiverged` is raised. `steps_run=1`, `converged=True` (a solve, not an
    optimisation); `best_stage` names the setting. `eval_every`, `batch_size`, `lr`, `key`,
    `checkpoint_dir` and `precision` are accepted for the common interface and unused.
    """

    stages: tuple[Stage, ...] = (Stage("sparse regression", None, None, 1, patience=None),)
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    windows: tuple[int, ...] = DEFAULT_DERIVATIVE_WINDOWS

    def __post_init__(self):
        super().__post_init__()
        if not self.thresholds or any(not (math.isfinite(t) and t >= 0) for t in self.thresholds):
            raise ValueError(
                f"SINDyRecipe: thresholds must be finite values >= 0, got {self.thresholds}"
            )
        if not self.windows or any(
            isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 3 or w % 2 == 0
            for w in self.windows
        ):
            raise ValueError(f"SINDyRecipe: windows must be odd integers >= 3, got {self.windows}")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "sindy",
            "context": self.context,
            "thresholds": list(self.thresholds),
            "windows": list(self.windows),
        }

    def _windows(self, dataset) -> list[int]:
        return [w for w in self.windows if w <= np.shape(dataset.train)[1]]

    def _check(self, dataset) -> None:
        if not self._windows(dataset):
            raise ValueError(
                f"SINDyRecipe: training trajectories of {np.shape(dataset.train)[1]} states are "
                f"shorter than every derivative window {self.windows}"
            )

    def _candidates(self, model, dataset):
        for w in self._windows(dataset):
            for thr in self.thresholds:
                model.identify(dataset.train, threshold=thr, window=w)
                xi = np.asarray(model.coefficients[...])

                def restore(xi=xi, thr=thr, w=w):
                    model.set_coefficients(xi)
                    model.threshold, model.derivative_window = thr, w

                row = {"threshold": thr, "window": w, "n_terms": int(np.count_nonzero(xi))}
                yield row, restore, f"threshold {thr:.3g}, window {w}"
