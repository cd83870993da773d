"""Successive halving: rungs train every surviving finalist from its start for more epochs each time
(`RUNGS`); after each rung the best 1/ETA go on, and the best whole donor and the best mixed plan
always do, so the last rung compares them directly.

The last rung trains all `folds` of the cross-validation (the pick rests on every labelled image);
the rungs below it only screen, so they train `screen_folds` of them. A trial is one (finalist, rung,
fold) on a `TrialBoard`; `run_rungs` claims and trains the next one the evidence calls for until none
is left, here or in another process sharing the board.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict

from dery_deploy.artifacts import JsonValue, sha256_json
from dery_deploy.data.task import Task
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.select.board import COMPLETE, RUNNING, WAITING, BoardTrial, TrialBoard, TrialRecord
from dery_deploy.train.select.evidence import Evidence, Finalist, Trial

RUNGS = (1, 2, 4)  # epochs of end-to-end training at each rung
ETA = 2
FOLDS = 5  # k of the k-fold cross-validation the last rung decides on
SCREEN_FOLDS = 1  # folds each rung below the last trains
CV_BELOW = 1000  # validation images under which selection cross-validates by default

TrialKey = tuple[str, int, int]  # (finalist, rung, fold)


def rung_recipe(base: Recipe, rung: int, rungs=RUNGS) -> Recipe:
    """Short training for a rung: one seam-matching epoch, the head probe, a short phase 1, then
    `rungs[rung]` epochs end to end; no distillation (it is the same for every finalist)."""
    return Recipe(
        **{
            **base.__dict__,
            "match_epochs": min(base.match_epochs, 1 + rung),
            "match_images": 4096,
            "epochs_adapter": min(base.epochs_adapter, 2),
            "epochs_full": rungs[rung],
            "distill": 0.0,
        }
    )


def default_folds(task: Task) -> int:
    """k-fold (`FOLDS`) where the validation split is small, else the validation split alone."""
    return FOLDS if len(task.val) < CV_BELOW else 1


def rung_folds(rung: int, rungs=RUNGS, folds: int = FOLDS, screen_folds: int = SCREEN_FOLDS) -> list[int]:
    """The folds a rung trains: all of them at the last rung (the pick rests on every labelled image),
    the first `screen_folds` below it (screening)."""
    return list(range(folds if rung == len(rungs) - 1 else min(screen_folds, folds)))


def gather(
    done: dict[TrialKey, Trial], rungs=RUNGS, folds: int = FOLDS, screen_folds: int = SCREEN_FOLDS
) -> dict[tuple[str, int], Evidence]:
    """Evidence per (finalist, rung) whose every fold is trained."""
    out = {}
    for name, rung in {(n, r) for n, r, _ in done}:
        want = [(name, rung, f) for f in rung_folds(rung, rungs, folds, screen_folds)]
        if all(w in done for w in want):
            out[(name, rung)] = Evidence.of([done[w] for w in want])
    return out


def schedule(
    finalists: list[Finalist], done: dict[tuple[str, int], Evidence], rungs=RUNGS, eta: int = ETA
) -> list[tuple[str, int]]:
    """The (finalist, rung) work items the evidence so far calls for."""
    names = [f.name for f in finalists]
    kinds = {f.name: f.is_donor for f in finalists}
    work = [(n, 0) for n in names]
    alive = names
    for r in range(1, len(rungs)):
        if not all((n, r - 1) in done for n in alive):
            break  # the rung below is not finished: promotion waits for it
        ranked = sorted(alive, key=lambda n: (-done[(n, r - 1)].val_accuracy, n))
        keep = ranked[: max(1, math.ceil(len(alive) / eta))]
        for want_donor in (True, False):  # the best of each kind always goes on
            best = next((n for n in ranked if kinds[n] == want_donor), None)
            if best is not None and best not in keep:
                keep.append(best)
        alive = keep
        work += [(n, r) for n in alive]
    return work


# what differs between two processes planning the same finalists: measurements, solver timings, the
# local path of the adapter weights and of the zoo file; not part of what is trained
_VOLATILE = {
    "predicted",
    "measured",
    "proxy",
    "solver",
    "selection",
    "zoo_ref",
    "task",
    "adapter_weights",
    "budget",
}


def identity(source: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """`source` less what differs between processes, for hashing into the study's name. A JSON object on
    purpose: the source's own keys, whatever they are, not a record of ours; its hash names studies and
    measurement reuse keys, so what it keeps must never change."""
    out = {k: v for k, v in source.items() if k not in _VOLATILE}
    plan = out.get("plan")
    if isinstance(plan, dict):
        out["plan"] = identity(plan)
    return out


def study_name(
    task: Task,
    finalists: list[Finalist],
    rungs,
    eta: int,
    base: Recipe,
    folds: int = FOLDS,
    screen_folds: int = SCREEN_FOLDS,
) -> str:
    """The study of one selection: the same on every process that selects among the same finalists
    for the same task, recipe and folds, so they share its trials through `--storage`."""
    key = [task.hash(), [(f.name, identity(f.source.to_dict())) for f in finalists], list(rungs), eta, base.__dict__]
    if folds != 1:  # a single split keeps the study name it had before cross-validation
        key += [folds, min(screen_folds, folds)]
    return f"dery-select-{sha256_json(key)[:12]}"


def trained(records: list[TrialRecord]) -> tuple[dict[TrialKey, Trial], set[tuple[str | None, int | None, int]]]:
    """The trials finished on the board (with their results) and those some process holds now (one
    just asked for may not name its work yet)."""
    done = {
        (t.user_attrs["finalist"], t.user_attrs["rung"], t.user_attrs.get("fold", 0)): Trial(**t.user_attrs["result"])
        for t in records
        if t.state == COMPLETE and "result" in t.user_attrs
    }
    claimed = {
        (t.user_attrs.get("finalist"), t.user_attrs.get("rung"), t.user_attrs.get("fold", 0))
        for t in records
        if t.state in (RUNNING, WAITING)
    }
    return done, claimed


def run_rungs(
    board: TrialBoard,
    finalists: list[Finalist],
    train: Callable[[Finalist, int, int], Trial],
    rungs=RUNGS,
    eta: int = ETA,
    folds: int = FOLDS,
    screen_folds: int = SCREEN_FOLDS,
    log: Callable[[str], object] | None = None,
    poll_s: float = 1.0,
) -> tuple[dict[TrialKey, Trial], dict[tuple[str, int], Evidence]]:
    """Claim and `train(finalist, rung, fold)` the next trial the evidence calls for until every one
    is done, here or by another process on `board`; returns the trials and the evidence they make."""
    by_name = {f.name: f for f in finalists}
    while True:
        board.fail_stale()
        done, claimed = trained(board.trials())
        evidence = gather(done, rungs, folds, screen_folds)
        work = [
            (n, r, f)
            for n, r in schedule(finalists, evidence, rungs, eta)
            for f in rung_folds(r, rungs, folds, screen_folds)
        ]
        todo = [w for w in work if w not in done and w not in claimed]
        if not todo:
            if not claimed:
                return done, evidence  # every trial the evidence called for is done
            time.sleep(poll_s)  # others are training what is left
            continue
        fname, rung, fold = todo[0]
        result = _claim_and_train(board, board.ask(), by_name[fname], rung, fold, train)
        if result is not None and log:
            on = f" fold {fold + 1}/{folds}" if folds > 1 else ""
            log(f"  rung {rung} ({rungs[rung]} epochs){on}: {fname}: held out {result.val_accuracy:.2f}%")


def _claim_and_train(
    board: TrialBoard,
    trial: BoardTrial,
    finalist: Finalist,
    rung: int,
    fold: int,
    train: Callable[[Finalist, int, int], Trial],
) -> Trial | None:
    """`trial` made the (finalist, rung, fold) and trained, or failed (None) where another process
    claimed that work first."""
    with board.alive(trial):
        work = {"finalist": finalist.name, "rung": rung, "fold": fold}
        board.label(trial, work)
        if not board.claim(trial, work):  # another was first
            board.fail(trial)
            return None
        result = train(finalist, rung, fold)
        trial.set_user_attr("result", asdict(result))
    board.tell(trial, result.val_accuracy)
    return result
