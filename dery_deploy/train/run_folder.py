"""A fine-tune's run folder and what it holds: config.json (what the run trains), checkpoint.safetensors
(after every epoch), phase1.safetensors (the network as phase 1 left it), history.json and metrics.json
(once finished). `RunFolder.state` says what a new call finds there: nothing to resume, a finished run,
a checkpoint to resume, or another run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from dery_deploy.artifacts import read_json_artifact
from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.network.plan import Plan
from dery_deploy.schema import load_dataclass
from dery_deploy.train.checkpoint import Checkpoint, load_checkpoint
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.results import EpochRecord, SeamEpoch
from dery_deploy.train.source import FinetuneSource
from dery_deploy.train.teacher import Teacher, TeacherSummary

SCHEMA = 3
KIND = "finetune-run"
PHASE1_WEIGHTS = "phase1.safetensors"
# what a forced run removes of the run it replaces
RUN_FILES = ("checkpoint.safetensors", PHASE1_WEIGHTS, "metrics.json", "history.json", "evaluation.json")


@dataclass
class RunConfig:
    """config.json: what a run trains, on what data, with which recipe. Two calls with the same
    config (the number of processes aside) are the same run."""

    source: FinetuneSource
    zoo: str
    zoo_ref: str
    zoo_hash: str
    data: str
    task_hash: str
    num_classes: int
    classes: list[str]
    recipe: dict  # the Recipe's fields as trained (`asdict`)
    teacher: TeacherSummary | None
    world_size: int

    @classmethod
    def of(
        cls, source: FinetuneSource, zoo, task: Task, recipe: Recipe, world: int, teacher: Teacher | None
    ) -> RunConfig:
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

    @property
    def plan(self) -> Plan | None:
        """The plan the run trains (None for a donor's run)."""
        return self.source.plan

    @property
    def seed(self) -> int:
        """The recipe's seed (that of the task's split and of the calibration images too)."""
        return self.recipe.get("seed", 0)

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "kind": KIND, **{k: getattr(self, k) for k in self.__dataclass_fields__}}
        d["source"] = self.source.to_dict()
        d["teacher"] = self.teacher.to_dict() if self.teacher is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """config.json's content (its schema and kind as checked by `read`); a TypeError names what it lacks
        or has beyond a config, a DeryError a source that is neither a plan's nor a donor's."""
        rest = {k: v for k, v in d.items() if k not in ("schema", "kind", "source")}
        if "source" not in d:
            raise TypeError("RunConfig has no source")
        # the source reads itself (load_dataclass would build it field by field, its plan unchecked)
        return replace(load_dataclass(cls, {**rest, "source": None}), source=FinetuneSource.from_dict(d["source"]))

    @classmethod
    def read(cls, run: Path) -> RunConfig:
        """A run folder's config.json; a DeryError where it is missing, or of another kind or schema."""
        return cls.from_dict(read_json_artifact(Path(run) / "config.json", KIND, SCHEMA, "finetune"))

    def same_as(self, old: RunConfig | None) -> bool:
        """Whether a folder's config.json describes this run: DDP with N processes trains the same
        network as one process, so the number of processes does not count."""
        return old is not None and replace(old, world_size=self.world_size) == self


@dataclass(frozen=True)
class FinetuneMetrics:
    """metrics.json: what a finished run reports, in the order it is written."""

    val_accuracy: float | None
    # "end to end", or why the network as phase 1 left it ships; None (and not written) only as read from
    # a metrics.json made before the better of the two was kept (2026-11-28)
    kept: str | None
    test_accuracy: float | None
    phase1_val_accuracy: float | None
    phase1_test_accuracy: float | None
    phase1_epochs: int
    probe_train_accuracy: float | None
    seam_matching: list[SeamEpoch]
    epochs: int
    history: list[EpochRecord]
    device: str
    params_m: float
    world_size: int
    train_seconds: float

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["seam_matching"] = [s.to_dict() for s in self.seam_matching]
        d["history"] = [h.to_dict() for h in self.history]
        if self.kept is None:
            del d["kept"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneMetrics:
        return load_dataclass(cls, {"kept": None, **d})

    @classmethod
    def read(cls, path: Path) -> FinetuneMetrics:
        """A run folder's metrics.json."""
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class Fresh:
    """Nothing to resume: train from the start."""


@dataclass
class Finished:
    """The same run, finished: its metrics.json as written."""

    metrics: FinetuneMetrics


@dataclass
class Resume:
    """The same run, stopped after an epoch: its last checkpoint."""

    checkpoint: Checkpoint = field(repr=False)


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
        if not cfg.same_as(self.config()):
            return Conflict()
        if (run / "metrics.json").is_file():
            return Finished(FinetuneMetrics.read(run / "metrics.json"))
        if resume and (run / "checkpoint.safetensors").is_file():
            return Resume(load_checkpoint(run))
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

    def config(self) -> RunConfig | None:
        """The folder's config.json, or None where there is none (or it is unreadable, or no config)."""
        try:
            return RunConfig.read(self.path) if (self.path / "config.json").is_file() else None
        except (DeryError, TypeError):
            return None
