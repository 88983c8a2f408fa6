"""How the study trains one model: a small learning-rate x width choice made on `val`, then the
model's own recipe (`models.recipes`) to convergence.

Candidates are every combination of the preset's `lr_grid` (or its `lr`) and
`width_grid` (or its `width`; only models that take their width from the preset
vary with it). Each candidate trains a pilot, the first stage of its recipe at
the fraction `pilot` of its budget (`Recipe.pilot`), and the one with the lowest validation
rollout (`val_rollout_nmse`, the forecast of `val` from the study's context
over the training window) is trained again, from its initial parameters, with
the full recipe. Only `train` and `val` are used; the test splits are not seen.
Models trained in closed form (`closed_form`: `models.NVAR`, `models.ESN`, `models.SINDy`)
have no learning rate: they skip the pilots, and their recipe chooses its ridge strength (or
threshold) on `val` itself.

`train_models` does the same for several seeds at once, each pilot and the final recipe one
ensemble (`models.Recipe.fit_members`: each seed on its own data, with its own chosen rate),
with the same results as `train_model` seed by seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from pathlib import Path

from .presets import Preset
from .specs import ModelSpec, SystemSpec


def candidates(mspec: ModelSpec, preset: Preset) -> list[tuple[dict, Preset]]:
    """The distinct `(choice, preset)` pairs of the grid for this model; `choice` names the
    settings varied (`{"lr": 0.003, "width": 128}`)."""
    lrs = preset.lr_grid or (mspec.train.get("lr", preset.lr),)
    if getattr(mspec.cls, "closed_form", False):  # solved, not optimised: no rate to choose
        lrs = (mspec.train.get("lr", preset.lr),)
    uses_width = "width" in mspec.preset_kwargs.values()
    widths = (preset.width_grid or (preset.width,)) if uses_width else (None,)
    out = []
    for lr, width in itertools.product(lrs, widths):
        choice = {"lr": float(lr)} | ({} if width is None else {"width": int(width)})
        out.append((choice, dataclasses.replace(preset, **choice)))
    return out


def train_model(
    spec: SystemSpec,
    mspec: ModelSpec,
    system,
    preset: Preset,
    dataset,
    *,
    seed: int,
    checkpoint_dir: Path | None,
    progress: bool = False,
):
    """Chooses the candidate on `val`, then trains it with its full recipe.

    Returns `(model, info)` with `info` holding `choice` (the chosen settings),
    `pilots` (each candidate's pilot `val_rollout_nmse`), the final
    `models.RecipeResult` as `result`, and `recipe` (its description).
    Checkpoints go to `checkpoint_dir/pilot<i>/` and `checkpoint_dir/final/`,
    so an interrupted run resumes. Raises `models.TrainingDiverged` when the
    final training diverges (a diverging pilot only loses the choice).
    """
    import jax
    from flax import nnx

    import models

    key = jax.random.key(1000 + seed)
    cands = candidates(mspec, preset)
    pilots = []
    if len(cands) > 1:
        for i, (choice, p) in enumerate(cands):
            model = mspec.build(system, spec, p, rngs=nnx.Rngs(seed))
            recipe = mspec.recipe(model, dataset.n_train_steps, p, lr=choice["lr"]).pilot(
                preset.pilot
            )
            try:
                _, res = recipe.fit(
                    model,
                    dataset,
                    key=key,
                    checkpoint_dir=None if checkpoint_dir is None else checkpoint_dir / f"pilot{i}",
                    progress=progress,
                )
                score = res.val_rollout_nmse
            except models.TrainingDiverged:
                score = float("inf")
            pilots.append({**choice, "val_rollout_nmse": score})
        best = min(range(len(cands)), key=lambda i: pilots[i]["val_rollout_nmse"])
    else:
        best = 0
    choice, p = cands[best]
    model = mspec.build(system, spec, p, rngs=nnx.Rngs(seed))
    recipe = mspec.recipe(model, dataset.n_train_steps, p, lr=choice["lr"])
    model, result = recipe.fit(
        model,
        dataset,
        key=key,
        checkpoint_dir=None if checkpoint_dir is None else checkpoint_dir / "final",
        progress=progress,
    )
    if checkpoint_dir is not None:
        for i in range(len(pilots)):
            shutil.rmtree(checkpoint_dir / f"pilot{i}", ignore_errors=True)
    return model, {
        "choice": choice,
        "pilots": pilots,
        "result": result,
        "recipe": recipe.describe(),
        "preset": p,
    }


def train_models(
    spec: SystemSpec,
    mspec: ModelSpec,
    system,
    preset: Preset,
    datasets,
    *,
    seeds,
    checkpoint_dir: Path | None,
    progress: bool = False,
    strategy=None,
):
    """`train_model` for every seed in `seeds` (seed `j` on `datasets[j]`) as ensembles: each
    candidate's pilot is one ensemble of all the seeds, each seed chooses its own candidate on
    its own `val`, and the seeds that chose the same architecture (width) train their final
    recipes as one ensemble, each at its own learning rate. Returns one `(model, info)` per
    seed, as `train_model` does. Raises `models.TrainingDiverged` when a final training
    diverges (a diverging pilot ensemble is retried seed by seed, where it only loses that
    seed's choice)."""
    import jax
    from flax import nnx

    import models

    seeds, datasets = list(seeds), list(datasets)
    keys = [jax.random.key(1000 + seed) for seed in seeds]
    cands = candidates(mspec, preset)

    def build(p):
        return [mspec.build(system, spec, p, rngs=nnx.Rngs(seed)) for seed in seeds]

    def directory(name):
        return None if checkpoint_dir is None else checkpoint_dir / name

    pilots: list[list[dict]] = [[] for _ in seeds]
    best = [0] * len(seeds)
    if len(cands) > 1:
        for i, (choice, p) in enumerate(cands):
            members = build(p)
            recipe = mspec.recipe(members[0], datasets[0].n_train_steps, p, lr=choice["lr"]).pilot(
                preset.pilot
            )
            try:
                _, results = recipe.fit_members(
                    members,
                    datasets,
                    keys=keys,
                    checkpoint_dir=directory(f"pilot{i}"),
                    progress=progress,
                    strategy=strategy,
                )
                scores = [r.val_rollout_nmse for r in results]
            except models.TrainingDiverged:
                scores = []
                for j, (member, ds) in enumerate(zip(build(p), datasets)):
                    try:
                        _, res = recipe.fit(member, ds, key=keys[j], progress=progress)
                        scores.append(res.val_rollout_nmse)
                    except models.TrainingDiverged:
                        scores.append(float("inf"))
            for j, score in enumerate(scores):
                pilots[j].append({**choice, "val_rollout_nmse": score})
        best = [
            min(range(len(cands)), key=lambda i: pilots[j][i]["val_rollout_nmse"])
            for j in range(len(seeds))
        ]
    out: list = [None] * len(seeds)
    # seeds whose choices differ only in the learning rate share one ensemble
    groups: dict[tuple, list[int]] = {}
    for j, b in enumerate(best):
        arch = tuple(sorted((k, v) for k, v in cands[b][0].items() if k != "lr"))
        groups.setdefault(arch, []).append(j)
    for g, (arch, idx) in enumerate(groups.items()):
        choice0, p = cands[best[idx[0]]]
        members = [mspec.build(system, spec, p, rngs=nnx.Rngs(seeds[j])) for j in idx]
        recipe = mspec.recipe(members[0], datasets[idx[0]].n_train_steps, p, lr=choice0["lr"])
        members, results = recipe.fit_members(
            members,
            [datasets[j] for j in idx],
            keys=[keys[j] for j in idx],
            lrs=[cands[best[j]][0]["lr"] for j in idx],
            checkpoint_dir=directory(f"final{g}"),
            progress=progress,
            strategy=strategy,
        )
        for j, model, result in zip(idx, members, results):
            choice, pj = cands[best[j]]
            out[j] = (
                model,
                {
                    "choice": choice,
                    "pilots": pilots[j],
                    "result": result,
                    "recipe": dataclasses.replace(recipe, lr=choice["lr"]).describe(),
                    "preset": pj,
                },
            )
    if checkpoint_dir is not None:
        for i in range(len(cands)):
            shutil.rmtree(checkpoint_dir / f"pilot{i}", ignore_errors=True)
    return out
