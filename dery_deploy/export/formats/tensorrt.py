"""TensorRT engines (`model.engine`), built here for this machine's GPU and TensorRT version (a Jetson's
engine is built on the Jetson: `dery export --bundle`, `export.bundle`), with a sidecar,
`model.engine.json`, saying what the builder was asked."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from dery_deploy.artifacts import atomic_write_bytes, atomic_write_json, sha256_file
from dery_deploy.errors import DeryError
from dery_deploy.export.checks import FP16_TOL, int8_accuracy, int8_onnx, parity
from dery_deploy.export.formats.base import Exporter, ExportJob, register_exporter
from dery_deploy.export.report import ExportReport, FileRecord, Int8Record, Parity, Timing
from dery_deploy.runtime.devices import DeviceSpec
from dery_deploy.runtime.harness import TimingOptions, measure
from dery_deploy.runtime.onnx import save_onnx

SIDECAR = "model.engine.json"
Shapes = tuple[list[int], list[int], list[int]]  # min, opt, max


@dataclass
class EngineSidecar:
    """What the engine was built with and for: `model.engine.json`, also written into the report."""

    tensorrt: str
    gpu: str
    precision: str
    input: str
    output: str
    min_shape: list[int]
    opt_shape: list[int]
    max_shape: list[int]
    sha256: str


@dataclass
class EngineFile(FileRecord):
    INT8_AFTER = "sha256"

    sidecar: str
    tensorrt: str
    gpu: str
    precision: str
    input: str
    output: str
    min_shape: list[int]
    opt_shape: list[int]
    max_shape: list[int]
    sha256: str
    build_s: float


def _shapes(x: torch.Tensor, batch: int, top: int) -> Shapes:
    """The engine's input shapes: from one image up to `top`, tuned for the plan's `batch`."""
    return [1, *x.shape[1:]], [batch, *x.shape[1:]], [top, *x.shape[1:]]


def tensorrt_engine(
    model: nn.Module, x: torch.Tensor, precision: str, batch: int, max_batch: int = 32
) -> tuple[bytes, float, bytes, dict[str, list[int]]]:
    """The plan's engine: tuned for the plan's `batch` (what it is timed and judged at), accepting 1 up to
    the parity images and `max_batch`. Returns (engine, build seconds, its ONNX, the shapes it was built for)."""
    from dery_deploy.runtime.tensorrt import engine_from_module

    top = max(max_batch, x.shape[0], batch)
    engine, build_s, onnx_bytes = engine_from_module(model, x[:1], precision, max_batch=top, opt_batch=batch)
    shapes = dict(zip(("min_shape", "opt_shape", "max_shape"), _shapes(x, batch, top)))
    return engine, build_s, onnx_bytes, shapes


def _batch_of(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x[:batch].contiguous() if x.shape[0] >= batch else x[:1].expand(batch, *x.shape[1:]).contiguous()


@register_exporter
class TensorRTExporter(Exporter):
    """model.engine (fp32, fp16, or INT8 from the QDQ ONNX) with its ONNX beside it, timed on the GPU."""

    name = "tensorrt"
    backend = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    artifact_name = "model.engine"
    order = 2
    max_batch = 32

    @classmethod
    def artifact(cls, precision: str) -> str:
        return cls.artifact_name  # an INT8 engine too: the precision is the sidecar's

    def refuse(self, spec: DeviceSpec | None) -> None:
        if spec is not None and spec.kind == "jetson":
            # checked before TensorRT is looked for: an engine built here would not run there anyway
            raise DeryError(
                f"a TensorRT engine for the {spec.name} is built on the device itself (engines are specific to "
                f"their GPU and TensorRT version): add --bundle DIR, copy DIR to the device and run "
                f"DIR/build_engine.sh there, then python3 DIR/check_engine.py",
                "export",
            )
        from dery_deploy.runtime.tensorrt import import_tensorrt

        import_tensorrt()  # what to install is said before the folder or its package is looked at

    def _build(self, job: ExportJob) -> tuple[bytes, float, Shapes, Int8Record | None]:
        """The engine (saving the ONNX it was built from), its build seconds, shapes and INT8 record."""
        from dery_deploy.runtime.tensorrt import engine_from_qdq

        max_b = max(self.max_batch, job.x.shape[0], job.batch)
        int8 = None
        if job.precision == "int8":
            onnx_bytes, int8 = int8_onnx(job.model, job.task, job.seed)
            # tuned for the plan's batch, as `tensorrt_engine` tunes fp32 / fp16 engines
            engine, build_s = engine_from_qdq(onnx_bytes, job.shape, max_b)
            shapes = _shapes(job.x, job.batch, max_b)
        else:
            engine, build_s, onnx_bytes, by_name = tensorrt_engine(
                job.model, job.x, job.precision, job.batch, self.max_batch
            )
            shapes = (by_name["min_shape"], by_name["opt_shape"], by_name["max_shape"])
        save_onnx(onnx_bytes, job.out / ("model-int8.onnx" if job.precision == "int8" else "model.onnx"))
        return engine, build_s, shapes, int8

    def _check(self, job: ExportJob, runner, int8: Int8Record | None) -> tuple[Parity, Int8Record | None]:
        if job.precision == "int8":
            assert int8 is not None
            max_b = max(self.max_batch, job.x.shape[0], job.batch)

            def logits(t: torch.Tensor) -> np.ndarray:  # the engine takes at most max_b images at a time
                return np.concatenate([runner(t[i : i + max_b].cuda()).cpu().numpy() for i in range(0, len(t), max_b)])

            return int8_accuracy(job.model, logits, job.x, job.task, int8)
        with torch.inference_mode():
            ref = job.model(job.x).numpy()
        got = runner(job.x.cuda()).cpu().numpy()
        return parity(ref, got, FP16_TOL if job.precision == "fp16" else 1e-3, 0.98), int8

    def export(self, job: ExportJob) -> ExportReport:
        from dery_deploy.runtime.tensorrt import EngineRunner, import_tensorrt

        trt = import_tensorrt()
        engine, build_s, shapes, int8 = self._build(job)
        path = atomic_write_bytes(job.out / self.artifact_name, engine)
        runner = EngineRunner(engine)
        par, int8 = self._check(job, runner, int8)
        runner.bind(_batch_of(job.x, job.batch).cuda())
        m = measure(runner.execute, cuda=True, stream=runner.stream, opts=TimingOptions.for_budget(job.percentile))
        sidecar = EngineSidecar(
            trt.__version__, torch.cuda.get_device_name(), job.precision, "x", "y", *shapes, sha256_file(path)
        )
        atomic_write_json(job.out / SIDECAR, asdict(sidecar))
        return ExportReport(
            "tensorrt",
            path.name,
            job.precision,
            "cuda",
            job.batch,
            par,
            Timing.of(m),
            latency_backend=f"TensorRT {trt.__version__} {job.precision}, batch {job.batch}",
            file=EngineFile(SIDECAR, **asdict(sidecar), build_s=round(build_s, 2)),
            int8=int8,
            measurement=m,
        )
