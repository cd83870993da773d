"""The export report, `report-<format>.json`, and its one writer.

The JSON keys, their order and their values are today's (`to_dict`): the common fields, then the
format's own (`FileRecord`) with an INT8 artifact's record placed where each format has always put it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.export.verdict import BudgetVerdict
from dery_deploy.runtime.harness import Measurement
from dery_deploy.schema import load_dataclass

if TYPE_CHECKING:  # the bundle's module brings torch and the ONNX exporters: only its report's type is needed
    from dery_deploy.export.bundle import BundleReport

# an fp32 / fp16 artifact is held to max |diff| on the parity images; an INT8 one to its top-1 change on
# the test split, which needs the split, what was checked and the tolerance's unit as well
_PARITY_KEYS = ("images", "max_abs_diff", "top1_agreement", "top1_identical", "tolerance", "ok")
_INT8_PARITY_KEYS = (
    "images",
    "split",
    "check",
    "top1_agreement",
    "top1_identical",
    "max_abs_diff",
    "tolerance",
    "tolerance_unit",
    "ok",
)


@dataclass
class Parity:
    """The artifact's outputs against the network's: max |diff| and top-1 agreement on the parity
    images, or for INT8 (`split` set) the top-1 change on the test split, max |diff| only as information."""

    images: int
    max_abs_diff: float
    top1_agreement: float
    top1_identical: bool
    tolerance: float
    ok: bool
    split: str | None = None
    check: str | None = None
    tolerance_unit: str | None = None

    @property
    def of_int8(self) -> bool:
        return self.split is not None

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in (_INT8_PARITY_KEYS if self.of_int8 else _PARITY_KEYS)}


@dataclass
class Calibration:
    images: int
    of: str  # which images: the task's unlabelled ones
    seed: int


@dataclass
class QuantizedOps:
    weighted: int
    quantized: int  # of the weighted ops, those whose weights pass a DequantizeLinear


@dataclass
class Int8Record:
    """How an INT8 artifact was made (the QDQ ONNX's calibration) and the top-1 it measured on the test
    split against the fp32 PyTorch network's; the accuracy is None until it is measured (`measured`)."""

    calibration: Calibration
    quantized_ops: QuantizedOps
    quantize_s: float
    int8_top1: float | None = None
    fp32_top1: float | None = None
    int8_top1_change: float | None = None
    int8_top1_change_se: float | None = None

    def measured(self, top1: float, fp32_top1: float, change: float, change_se: float) -> Int8Record:
        return replace(
            self, int8_top1=top1, fp32_top1=fp32_top1, int8_top1_change=change, int8_top1_change_se=change_se
        )


@dataclass
class FileRecord:
    """What one format's file is (hashes, sizes, build times, the measurement's context): each
    format's own fields, written flat after the common ones."""

    # the field after which an INT8 record's fields are written (None: before them all), as each format
    # has always written them
    INT8_AFTER: ClassVar[str | None] = None

    def to_dict(self, int8: Int8Record | None = None) -> dict[str, object]:
        own = list(asdict(self).items())
        if int8 is None:
            return dict(own)
        at = 0 if self.INT8_AFTER is None else [k for k, _ in own].index(self.INT8_AFTER) + 1
        return dict(own[:at] + list(asdict(int8).items()) + own[at:])


@dataclass
class Timing:
    """The artifact's latency as a user measures it: per-call percentiles over all calls of the run."""

    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_stable: bool | None = None
    latency_noise: float | None = None

    @classmethod
    def of(cls, m: Measurement) -> Timing:
        return cls(
            round(m.promise_at(50), 5),
            round(m.promise_at(90), 5),
            round(m.promise_at(99), 5),
            m.stable,
            round(m.promise_uncertainty_at(50), 4),
        )

    def at(self, percentile: int) -> float | None:
        """The figure at a per-call percentile (50, 90 or 99)."""
        return {50: self.latency_ms, 90: self.latency_p90_ms, 99: self.latency_p99_ms}[percentile]


@dataclass
class ExportReport:
    format: str
    artifact: str
    precision: str
    device: str  # cpu | cuda: where the artifact ran here
    batch: int  # the batch its latency was measured at
    parity: Parity | None = None  # None: the artifact did not run here (written as {})
    timing: Timing | None = None
    latency_backend: str = ""
    budget: BudgetVerdict | None = None
    file: FileRecord | None = None
    int8: Int8Record | None = None
    # the measurement the timing comes from, for the budget check and the package; not written
    measurement: Measurement | None = None

    def to_dict(self) -> dict[str, object]:
        """The report as `report-<format>.json` has it (without `run` and `when`, which `write` adds)."""
        # the format's own fields and the INT8 record, flat
        own = self.file.to_dict(self.int8) if self.file is not None else {} if self.int8 is None else asdict(self.int8)
        return {
            "format": self.format,
            "artifact": self.artifact,
            "precision": self.precision,
            "device": self.device,
            "batch": self.batch,
            "parity": {} if self.parity is None else self.parity.to_dict(),
            **asdict(self.timing or Timing()),
            "latency_backend": self.latency_backend,
            "budget": None if self.budget is None else asdict(self.budget),
            **own,
        }

    def write(self, out: Path, run: Path) -> WrittenReport:
        """Write `out/report-<format>.json`, naming `run` relative to `out`; returns what was written."""
        # relative: the export folder is a package a user copies elsewhere, with no absolute path inside
        rel = os.path.relpath(Path(run).resolve(), out.resolve())
        written = WrittenReport(self, rel, time.strftime("%Y-%m-%dT%H:%M:%S"))
        atomic_write_json(report_path(out, self.format), written.to_dict())
        return written


@dataclass
class WrittenReport:
    """`report-<format>.json` as written: the report, the run it was exported from (relative to the export
    folder) and when."""

    report: ExportReport
    run: str
    when: str

    def to_dict(self) -> dict[str, object]:
        return {**self.report.to_dict(), "run": self.run, "when": self.when}


@dataclass
class ExportRecord:
    """An export as a run records it: what `report-<format>.json` says of the file, typed (the format's
    own fields, hashes and sizes, stay in that file), or why the export failed (`error`)."""

    format: str
    report: str | None = None  # report-<format>.json, in the export folder
    artifact: str | None = None
    precision: str | None = None
    device: str | None = None
    batch: int | None = None
    parity: Parity | None = None  # None: the artifact did not run here
    timing: Timing | None = None
    latency_backend: str | None = None
    budget: BudgetVerdict | None = None
    int8: Int8Record | None = None
    threads: int | None = None  # the runtime's intra-op threads the file was timed with
    reference_ms: float | None = None  # the machine's speed while the file was timed
    other_load_cores: float | None = None  # other processes' CPU use while it was timed
    error: str | None = None

    @classmethod
    def of_report(cls, d: dict) -> ExportRecord:
        """The record of a written report (`ExportReport.write`'s dict), or of a failed export's
        `{"format": ..., "error": ...}`."""
        if "error" in d:
            return cls(d["format"], error=d["error"])
        timing = {f.name: d[f.name] for f in fields(Timing) if f.name in d}
        int8 = {f.name: d[f.name] for f in fields(Int8Record) if f.name in d}
        return cls(
            d["format"],
            report_path(Path("."), d["format"]).name,
            d["artifact"],
            d["precision"],
            d["device"],
            d["batch"],
            load_dataclass(Parity, d["parity"]) if d.get("parity") else None,
            Timing(**timing) if timing else None,
            d.get("latency_backend"),
            BudgetVerdict(**d["budget"]) if d.get("budget") else None,
            load_dataclass(Int8Record, int8) if "calibration" in int8 else None,
            d.get("threads"),
            d.get("reference_ms"),
            d.get("other_load_cores"),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_ms(self) -> float | None:
        return None if self.timing is None else self.timing.latency_ms


def report_path(out: Path, fmt: str) -> Path:
    return Path(out) / f"report-{fmt}.json"


def write_bundle_report(bundle: Path, shipped: BundleReport) -> None:
    """An edge bundle's report (`bundle.jetson_bundle`'s): the engine is built and judged on the device."""
    atomic_write_json(report_path(bundle, "tensorrt"), shipped.to_dict())


def write_budget(path: Path, verdict: BudgetVerdict) -> None:
    """Replace a written report's budget verdict by a later one of the same file (`dery run`'s final pass)."""
    atomic_write_json(path, {**json.loads(Path(path).read_text()), "budget": asdict(verdict)})
