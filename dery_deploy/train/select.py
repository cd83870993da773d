"""Selection by evidence: the measured finalists are trained briefly with successive halving and
compared on the task's validation split; the test split never decides anything.

Rungs train every surviving finalist from its start for more epochs each time (`RUNGS`); after each
rung the best 1/ETA go on, and the best whole donor and the best mixed plan always do, so the last
rung compares them directly. The pick is the best donor unless the best mixed plan beats it on
validation by more than the validation noise: twice the standard error of the paired accuracy
difference on the same validation images, sqrt(b + c - (b - c)^2 / n) / n with b, c the images only
one of the two gets right (a McNemar-style paired test at about 95%).

The trials live in an Optuna study. In one process it is kept in memory; with `storage` (an SQLite
file or a database URL) several processes or machines running the same selection share it: each
claims the next unclaimed (finalist, rung), the lowest trial number wins a tie, and a trial whose
process died is failed by Optuna's heartbeat and claimed again. No scheduler of our own.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dery_deploy.artifacts import sha256_json
from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.train.finetune import accuracy, finetune, load_run_model
from dery_deploy.train.recipe import Recipe

RUNGS = (1, 2, 4)  # epochs of end-to-end training at each rung
ETA = 2


@dataclass
class Finalist:
    name: str
    source: dict  # what finetune trains: {"plan": ..., "adapter_weights": ...}
    is_donor: bool
    measured_ms: float | None = None


@dataclass
class Trial:
    finalist: str
    rung: int
    val_accuracy: float
    correct: str  # "0"/"1" per validation image, for the paired test
    seconds: float
    worker: str


@dataclass
class Selection:
    pick: str  # the finalist's name
    rule: str  # why it was picked, in words
    best_donor: str | None
    best_mix: str | None
    difference: float | None  # best mix - best donor on validation, points
    noise: float | None  # the threshold the difference had to beat, points
    trials: list[Trial] = field(default_factory=list)
    study: str = ""
    storage: str = "memory"

    def to_dict(self) -> dict:
        return {
            "pick": self.pick,
            "rule": self.rule,
            "best_donor": self.best_donor,
            "best_mix": self.best_mix,
            "difference": self.difference,
            "noise": self.noise,
            "study": self.study,
            "storage": self.storage,
            "trials": [t.__dict__ for t in self.trials],
        }


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


def paired_noise(a: str, b: str) -> float:
    """Twice the standard error (points) of the accuracy difference of two models on the same images."""
    n = len(a)
    only_a = sum(1 for x, y in zip(a, b) if x == "1" and y == "0")
    only_b = sum(1 for x, y in zip(a, b) if x == "0" and y == "1")
    var = only_a + only_b - (only_a - only_b) ** 2 / n
    return 2 * 100 * math.sqrt(max(var, 0.0)) / n


def schedule(
    finalists: list[Finalist], done: dict[tuple[str, int], Trial], rungs=RUNGS, eta: int = ETA
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


@contextmanager
def _quiet_optuna():
    """Optuna's notices are for its developers, not our users: the heartbeat is "experimental" and a
    stale trial "failed by heartbeat" is our recovery working as designed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*heartbeat.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
        yield


def _open_study(storage: str | None, name: str):
    import optuna

    if storage is None:
        return optuna.create_study(study_name=name, direction="maximize"), "memory"
    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
    for attempt in range(20):  # two processes creating one SQLite schema or study at once can collide: retry
        try:
            rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=10, grace_period=60, engine_kwargs=engine)
            return optuna.create_study(study_name=name, storage=rdb, direction="maximize", load_if_exists=True), storage
        except Exception as e:  # noqa: BLE001 - sqlalchemy's integrity / operational errors of a concurrent create
            if attempt == 19:
                raise DeryError(
                    f"cannot open the selection study {name!r} in {storage} ({type(e).__name__}: {e})", "select"
                ) from None
            time.sleep(0.2 + 0.1 * attempt)


def _claim(study, trial, attrs: dict) -> bool:
    """True when `trial` is the earliest live or finished trial with these attributes: the lowest
    trial number wins a tie between processes that asked at the same time."""
    from optuna.trial import TrialState

    live = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.WAITING)
    return not any(
        t.number < trial.number and t.state in live and all(t.user_attrs.get(k) == v for k, v in attrs.items())
        for t in study.get_trials(deepcopy=False)
    )


def shared_once(storage: str | None, name: str, compute: Callable[[], Any], poll_s: float = 1.0) -> Any:
    """`compute()` (a JSON-serialisable result) done once for every process that shares `storage`
    under `name`: the first to claim it computes and stores it in the study, the others wait and
    read it; if the claiming process dies, Optuna's heartbeat fails its trial and another claims it.
    Without storage, simply `compute()`."""
    if storage is None:
        return compute()
    from optuna.trial import TrialState

    with _quiet_optuna():
        study, _ = _open_study(storage, name)
        while True:
            optuna_fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            done = sorted(
                (t for t in trials if t.state == TrialState.COMPLETE and "result" in t.user_attrs),
                key=lambda t: t.number,
            )
            if done:
                return done[0].user_attrs["result"]
            if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
                time.sleep(poll_s)  # another process is computing it
                continue
            trial = study.ask()
            trial.set_user_attr("role", "once")
            if not _claim(study, trial, {"role": "once"}):
                study.tell(trial, state=TrialState.FAIL)
                continue
            result = compute()
            trial.set_user_attr("result", result)
            study.tell(trial, 0.0)
            return result


