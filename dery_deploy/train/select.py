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

The trials live in an Optuna study; a trial is one (finalist, rung, fold). In one process the study is
kept in memory; with `storage` (an SQLite file or a database URL) several processes or machines
running the same selection share it: each claims the next unclaimed trial, the lowest trial number
wins a tie, and a trial whose process died is failed by Optuna's heartbeat and claimed again. No
scheduler of our own. Seam matching (unlabelled images only) is the same for every fold: it is done
once per finalist and rung, and the folds start from its result.
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
HEARTBEAT_S, GRACE_S = 10, 60  # a shared trial's liveness: recorded every 10 s, failed after 60 s without
FOLDS = 5  # k of the k-fold cross-validation the last rung decides on
SCREEN_FOLDS = 1  # folds each rung below the last trains
CV_BELOW = 1000  # validation images under which selection cross-validates by default


@dataclass
class Finalist:
    name: str
    source: dict  # what finetune trains: {"plan": ..., "adapter_weights": ...}
    is_donor: bool
    measured_ms: float | None = None


@dataclass
class Trial:
    """One unit of work: a finalist trained at a rung on one fold's train split, scored on its held-out images."""

    finalist: str
    rung: int
    val_accuracy: float
    correct: str  # "0"/"1" per held-out image, for the paired test
    seconds: float
    worker: str
    fold: int = 0


@dataclass
class Evidence:
    """A finalist at a rung over every fold that rung trains: its accuracy on all their held-out images."""

    finalist: str
    rung: int
    val_accuracy: float  # out of fold, %
    correct: str  # "0"/"1" per held-out image, fold after fold: the same images in the same order for every finalist
    seconds: float
    folds: list[int] = field(default_factory=lambda: [0])
    workers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, trials: list[Trial]) -> Evidence:
        correct = "".join(t.correct for t in trials)
        return cls(
            trials[0].finalist,
            trials[0].rung,
            round(100 * correct.count("1") / max(1, len(correct)), 3),
            correct,
            round(sum(t.seconds for t in trials), 2),
            [t.fold for t in trials],
            sorted({t.worker for t in trials}),
        )


