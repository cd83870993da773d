"""A fine-tune's run folder and what it holds: config.json (what the run trains), checkpoint.safetensors
(after every epoch), phase1.safetensors (the network as phase 1 left it), history.json and metrics.json
(once finished). `RunFolder.state` says what a new call finds there: nothing to resume, a finished run,
a checkpoint to resume, or another run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dery_deploy.artifacts import read_json_artifact
from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.train.checkpoint import load_checkpoint
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.teacher import Teacher

SCHEMA = 3
KIND = "finetune-run"
PHASE1_WEIGHTS = "phase1.safetensors"
# what a forced run removes of the run it replaces
RUN_FILES = ("checkpoint.safetensors", PHASE1_WEIGHTS, "metrics.json", "history.json", "evaluation.json")


@dataclass
class RunConfig:
    """config.json: what a run trains, on what data, with which recipe. Two calls with the same
    config (the number of processes aside) are the same run."""

    source: dict
    zoo: str
    zoo_ref: str
    zoo_hash: str
    data: str
    task_hash: str
    num_classes: int
    classes: list[str]
    recipe: dict
    teacher: dict | None
    world_size: int

    @classmethod
    def of(cls, source: dict, zoo, task: Task, recipe: Recipe, world: int, teacher: Teacher | None) -> RunConfig:
        return cls(
            source=source,
            zoo=zoo.name,
            zoo_ref=zoo.ref,
            zoo_hash=zoo.hash(),
            data=task.spec,
            task_hash=task.hash(),
            num_classes=task.num_classes,
            classes=task.classes,
            recipe=asdict(recipe),
            teacher=teacher.describe() if teacher else None,
            world_size=world,
        )

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "kind": KIND, **{k: getattr(self, k) for k in self.__dataclass_fields__}}

    def same_as(self, old: dict | None) -> bool:
        """Whether a folder's config.json describes this run: DDP with N processes trains the same
        network as one process, so the number of processes does not count."""
        new = self.to_dict()
        drop = ("world_size",)
        return old is not None and {k: v for k, v in old.items() if k not in drop} == {
            k: v for k, v in new.items() if k not in drop
        }


@dataclass
class EpochRecord:
    """One epoch of history.json. The optional fields are written only when set: `distill_loss` when
    the recipe distils, `plateau` when phase 1 ended here early, `val_acc` (and with `eval_phase1`
    `test_acc`) on the epoch that ended phase 1."""

    epoch: int
    phase: int
    loss: float
    train_acc: float
    seconds: float
    distill_loss: float | None = None
    plateau: bool = False
    val_acc: float | None = None
    test_acc: float | None = None
    # (mean loss, train accuracy %) before rounding, for the log line; not written
    exact: tuple[float, float] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("epoch", "phase", "loss", "train_acc", "seconds")}
        optional = {
            "distill_loss": self.distill_loss,
            "plateau": True if self.plateau else None,
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
        }
        return d | {k: v for k, v in optional.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> EpochRecord:
        return cls(**d)


@dataclass
class CheckpointMeta:
    """What a checkpoint carries besides the weights: where the run stands, to resume it."""

    epoch: int
    phase: int
    history: list[EpochRecord]
    config: dict
    phase1_done: bool
    probe_acc: float | None
    seam_matching: list[dict]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["history"] = [h.to_dict() for h in self.history]
        return d


@dataclass
class FinetuneMetrics:
    """metrics.json: what a finished run reports, in the order it is written."""

    val_accuracy: float | None
    kept: str  # "end to end", or why the network as phase 1 left it ships
    test_accuracy: float | None
    phase1_val_accuracy: float | None
    phase1_test_accuracy: float | None
    phase1_epochs: int
    probe_train_accuracy: float | None
    seam_matching: list[dict]
    epochs: int
    history: list[EpochRecord]
    device: str
    params_m: float
    world_size: int
    train_seconds: float

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["history"] = [h.to_dict() for h in self.history]
        return d


@dataclass
class Fresh:
    """Nothing to resume: train from the start."""


@dataclass
class Finished:
    """The same run, finished: its metrics.json as written."""

    metrics: dict


@dataclass
class Resume:
    """The same run, stopped after an epoch: its last checkpoint."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor]
    meta: dict = field(repr=False)

    @property
    def history(self) -> list[EpochRecord]:
        return [EpochRecord.from_dict(h) for h in self.meta["history"]]


@dataclass
class Conflict:
    """The folder holds another run (or something that is not a run)."""


RunState = Fresh | Finished | Resume | Conflict


@dataclass
class RunFolder:
    path: Path

    def state(self, cfg: RunConfig, resume: bool = True) -> RunState:
        """What the folder holds for a run of `cfg`; `resume=False` ignores a checkpoint of the same run."""
        run = self.path
        if run.exists() and not run.is_dir():
            raise DeryError(f"{run} is a file, not a run folder: choose another -o", "finetune")
        if not (run.exists() and any(run.iterdir())):
            return Fresh()
        if not cfg.same_as(self._config()):
            return Conflict()
        if (run / "metrics.json").is_file():
            return Finished(json.loads((run / "metrics.json").read_text()))
        if resume and (run / "checkpoint.safetensors").is_file():
            return Resume(*load_checkpoint(run))
        return Fresh()

    def clear(self) -> None:
        """Remove another run's results (a forced run replaces it); config.json is rewritten later."""
        for f in RUN_FILES:
            (self.path / f).unlink(missing_ok=True)

    def refuse(self) -> DeryError:
        return DeryError(
            f"output directory {self.path} exists and holds another run; "
            "pass --force to overwrite it or choose a new -o",
            "finetune",
        )

    def _config(self) -> dict | None:
        """The folder's config.json, or None where there is none (or it is unreadable)."""
        cfg_path = self.path / "config.json"
        try:
            return read_json_artifact(cfg_path, KIND, SCHEMA, "finetune") if cfg_path.is_file() else None
        except DeryError:
            return None
