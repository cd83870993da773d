"""AOTInductor packages (`model.pt2`): compiled here for the CPU (fp32) or a CUDA GPU (fp32 / fp16),
then loaded, checked and timed in a child process (`runtime.aoti_check`), since a package that does
not load can crash the process that loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dery_deploy.artifacts import sha256_file
from dery_deploy.errors import DeryError
from dery_deploy.export.checks import FP16_TOL, FP32_TOL, parity
from dery_deploy.export.formats.base import Exporter, ExportJob, register_exporter
from dery_deploy.export.report import ExportReport, FileRecord, Timing
from dery_deploy.runtime.harness import Measurement


@dataclass
class AotiPackage(FileRecord):
    sha256: str
    bytes: int
    torch: str
    build_s: float
    load_ok: bool
    load_s: float


@dataclass
class AotiLoadFailure(FileRecord):
    """A package that was built but does not load here: no parity, no timing, the reason."""

    build_s: float
    load_ok: bool
    error: str


@dataclass
class LoadedPackage:
    """What the child process made of a package that loaded: the seconds loading took, its outputs on the
    parity images, and its timing at the plan's batch."""

    load_s: float
    outputs: np.ndarray
    measurement: Measurement


def _compile(model: nn.Module, x: torch.Tensor, device: str, dtype: torch.dtype, pkg: Path) -> float:
    """Compile the network into the package `pkg` (atomically); returns the seconds it took."""
    t0 = time.perf_counter()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    # TF32 would round fp32 matmuls and convolutions to 10-bit mantissas: parity at 1e-4 needs it off
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    tmp_pkg = pkg.parent / ".model.pt2.tmp.pt2"
    try:
        m = model.to(device=device, dtype=dtype).eval()
        xd = x.to(device=device, dtype=dtype)
        ep = torch.export.export(m, (xd[:2],), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
        torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_pkg))
    except Exception as e:  # noqa: BLE001 - a tracing/compile failure of this network, reported as such
        tmp_pkg.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DeryError(
            f"AOTInductor could not compile this network on torch {torch.__version__} "
            f"({type(e).__name__}: {first}); ship the ONNX export instead",
            "export",
        ) from None
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        model.float().cpu()
    os.replace(tmp_pkg, pkg)
    return time.perf_counter() - t0


def _load_and_time(pkg: Path, x: torch.Tensor, dtype: torch.dtype, device: str, job: ExportJob) -> LoadedPackage | str:
    """Load the package in a child process, run it on `x` and time it at the plan's batch: returns what
    the child measured, or how it failed."""
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        inp, res = Path(tmp) / "x.safetensors", Path(tmp) / "y.safetensors"
        tensors = {"x": x.to(dtype).contiguous()}
        if device == "cuda":
            tensors["device_cuda"] = torch.ones(1)
        save_file(tensors, str(inp))
        args = [str(pkg), str(inp), str(res), str(job.batch), str(job.threads or 0), str(job.percentile)]
        proc = subprocess.run(
            [sys.executable, "-m", "dery_deploy.runtime.aoti_check", *args],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            sig = -proc.returncode if proc.returncode < 0 else None
            return (
                f"crashed with signal {sig}"
                if sig
                else f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
            )
        info = json.loads(proc.stdout.strip().splitlines()[-1])  # runtime.aoti_check's last line
        return LoadedPackage(info["load_s"], load_file(str(res))["y"].numpy(), Measurement(**info["measurement"]))


@register_exporter
class AotiExporter(Exporter):
    """model.pt2 for the CPU (fp32) or, for a CUDA device, the GPU (fp32 or fp16)."""

    name = "aoti"
    precisions = ("fp32", "fp16")
    artifact_name = "model.pt2"
    order = 3
    packaged = False  # no runtime of a deployment machine runs it: no deploy.json

    def export(self, job: ExportJob) -> ExportReport:
        device = "cuda" if (job.spec and job.spec.kind == "cuda") else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            assert job.spec is not None
            raise DeryError(
                f"--device {job.spec.id} needs a CUDA GPU for a CUDA AOTInductor package; none here", "export"
            )
        precision = job.precision if device == "cuda" else "fp32"
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
        with torch.inference_mode():
            ref = job.model(job.x).numpy()  # the fp32 CPU network the task was evaluated with
        pkg = job.out / self.artifact_name
        build_s = _compile(job.model, job.x, device, dtype, pkg)
        ran = _load_and_time(pkg, job.x, dtype, device, job)
        if isinstance(ran, str):
            error = (
                f"aoti_load_package {ran} in a child process; the package was built but does not load "
                f"on this machine's torch {torch.__version__}"
            )
            return ExportReport(
                "aoti", pkg.name, precision, device, job.batch, file=AotiLoadFailure(round(build_s, 2), False, error)
            )
        m = ran.measurement
        fp32 = precision == "fp32"
        par = parity(ref, ran.outputs, FP32_TOL if fp32 else FP16_TOL, 1.0 if fp32 else 0.98)
        return ExportReport(
            "aoti",
            pkg.name,
            precision,
            device,
            job.batch,
            par,
            Timing.of(m),
            latency_backend=f"AOTInductor {device} {precision}, batch {job.batch}",
            file=AotiPackage(
                sha256_file(pkg),
                pkg.stat().st_size,
                torch.__version__,
                round(build_s, 2),
                True,
                round(ran.load_s, 3),
            ),
            measurement=m,
        )