def optuna_fail_stale(study) -> None:
    import optuna

    if not isinstance(study._storage, optuna.storages.InMemoryStorage):
        optuna.storages.fail_stale_trials(study)


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


def identity(source: dict) -> dict:
    out = {k: v for k, v in source.items() if k not in _VOLATILE}
    if isinstance(out.get("plan"), dict):
        out["plan"] = identity(out["plan"])
    return out


def study_name(task: Task, finalists: list[Finalist], rungs, eta: int, base: Recipe) -> str:
    """The Optuna study of one selection: the same on every process that selects among the same
    finalists for the same task and recipe, so they share its trials through `--storage`."""
    key = [task.hash(), [(f.name, identity(f.source)) for f in finalists], list(rungs), eta, base.__dict__]
    return f"dery-select-{sha256_json(key)[:12]}"


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
) -> Selection:
    """Successive halving over the finalists on the validation split, then the pick (module docstring)."""
    with _quiet_optuna():
        return _select(finalists, zoo, task, out, base, storage, rungs, eta, log, poll_s)


def _select(finalists, zoo, task, out, base, storage, rungs, eta, log, poll_s) -> Selection:
    from optuna.trial import TrialState

    if len(task.val) == 0:
        raise DeryError("selection needs a validation split; the task has none (add labelled images)", "select")
    if not finalists:
        raise DeryError("no finalist to select from", "select")
    name = study_name(task, finalists, rungs, eta, base)
    key = name.removeprefix("dery-select-")
    study, where = _open_study(storage, name)
    by_name = {f.name: f for f in finalists}
    worker = f"{socket.gethostname()}:{os.getpid()}"
    xv, yv = task.x("val"), task.y("val")
    while True:
        optuna_fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        done = {
            (t.user_attrs["finalist"], t.user_attrs["rung"]): Trial(**t.user_attrs["result"])
            for t in trials
            if t.state == TrialState.COMPLETE and "result" in t.user_attrs
        }
        claimed = {
            (t.user_attrs.get("finalist"), t.user_attrs.get("rung"))
            for t in trials
            if t.state in (TrialState.RUNNING, TrialState.WAITING)
        }
        work = schedule(finalists, done, rungs, eta)
        todo = [w for w in work if w not in done and w not in claimed]
        if not todo:
            if not claimed:
                break  # every rung the evidence called for is done
            time.sleep(poll_s)  # others are training what is left
            continue
        fname, rung = todo[0]
        trial = study.ask()
        trial.set_user_attr("finalist", fname)
        trial.set_user_attr("rung", rung)
        if not _claim(study, trial, {"finalist": fname, "rung": rung}):  # another process claimed it first
            study.tell(trial, state=TrialState.FAIL)
            continue
        t0 = time.time()
        run = Path(out) / f"{key}-{sorted(by_name).index(fname):02d}-rung{rung}"
        recipe = rung_recipe(base, rung, rungs)
        finetune(by_name[fname].source, zoo, task, recipe, run, force=True, log=None, progress=False, test=False)
        model, _ = load_run_model(run, zoo)
        acc, preds = accuracy(model, xv, yv)
        result = Trial(
            fname,
            rung,
            round(acc, 3),
            "".join("1" if c else "0" for c in (preds == yv).tolist()),
            round(time.time() - t0, 2),
            worker,
        )
        trial.set_user_attr("result", result.__dict__)
        study.tell(trial, acc)
        if log:
            log(f"  rung {rung} ({rungs[rung]} epochs): {fname}: validation {acc:.2f}%")
    return decide(finalists, done, rungs, name, where)


def decide(finalists: list[Finalist], done: dict[tuple[str, int], Trial], rungs, study: str, where: str) -> Selection:
    """The pick from the evidence: the best donor unless the best mixed plan beats it beyond the noise."""
    last = len(rungs) - 1

    kinds = {f.name: f.is_donor for f in finalists}

    def best(donor: bool) -> Trial | None:
        at = [t for (n, r), t in done.items() if r == last and kinds[n] == donor]
        return max(at, key=lambda t: (t.val_accuracy, t.finalist), default=None)

    d, m = best(True), best(False)
    trials = sorted(done.values(), key=lambda t: (t.rung, -t.val_accuracy))
    if d is None and m is None:
        raise DeryError("selection finished without a result at its last rung", "select")
    if d is None:
        return Selection(
            m.finalist,
            "no donor fits the budget: the best mixed plan on validation",
            None,
            m.finalist,
            None,
            None,
            trials,
            study,
            where,
        )
    if m is None:
        return Selection(
            d.finalist,
            "no mixed plan is a finalist: the best donor on validation",
            d.finalist,
            None,
            None,
            None,
            trials,
            study,
            where,
        )
    diff, noise = m.val_accuracy - d.val_accuracy, paired_noise(m.correct, d.correct)
    if diff > noise:
        rule = (
            f"the mixed plan beats the best donor on validation by {diff:.2f} points, more than the noise {noise:.2f}"
        )
        return Selection(
            m.finalist, rule, d.finalist, m.finalist, round(diff, 3), round(noise, 3), trials, study, where
        )
    if abs(diff) < 0.005:
        rule = "the best donor: the best mixed plan ties it on validation"
    elif diff >= -noise:
        rule = (
            f"the best donor: the best mixed plan differs by {diff:+.2f} points on validation, "
            f"within the noise {noise:.2f}"
        )
    else:
        rule = f"the best donor: the best mixed plan is {-diff:.2f} points worse on validation"
    return Selection(d.finalist, rule, d.finalist, m.finalist, round(diff, 3), round(noise, 3), trials, study, where)
