"""The CPU formats made from the network's ONNX: the ONNX file itself (ONNX Runtime) and OpenVINO IR.

Both ship fp32 or the QDQ INT8 ONNX (`export.checks`), and both are timed as they run where they ship:
in a measurement worker (`runtime.worker`) that times nothing else but the machine's reference workload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dery_deploy.artifacts import sha256_file
from dery_deploy.data.task import Task
from dery_deploy.export.checks import checked_outputs, exported_onnx
from dery_deploy.export.formats.base import Exporter, ExportJob, register_exporter
from dery_deploy.export.report import ExportReport, FileRecord, Timing
from dery_deploy.runtime.calibration import REFERENCE_KEY, reference_item
from dery_deploy.runtime.evaluate import artifact_accuracy, artifact_runner
from dery_deploy.runtime.harness import Measurement, TimingOptions
from dery_deploy.runtime.onnx import OPSET, save_onnx
from dery_deploy.runtime.worker import FileItem, measure_files


@dataclass
class OnnxFile(FileRecord):
    threads: int | None
    sha256: str
    bytes: int
    opset: int
    dynamic_batch: bool
    export_s: float
    reference_ms: float  # the machine's speed while the file was timed
    other_load_cores: float | None  # other processes' CPU use while it was timed


@dataclass
class OpenVinoFile(FileRecord):
    threads: int | None
    weights: str
    sha256: str
    weights_sha256: str
    bytes: int
    dynamic_batch: bool
    export_s: float
    reference_ms: float
    other_load_cores: float | None


def measure_artifact(
    path: Path, runtime: str, threads: int | None, shape: tuple[int, ...], percentile: int
) -> tuple[Measurement, float, float | None]:
    """The shipped file timed in a measurement worker beside the machine's reference workload: returns
    its measurement, the reference's median and other processes' CPU use meanwhile."""
    n = threads or torch.get_num_threads()
    # the reference lands beside the artifact: the package ships it, for `dery bench` to time too
    items = [
        FileItem("artifact", str(path), runtime, n, [int(v) for v in shape]),
        reference_item(path.parent, runtime, n),
    ]
    res = measure_files(items, TimingOptions.for_budget(percentile))
    reference_ms = round(res.measurements[REFERENCE_KEY].promise_at(50), 5)
    return res.measurements["artifact"], reference_ms, res.summary.other_load_cores


class OnnxFamily(Exporter):
    precisions = ("fp32", "int8")

    def shipped_top1(self, rep: ExportReport, out: Path, task: Task, threads: int | None) -> float | None:
        """Also an fp32 file's: it is run here on the test split by its own runtime."""
        if rep.precision == "int8":
            return super().shipped_top1(rep, out, task, threads)
        assert self.backend is not None
        return round(artifact_accuracy(out / rep.artifact, task, "test", self.backend, threads)[0], 3)


@register_exporter
class OnnxExporter(OnnxFamily):
    """model.onnx (fp32) or model-int8.onnx (QDQ INT8), run by ONNX Runtime on the CPU."""

    name = "onnx"
    backend = "onnxruntime"
    artifact_name = "model.onnx"
    order = 0

    def export(self, job: ExportJob) -> ExportReport:
        import onnx
        import onnxruntime

        t0 = time.perf_counter()
        data, int8 = exported_onnx(job.model, job.x, job.precision, job.task, job.seed)
        path = save_onnx(data, job.out / self.artifact(job.precision))
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        logits = artifact_runner(data, "onnxruntime", job.threads)
        par, int8 = checked_outputs(job.model, logits, job.x, job.precision, job.task, int8)
        m, reference_ms, load = measure_artifact(path, "onnxruntime", job.threads, job.shape, job.percentile)
        threads = job.threads or "default"
        return ExportReport(
            "onnx",
            path.name,
            job.precision,
            "cpu",
            job.batch,
            par,
            Timing.of(m),
            latency_backend=f"onnxruntime {onnxruntime.__version__} CPU EP, batch {job.batch}, {threads} threads",
            file=OnnxFile(
                job.threads,
                sha256_file(path),
                path.stat().st_size,
                OPSET,
                True,
                round(time.perf_counter() - t0, 2),
                reference_ms,
                load,
            ),
            int8=int8,
            measurement=m,
        )


@register_exporter
class OpenVinoExporter(OnnxFamily):
    """OpenVINO IR: model.xml + model.bin (fp32) or model-int8.xml + .bin (from the QDQ INT8 ONNX),
    saved and timed at the plan's batch (`runtime.openvino`)."""

    name = "openvino"
    backend = "openvino"
    artifact_name = "model.xml"
    order = 1

    def export(self, job: ExportJob) -> ExportReport:
        from dery_deploy.runtime.openvino import import_openvino, save_ir

        ov = import_openvino()
        t0 = time.perf_counter()
        data, int8 = exported_onnx(job.model, job.x, job.precision, job.task, job.seed)
        # the plan's batch saved static: a plain compile_model of the shipped file runs the measured shape
        xml = save_ir(data, job.out / self.artifact(job.precision), batch=job.batch)
        logits = artifact_runner(xml, "openvino", job.threads)  # the IR as shipped, for any batch
        par, int8 = checked_outputs(job.model, logits, job.x, job.precision, job.task, int8)
        m, reference_ms, load = measure_artifact(xml, "openvino", job.threads, job.shape, job.percentile)
        weights = xml.with_suffix(".bin")
        return ExportReport(
            "openvino",
            xml.name,
            job.precision,
            "cpu",
            job.batch,
            par,
            Timing.of(m),
            latency_backend=(
                f"OpenVINO {ov.__version__.split('-')[0]} CPU, compiled for batch {job.batch}, "
                f"{job.threads or 'default'} threads, f32 inference precision"
            ),
            file=OpenVinoFile(
                job.threads,
                weights.name,
                sha256_file(xml),
                sha256_file(weights),
                xml.stat().st_size + weights.stat().st_size,
                False,
                round(time.perf_counter() - t0, 2),
                reference_ms,
                load,
            ),
            int8=int8,
            measurement=m,
        )
