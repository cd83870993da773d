"""The small base every exporter shares, and the one table of formats they register in.

An exporter declares what `dery export --format <name>` makes: the runtime backend that runs its file
(`runtime.backends`, the plan's `backend`), the precisions it exports and its artifact's file name; its
`export` writes the file, checks its outputs and times it, and returns the report. Heavy libraries
(onnx, OpenVINO, TensorRT, safetensors) are imported inside `export`, so the table loads anywhere.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.export.report import ExportReport
from dery_deploy.network.plan import Plan
from dery_deploy.runtime.devices import DeviceSpec


@dataclass
class ExportJob:
    """What an exporter is given: the network, its parity images, and how and where the file ships."""

    model: nn.Module
    x: torch.Tensor  # the parity images (the task's first test images)
    out: Path
    precision: str
    batch: int  # the plan's: what the file is timed and judged at
    threads: int | None
    percentile: int  # of single calls, the budget's promise
    task: Task
    seed: int
    spec: DeviceSpec | None  # the device asked for, or the plan's
    plan: Plan | None = None  # the plan the file is held to (its budget); None: a run without one

    @property
    def shape(self) -> tuple[int, ...]:
        """The input the file is timed with: the plan's batch of one image's shape."""
        return (self.batch, *self.x.shape[1:])


class Exporter(abc.ABC):
    name: ClassVar[str]
    # the runtime backend that runs the file, as a plan names it (None: no profiling backend does)
    backend: ClassVar[str | None] = None
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    artifact_name: ClassVar[str]
    # where `--format` lists it (in its help and errors): the CPU runtimes first
    order: ClassVar[int]
    # a package (deploy.json beside the file) is written for it
    packaged: ClassVar[bool] = True

    @classmethod
    def artifact(cls, precision: str) -> str:
        """The file the export writes, and will not overwrite without --force."""
        return cls.artifact_name.replace(".", "-int8.") if precision == "int8" else cls.artifact_name

    def refuse(self, spec: DeviceSpec | None) -> None:  # noqa: B027 - a check most formats do not need
        """Raise a DeryError where this format cannot be made here for `spec`, before any file is written."""

    @abc.abstractmethod
    def export(self, job: ExportJob) -> ExportReport:
        """Write the file into `job.out`, check its outputs against the network's and time it."""

    def shipped_top1(self, rep: ExportReport, out: Path, task: Task, threads: int | None) -> float | None:
        """The artifact's own test top-1 (%): measured by the INT8 check, else None (an fp32 / fp16 file's
        parity is what is checked)."""
        return rep.int8.int8_top1 if rep.precision == "int8" and rep.int8 is not None else None


EXPORTERS: dict[str, type[Exporter]] = {}


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: add an exporter to the table, under its `name`."""
    assert cls.name not in EXPORTERS, f"two exporters for {cls.name!r}"
    EXPORTERS[cls.name] = cls
    return cls


def formats() -> tuple[str, ...]:
    """The registered formats, in the order `--format` lists them."""
    return tuple(sorted(EXPORTERS, key=lambda f: EXPORTERS[f].order))


def get_exporter(fmt: str) -> Exporter:
    if fmt not in EXPORTERS:
        raise DeryError(f"--format must be one of {', '.join(formats())}, got {fmt!r}", "export")
    return EXPORTERS[fmt]()