@dataclass
class Selection:
    pick: str  # the finalist's name
    rule: str  # why it was picked, in words
    best_donor: str | None
    best_mix: str | None
    difference: float | None  # best mix - best donor out of fold, points
    noise: float | None  # the threshold the difference had to beat, points
    trials: list[Evidence] = field(default_factory=list)  # per (finalist, rung), pooled over its folds
    study: str = ""
    storage: str = "memory"
    folds: int = 1  # k of the cross-validation the last rung decides on (1: the task's validation split)
    images: int | None = None  # held-out images the pick's comparison rests on
    fold_trials: list[Trial] = field(default_factory=list)  # every (finalist, rung, fold) trained

    def to_dict(self) -> dict:
        return {
            "pick": self.pick,
            "rule": self.rule,
            "best_donor": self.best_donor,
            "best_mix": self.best_mix,
            "difference": self.difference,
            "noise": self.noise,
            "folds": self.folds,
            "images": self.images,
            "study": self.study,
            "storage": self.storage,
            "trials": [t.__dict__ for t in self.trials],
            "fold_trials": [{k: v for k, v in t.__dict__.items() if k != "correct"} for t in self.fold_trials],
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


def default_folds(task: Task) -> int:
    """k-fold (`FOLDS`) where the validation split is small, else the validation split alone."""
    return FOLDS if len(task.val) < CV_BELOW else 1


def rung_folds(rung: int, rungs=RUNGS, folds: int = FOLDS, screen_folds: int = SCREEN_FOLDS) -> list[int]:
    """The folds a rung trains: all of them at the last rung (the pick rests on every labelled image),
    the first `screen_folds` below it (screening)."""
    return list(range(folds if rung == len(rungs) - 1 else min(screen_folds, folds)))


def gather(
    done: dict[tuple[str, int, int], Trial], rungs=RUNGS, folds: int = FOLDS, screen_folds: int = SCREEN_FOLDS
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
            rdb = optuna.storages.RDBStorage(
                storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, engine_kwargs=engine
            )
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
            with alive(study, trial):
                trial.set_user_attr("role", "once")
                if not _claim(study, trial, {"role": "once"}):
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                result = compute()
                trial.set_user_attr("result", result)
            study.tell(trial, 0.0)
            return result


@contextmanager
def alive(study, trial):
    """While a process holds a trial of a shared study, it records the trial's heartbeat every
    `HEARTBEAT_S` (Optuna records one only inside `study.optimize`, and never fails a trial that has
    none): if the process dies, the others fail the trial after `GRACE_S` and claim its work again."""
    import threading

    import optuna

    storage = study._storage
    if isinstance(storage, optuna.storages.InMemoryStorage) or storage.get_heartbeat_interval() is None:
        yield  # one process: nobody to hand the trial to
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(HEARTBEAT_S):
                return

    storage.record_heartbeat(trial._trial_id)  # at once: a process killed before its first beat is stale too
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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


def study_name(
    task: Task,
    finalists: list[Finalist],
    rungs,
    eta: int,
    base: Recipe,
    folds: int = FOLDS,
    screen_folds: int = SCREEN_FOLDS,
) -> str:
    """The Optuna study of one selection: the same on every process that selects among the same
    finalists for the same task, recipe and folds, so they share its trials through `--storage`."""
    key = [task.hash(), [(f.name, identity(f.source)) for f in finalists], list(rungs), eta, base.__dict__]
    if folds != 1:  # a single split keeps the study name it had before cross-validation
        key += [folds, min(screen_folds, folds)]
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
    folds: int | None = None,
    screen_folds: int = SCREEN_FOLDS,
) -> Selection:
    """Successive halving over the finalists, decided by k-fold cross-validation, then the pick
    (module docstring).

    Args:
        folds: k of the cross-validation over train + validation at the last rung; 1 decides on the
            task's own validation split; None: `default_folds(task)`.
        screen_folds: folds each rung below the last trains (at most `folds`).

    Raises:
        DeryError: no finalist, fewer than one fold, or no labelled images to hold out.
    """
    folds = default_folds(task) if folds is None else folds
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
    with _quiet_optuna():
        return _select(finalists, zoo, task, Path(out), base, storage, rungs, eta, log, poll_s, folds, screen_folds)


def _select(finalists, zoo, task, out, base, storage, rungs, eta, log, poll_s, folds, screen_folds) -> Selection:
    from optuna.trial import TrialState

    name = study_name(task, finalists, rungs, eta, base, folds, screen_folds)
    key = name.removeprefix("dery-select-")
    study, where = _open_study(storage, name)
    by_name = {f.name: f for f in finalists}
    worker = f"{socket.gethostname()}:{os.getpid()}"
    fold_tasks: dict[int, Task] = {}
    while True:
        optuna_fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        done = {
            (t.user_attrs["finalist"], t.user_attrs["rung"], t.user_attrs.get("fold", 0)): Trial(
                **t.user_attrs["result"]
            )
            for t in trials
            if t.state == TrialState.COMPLETE and "result" in t.user_attrs
        }
        claimed = {
            (t.user_attrs.get("finalist"), t.user_attrs.get("rung"), t.user_attrs.get("fold", 0))
            for t in trials
            if t.state in (TrialState.RUNNING, TrialState.WAITING)
        }
        evidence = gather(done, rungs, folds, screen_folds)
        work = [
            (n, r, f)
            for n, r in schedule(finalists, evidence, rungs, eta)
            for f in rung_folds(r, rungs, folds, screen_folds)
        ]
        todo = [w for w in work if w not in done and w not in claimed]
        if not todo:
            if not claimed:
                break  # every trial the evidence called for is done
            time.sleep(poll_s)  # others are training what is left
            continue
        fname, rung, fold = todo[0]
        trial = study.ask()
        with alive(study, trial):
            for k, v in (("finalist", fname), ("rung", rung), ("fold", fold)):
                trial.set_user_attr(k, v)
            if not _claim(study, trial, {"finalist": fname, "rung": rung, "fold": fold}):  # another was first
                study.tell(trial, state=TrialState.FAIL)
                continue
            if fold not in fold_tasks:
                fold_tasks[fold] = task if folds == 1 else task.fold(folds, fold)
            tag = "" if folds == 1 else f"-fold{fold}"
            run = out / f"{key}-{sorted(by_name).index(fname):02d}-rung{rung}{tag}"
            result = train_trial(by_name[fname], rung, fold, zoo, fold_tasks[fold], base, rungs, run, folds > 1)
            result.worker = worker
            trial.set_user_attr("result", result.__dict__)
        study.tell(trial, result.val_accuracy)
        if log:
            on = f" fold {fold + 1}/{folds}" if folds > 1 else ""
            log(f"  rung {rung} ({rungs[rung]} epochs){on}: {fname}: held out {result.val_accuracy:.2f}%")
    sel = decide(finalists, evidence, rungs, name, where)
    sel.folds = folds
    sel.fold_trials = sorted(done.values(), key=lambda t: (t.rung, t.finalist, t.fold))
    return sel


def train_trial(
    finalist: Finalist, rung: int, fold: int, zoo, task: Task, base: Recipe, rungs, run: Path, shared_matching: bool
) -> Trial:
    """Train `finalist` with the rung's short recipe on `task` (a fold) and score it on the task's
    validation split. With `shared_matching`, seam matching (unlabelled images only) is done once for
    every fold into a start beside the run folder, and the fold trains from it."""
    t0 = time.time()
    recipe = rung_recipe(base, rung, rungs)
    source = finalist.source
    if shared_matching and recipe.match_epochs and not finalist.is_donor and "plan" in source:
        start = run.with_name(run.name.rsplit("-fold", 1)[0] + f"-matched{recipe.match_epochs}.safetensors")
        source = {**source, "start_weights": str(seam_matched_start(source, zoo, task, recipe, start))}
        recipe = Recipe(**{**recipe.__dict__, "match_epochs": 0})
    finetune(source, zoo, task, recipe, run, force=True, log=None, progress=False, test=False)
    model, _ = load_run_model(run, zoo)
    xv, yv = task.x("val"), task.y("val")
    acc, preds = accuracy(model, xv, yv)
    correct = "".join("1" if c else "0" for c in (preds == yv).tolist())
    return Trial(finalist.name, rung, round(acc, 3), correct, round(time.time() - t0, 2), "", fold)


def seam_matched_start(source: dict, zoo, task: Task, recipe: Recipe, path: Path) -> Path:
    """The network of `source` after `recipe`'s seam matching on `task`'s unlabelled images, saved to
    `path` (whole state, safetensors) unless it is there already; what every fold starts from."""
    if path.is_file():
        return path
    import torch
    from safetensors.torch import save_file

    from dery_deploy.artifacts import atomic_write_with
    from dery_deploy.network.plan import Plan
    from dery_deploy.train.finetune import start_model, train_device
    from dery_deploy.train.heal import match_seams
    from dery_deploy.zoo.load import dissect_zoo

    dev = train_device()
    torch.manual_seed(recipe.seed)
    dis = dissect_zoo(zoo)
    model = start_model(source, zoo, dis, task.num_classes).to(dev)
    plan = Plan.from_dict(source["plan"])
    match_seams(model, plan, dis, task, recipe.match_epochs, recipe.match_images, seed=recipe.seed, device=dev)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(state, str(tmp)))
    return path


