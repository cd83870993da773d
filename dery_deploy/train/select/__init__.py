"""Selection by evidence: the measured finalists are trained briefly with successive halving and
compared out of fold; the test split never decides anything.

Rungs train every surviving finalist from its start for more epochs each time (`RUNGS`); after each
rung the best 1/ETA go on, and the best whole donor and the best mixed plan always do, so the last
rung compares them directly. The pick is the best donor unless the best mixed plan beats it by more
than the noise: twice the standard error of the paired accuracy difference on the same images,
sqrt(b + c - (b - c)^2 / n) / n with b, c the images only one of the two gets right (a McNemar-style
paired test at about 95%).

The evidence is k-fold cross-validation of the short recipe (`Task.fold`): train and validation are
pooled and cut into k stratified folds, and a finalist's score at the last rung is its accuracy over
all k held-out folds, so every labelled image is scored once by a network that did not train on it.
With 100 labels per class that is 1000 images instead of a 200-image validation split: the noise
above shrinks by about sqrt(5). k-fold rather than repeated random splits because each image counts
exactly once, so the paired test's images are distinct and every finalist is scored on the same ones.
The rungs below the last only screen (the best half and the best of each kind go on), so they train
`screen_folds` of the folds: the default run stays within its time (bench numbers in the README).
`folds=1` is the old rule: the task's own validation split; it is the default where that split holds
`CV_BELOW` images or more, whose paired noise is already a point or two, while k folds cost k times
the training on a train split that is large by then.

The trials live on a `TrialBoard`; a trial is one (finalist, rung, fold). In one process the board is
kept in memory; with `storage` (an SQLite file or a database URL) several processes or machines
running the same selection share an Optuna study: each claims the next unclaimed trial, the lowest
trial number wins a tie, and a trial whose process died is failed by Optuna's heartbeat and claimed
again. No scheduler of our own.

Modules: `halving` (the rungs and the study's name), `evidence` (k-fold statistics, the pick, the
`Selection`), `board` (the shared study), `trial` (one trial's training).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.select import board
from dery_deploy.train.select.board import (
    GRACE_S,
    HEARTBEAT_S,
    Liveness,
    MemoryBoard,
    RdbBoard,
    TrialBoard,
    open_board,
    quiet_optuna,
)
from dery_deploy.train.select.evidence import Evidence, Finalist, Selection, Trial, decide, paired_noise
from dery_deploy.train.select.halving import (
    CV_BELOW,
    ETA,
    FOLDS,
    RUNGS,
    SCREEN_FOLDS,
    default_folds,
    gather,
    identity,
    run_rungs,
    rung_folds,
    rung_recipe,
    schedule,
    study_name,
)
from dery_deploy.train.select.trial import FoldTrainer, seam_matched_start, train_trial

__all__ = [
    "CV_BELOW", "ETA", "FOLDS", "GRACE_S", "HEARTBEAT_S", "RUNGS", "SCREEN_FOLDS",
    "Evidence", "Finalist", "FoldTrainer", "Liveness", "MemoryBoard", "RdbBoard", "Selection", "Trial", "TrialBoard",
    "alive", "decide", "default_folds", "gather", "identity", "open_board", "paired_noise", "rung_folds",
    "rung_recipe", "run_rungs", "schedule", "seam_matched_start", "select", "shared_once", "study_name",
    "train_trial",
]  # fmt: skip

_quiet_optuna = quiet_optuna  # the name the heartbeat test uses


def _liveness() -> Liveness:
    # read at call time from this package, so that setting `dery_deploy.train.select.HEARTBEAT_S` or
    # `GRACE_S` (as the heartbeat test does) reaches every board opened afterwards
    return Liveness(HEARTBEAT_S, GRACE_S)


def shared_once(storage: str | None, name: str, compute: Callable[[], Any], poll_s: float = 1.0) -> Any:
    """`board.shared_once` with this package's heartbeat: `compute()` done once for every process
    that shares `storage` under `name`, read by the others."""
    return board.shared_once(storage, name, compute, poll_s, _liveness())


def _open_study(storage: str | None, name: str) -> tuple[TrialBoard, str]:
    """The board of the study `name` and where it lives."""
    b = open_board(storage, name, _liveness())
    return b, b.where


def alive(trial_board: TrialBoard, trial: board.BoardTrial):
    """`trial_board.alive(trial)`: keep a held trial's heartbeat while the block runs."""
    return trial_board.alive(trial)


def select(
    finalists: list[Finalist],
    zoo,
    task: Task,
    out: Path,
    base: Recipe,
    storage: str | None = None,
    rungs=RUNGS,
    eta: int = ETA,
    log=None,
    poll_s: float = 1.0,
    folds: int | None = None,
    screen_folds: int = SCREEN_FOLDS,
    reuse: Path | None = None,
) -> Selection:
    """Successive halving over the finalists, decided by k-fold cross-validation, then the pick
    (module docstring).

    Args:
        folds: k of the cross-validation over train + validation at the last rung; 1 decides on the
            task's own validation split; None: `default_folds(task)`.
        screen_folds: folds each rung below the last trains (at most `folds`).
        reuse: a folder of finished trials (`trial.trial_key`): one found there is read back, one trained
            is kept there; a run's budgets share it.

    Raises:
        DeryError: no finalist, fewer than one fold, or no labelled images to hold out.
    """
    folds = default_folds(task) if folds is None else folds
    _check(finalists, task, folds, screen_folds)
    with quiet_optuna():
        name = study_name(task, finalists, rungs, eta, base, folds, screen_folds)
        trials = open_board(storage, name, _liveness())
        names = sorted({f.name for f in finalists})
        train = FoldTrainer(
            zoo, task, base, rungs, folds, Path(out), name.removeprefix("dery-select-"), names, reuse=reuse
        )
        done, evidence = run_rungs(trials, finalists, train, rungs, eta, folds, screen_folds, log, poll_s)
        sel = decide(finalists, evidence, rungs, name, trials.where)
    sel.folds = folds
    sel.fold_trials = sorted(done.values(), key=lambda t: (t.rung, t.finalist, t.fold))
    return sel


def _check(finalists: list[Finalist], task: Task, folds: int, screen_folds: int) -> None:
    if folds < 1 or screen_folds < 1:
        raise DeryError(f"selection needs folds >= 1 and screen_folds >= 1, got {folds} and {screen_folds}", "select")
    if folds == 1 and len(task.val) == 0:
        raise DeryError("selection needs a validation split; the task has none (add labelled images)", "select")
    if folds > len(task.train) + len(task.val):
        raise DeryError(
            f"{folds}-fold selection needs at least {folds} labelled images; the task has "
            f"{len(task.train) + len(task.val)}: add labelled images or pass fewer folds",
            "select",
        )
    if not finalists:
        raise DeryError("no finalist to select from", "select")
