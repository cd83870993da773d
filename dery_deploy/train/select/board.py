"""Where a selection's trials are claimed, held and finished: a `TrialBoard`, in memory for one process
or an Optuna study in a database (an SQLite file or a URL) that several processes or machines running
the same selection share. Each asks for a trial, claims its work (the lowest trial number wins a tie),
keeps it alive with a heartbeat while it trains, and tells the result; a trial whose process died is
failed by Optuna's heartbeat check and its work claimed again. No scheduler of our own.

Only this module touches Optuna; the rest of the selection sees trial numbers, states and attributes.
"""

from __future__ import annotations

import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from dery_deploy.errors import DeryError

HEARTBEAT_S, GRACE_S = 10, 60  # a shared trial's liveness: recorded every 10 s, failed after 60 s without

# a trial's state, as Optuna names them (lower case)
RUNNING, WAITING, COMPLETE, FAIL = "running", "waiting", "complete", "fail"
LIVE = (RUNNING, COMPLETE, WAITING)  # a trial that holds its work: being trained, or done
# written after a trial's work attributes (`TrialBoard.label`): a trial asked but not yet labelled may be
# about to take the same work, and a claim waits for it (`TrialBoard.claim`)
LABELLED = "labelled"


@dataclass(frozen=True)
class Liveness:
    """How often a holder records its heartbeat, and how long after the last one others fail its trial."""

    heartbeat_s: int = HEARTBEAT_S
    grace_s: int = GRACE_S


@dataclass(frozen=True)
class TrialRecord:
    """A trial as every process sees it on the board."""

    number: int
    state: str
    user_attrs: dict[str, Any]


class BoardTrial(Protocol):
    """A trial this process asked for: what it writes its work and result into (Optuna's `Trial` is one)."""

    @property
    def number(self) -> int: ...

    def set_user_attr(self, key: str, value: Any) -> None: ...


class TrialBoard(ABC):
    """The trials of one study, shared or not."""

    where: str  # "memory", or the storage the study lives in (selection.json's `storage`)

    @abstractmethod
    def trials(self) -> list[TrialRecord]:
        """Every trial so far, by number."""

    @abstractmethod
    def ask(self) -> BoardTrial:
        """A new running trial."""

    @abstractmethod
    def tell(self, trial: BoardTrial, value: float) -> None:
        """`trial` finished with `value`."""

    @abstractmethod
    def fail(self, trial: BoardTrial) -> None:
        """`trial` ends without a result (its work was claimed by another)."""

    @abstractmethod
    def fail_stale(self) -> None:
        """Fail the trials whose holder stopped beating."""

    def alive(self, trial: BoardTrial) -> AbstractContextManager[None]:
        """Keep `trial` alive while the block runs; one process has nobody to hand it to."""
        return nullcontext()

    def label(self, trial: BoardTrial, attrs: dict[str, Any]) -> None:
        """Write the work `trial` is for, then mark it labelled (one attribute per write, so the mark is last)."""
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr(LABELLED, True)

    def claim(self, trial: BoardTrial, attrs: dict[str, Any], poll_s: float = 0.1) -> bool:
        """True when `trial` (labelled with `attrs`) is the earliest live or finished trial with these
        attributes: the lowest trial number wins a tie between processes that asked at the same time. A lower
        trial still running unlabelled (asked, its attributes being written) is waited for, up to `label_wait_s`:
        it may be taking the same work. Deciding without it trained one fold twice in a CI run of two processes
        sharing a study: each saw no lower trial with its work, the other's attributes not yet all written."""
        deadline = time.monotonic() + self.label_wait_s
        while True:
            lower = [t for t in self.trials() if t.number < trial.number and t.state in LIVE]
            if any(all(t.user_attrs.get(k) == v for k, v in attrs.items()) for t in lower):
                return False
            pending = [t for t in lower if t.state == RUNNING and not t.user_attrs.get(LABELLED)]
            if not pending or time.monotonic() >= deadline:
                return True
            time.sleep(poll_s)

    @property
    def label_wait_s(self) -> float:
        """How long a claim waits for a lower trial to be labelled: one process labels its own at once."""
        return 0.0


@dataclass
class MemoryTrial:
    number: int
    state: str = RUNNING
    user_attrs: dict[str, Any] = field(default_factory=dict)
    value: float | None = None

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


class MemoryBoard(TrialBoard):
    """One process's trials, in memory."""

    def __init__(self) -> None:
        self.where = "memory"
        self._trials: list[MemoryTrial] = []

    def trials(self) -> list[TrialRecord]:
        return [TrialRecord(t.number, t.state, dict(t.user_attrs)) for t in self._trials]

    def ask(self) -> MemoryTrial:
        self._trials.append(MemoryTrial(len(self._trials)))
        return self._trials[-1]

    def tell(self, trial: BoardTrial, value: float) -> None:
        self._trials[trial.number].state, self._trials[trial.number].value = COMPLETE, value

    def fail(self, trial: BoardTrial) -> None:
        self._trials[trial.number].state = FAIL

    def fail_stale(self) -> None:
        return None  # one process: every trial held is its own


