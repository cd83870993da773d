"""One trial's training: a finalist trained with a rung's short recipe on one fold's train split and
scored on its held-out images. Seam matching (unlabelled images only) is the same for every fold: it
is done once per finalist and rung, and the folds start from its result.

A trial is a function of what it trains (the network and its start weights), the rung's recipe and the
fold (`trial_key`): with a `reuse` folder, a finished trial is kept there and read back wherever the
same network is trained the same way again. A run gives every budget the same folder: the best donor
and the carried mixes are finalists at several budgets, and their trials there are the same (seen on the
Xeon host, a default run: 55 s of 550 trained twice, with the same held-out accuracy each time).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dery_deploy.artifacts import atomic_write_json, sha256_json
from dery_deploy.data.task import Task
from dery_deploy.network.plan_records import REUSED
from dery_deploy.train.finetune import accuracy, finetune, load_run_model
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.select.evidence import Finalist, Trial
from dery_deploy.train.select.halving import rung_recipe
from dery_deploy.train.source import FinetuneSource


@dataclass
class FoldTrainer:
    """`train(finalist, rung, fold)` for `halving.run_rungs`: each trial in its own run folder under
    `out`, named by the study's key, the finalist's place among `names` (sorted), the rung and the fold."""

    zoo: object
    task: Task
    base: Recipe
    rungs: Sequence[int]
    folds: int
    out: Path
    key: str
    names: list[str]
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    fold_tasks: dict[int, Task] = field(default_factory=dict)  # built once each: a fold cuts the labelled pool
    reuse: Path | None = None  # finished trials by `trial_key`, shared by the selections of one run

    def __call__(self, finalist: Finalist, rung: int, fold: int) -> Trial:
        kept = None
        if self.reuse is not None:
            kept = self.reuse / f"{trial_key(finalist, rung, fold, self.task, self.base, self.rungs, self.folds)}.json"
            try:
                return Trial(**{**json.loads(kept.read_text()), "worker": REUSED})
            except (OSError, ValueError, TypeError):  # none yet, or a record this code cannot read: trained
                pass
        if fold not in self.fold_tasks:
            self.fold_tasks[fold] = self.task if self.folds == 1 else self.task.fold(self.folds, fold)
        tag = "" if self.folds == 1 else f"-fold{fold}"
        run = self.out / f"{self.key}-{self.names.index(finalist.name):02d}-rung{rung}{tag}"
        task = self.fold_tasks[fold]
        result = train_trial(finalist, rung, fold, self.zoo, task, self.base, self.rungs, run, self.folds > 1)
        result.worker = self.worker
        if kept is not None:
            atomic_write_json(kept, asdict(result))
        return result


def trial_key(finalist: Finalist, rung: int, fold: int, task: Task, base: Recipe, rungs, folds: int) -> str:
    """What a trial's result depends on: the task, the network and its start weights (by content: a mix's
    adapters are fitted by each budget's assembly), the rung's recipe and the fold of `folds`; not the
    target it was measured on nor the budget."""
    recipe = rung_recipe(base, rung, rungs)
    key = [task.hash(), finalist.name, *finalist.source.trains(), recipe.__dict__, folds, fold]
    return sha256_json(key)[:24]


def train_trial(
    finalist: Finalist, rung: int, fold: int, zoo, task: Task, base: Recipe, rungs, run: Path, shared_matching: bool
) -> Trial:
    """Train `finalist` with the rung's short recipe on `task` (a fold) and score it on the task's
    validation split. With `shared_matching`, seam matching (unlabelled images only) is done once for
    every fold into a start beside the run folder, and the fold trains from it."""
    t0 = time.time()
    recipe = rung_recipe(base, rung, rungs)
    source = finalist.source
    if shared_matching and recipe.match_epochs and not finalist.is_donor and source.plan is not None:
        start = run.with_name(run.name.rsplit("-fold", 1)[0] + f"-matched{recipe.match_epochs}.safetensors")
        source = source.starting_from(str(seam_matched_start(source, zoo, task, recipe, start)))
        recipe = Recipe(**{**recipe.__dict__, "match_epochs": 0})
    finetune(source, zoo, task, recipe, run, force=True, log=None, progress=False, test=False)
    model, _ = load_run_model(run, zoo)
    xv, yv = task.x("val"), task.y("val")
    acc, preds = accuracy(model, xv, yv)
    correct = "".join("1" if c else "0" for c in (preds == yv).tolist())
    return Trial(finalist.name, rung, round(acc, 3), round(time.time() - t0, 2), "", fold, correct)


def seam_matched_start(source: FinetuneSource, zoo, task: Task, recipe: Recipe, path: Path) -> Path:
    """The network of `source` after `recipe`'s seam matching on `task`'s unlabelled images, saved to
    `path` (whole state, safetensors) unless it is there already; what every fold starts from."""
    if path.is_file():
        return path
    import torch
    from safetensors.torch import save_file

    from dery_deploy.artifacts import atomic_write_with
    from dery_deploy.train.finetune import start_model, train_device
    from dery_deploy.train.heal import match_seams
    from dery_deploy.zoo.load import dissect_zoo

    dev = train_device()
    torch.manual_seed(recipe.seed)
    assert source.plan is not None  # a donor trained whole has no seams to match
    dis = dissect_zoo(zoo, source.plan.donors)
    model = start_model(source, zoo, dis, task.num_classes).to(dev)
    match_seams(model, source.plan, dis, task, recipe.match_epochs, recipe.match_images, seed=recipe.seed, device=dev)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(state, str(tmp)))
    return path