def decide(
    finalists: list[Finalist], done: dict[tuple[str, int], Evidence], rungs, study: str, where: str
) -> Selection:
    """The pick from the evidence at the last rung: the best donor unless the best mixed plan beats it
    beyond the noise of their paired difference on the same held-out images."""
    last = len(rungs) - 1
    kinds = {f.name: f.is_donor for f in finalists}

    def best(donor: bool) -> Evidence | None:
        at = [e for (n, r), e in done.items() if r == last and kinds[n] == donor]
        return max(at, key=lambda e: (e.val_accuracy, e.finalist), default=None)

    d, m = best(True), best(False)
    trials = sorted(done.values(), key=lambda e: (e.rung, -e.val_accuracy, e.finalist))
    some = d or m
    if some is None:
        raise DeryError("selection finished without a result at its last rung", "select")
    on = "on validation" if len(some.folds) == 1 else f"out of fold ({len(some.folds)}-fold cross-validation)"
    images = len(some.correct)

    def chosen(pick: str, rule: str, diff: float | None = None, noise: float | None = None) -> Selection:
        names = (d.finalist if d else None, m.finalist if m else None)
        return Selection(pick, rule, *names, diff, noise, trials, study, where, images=images)

    if d is None:
        return chosen(some.finalist, f"no donor fits the budget: the best mixed plan {on}")
    if m is None:
        return chosen(some.finalist, f"no mixed plan is a finalist: the best donor {on}")
    diff, noise = m.val_accuracy - d.val_accuracy, paired_noise(m.correct, d.correct)
    if diff > noise:
        rule = f"the mixed plan beats the best donor {on} by {diff:.2f} points, more than the noise {noise:.2f}"
        return chosen(m.finalist, rule, round(diff, 3), round(noise, 3))
    if abs(diff) < 0.005:
        rule = f"the best donor: the best mixed plan ties it {on}"
    elif diff >= -noise:
        rule = f"the best donor: the best mixed plan differs by {diff:+.2f} points {on}, within the noise {noise:.2f}"
    else:
        rule = f"the best donor: the best mixed plan is {-diff:.2f} points worse {on}"
    return chosen(d.finalist, rule, round(diff, 3), round(noise, 3))