class RdbBoard(TrialBoard):
    """An Optuna study in a database, shared by every process that opens it under the same name."""

    def __init__(self, storage: str, name: str, liveness: Liveness = Liveness()) -> None:
        """Open (or create) the study; two processes creating one SQLite schema or study at once can
        collide, so it retries for a few seconds.

        Raises:
            DeryError: the study cannot be opened.
        """
        import optuna

        self.where, self.liveness = storage, liveness
        engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
        for attempt in range(20):
            try:
                beat, grace = liveness.heartbeat_s, liveness.grace_s
                self.rdb = optuna.storages.RDBStorage(
                    storage, heartbeat_interval=beat, grace_period=grace, engine_kwargs=engine
                )
                self.study = optuna.create_study(
                    study_name=name, storage=self.rdb, direction="maximize", load_if_exists=True
                )
                break
            except Exception as e:  # noqa: BLE001 - sqlalchemy's integrity / operational errors of a concurrent create
                if attempt == 19:
                    raise DeryError(
                        f"cannot open the selection study {name!r} in {storage} ({type(e).__name__}: {e})", "select"
                    ) from None
                time.sleep(0.2 + 0.1 * attempt)
        self.study_id = self.rdb.get_study_id_from_name(name)

    def trials(self) -> list[TrialRecord]:
        return [
            TrialRecord(t.number, t.state.name.lower(), t.user_attrs) for t in self.study.get_trials(deepcopy=False)
        ]

    def ask(self) -> BoardTrial:
        return self.study.ask()

    def tell(self, trial: BoardTrial, value: float) -> None:
        self.study.tell(trial.number, value)

    def fail(self, trial: BoardTrial) -> None:
        from optuna.trial import TrialState

        self.study.tell(trial.number, state=TrialState.FAIL)

    def fail_stale(self) -> None:
        import optuna

        optuna.storages.fail_stale_trials(self.study)

    @property
    def label_wait_s(self) -> float:
        # a holder labels its trial within milliseconds of asking; one that died first is failed after the grace
        return float(self.liveness.grace_s)

    @contextmanager
    def alive(self, trial: BoardTrial) -> Iterator[None]:
        """While this process holds `trial`, it records the trial's heartbeat every `heartbeat_s` (Optuna
        records one only inside `study.optimize`, and never fails a trial that has none): if the process
        dies, the others fail the trial after `grace_s` and claim its work again."""
        if self.rdb.get_heartbeat_interval() is None:
            yield  # no heartbeat configured: nobody fails the trial, so nothing to keep alive
            return
        trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        stop = threading.Event()

        def beat() -> None:
            while True:
                self.rdb.record_heartbeat(trial_id)
                if stop.wait(self.liveness.heartbeat_s):
                    return

        self.rdb.record_heartbeat(trial_id)  # at once: a process killed before its first beat is stale too
        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def open_board(storage: str | None, name: str, liveness: Liveness = Liveness()) -> TrialBoard:
    """The study `name`: in memory without `storage`, else shared through it."""
    return MemoryBoard() if storage is None else RdbBoard(storage, name, liveness)


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's notices are for its developers, not our users: the heartbeat is "experimental" and a
    stale trial "failed by heartbeat" is our recovery working as designed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*heartbeat.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
        yield


def shared_once(
    storage: str | None, name: str, compute: Callable[[], Any], poll_s: float = 1.0, liveness: Liveness = Liveness()
) -> Any:
    """`compute()` (a JSON-serialisable result) done once for every process that shares `storage`
    under `name`: the first to claim it computes and stores it in the study, the others wait and
    read it; if the claiming process dies, Optuna's heartbeat fails its trial and another claims it.
    Without storage, simply `compute()`."""
    if storage is None:
        return compute()
    with quiet_optuna():
        board = RdbBoard(storage, name, liveness)
        while True:
            board.fail_stale()
            trials = board.trials()
            done = [t for t in trials if t.state == COMPLETE and "result" in t.user_attrs]
            if done:
                return min(done, key=lambda t: t.number).user_attrs["result"]
            if any(t.state in (RUNNING, WAITING) for t in trials):
                time.sleep(poll_s)  # another process is computing it
                continue
            trial = board.ask()
            with board.alive(trial):
                board.label(trial, {"role": "once"})
                if not board.claim(trial, {"role": "once"}):
                    board.fail(trial)
                    continue
                result = compute()
                trial.set_user_attr("result", result)
            board.tell(trial, 0.0)
            return result
