"""The package an export ships: the artifact's folder gets its `deploy.json` (`deploy.info`), written
from what the export knows — the task's preprocessing and classes, the session settings the file was
measured with, the measurement, the budget and the artifact's own test accuracy.

A folder is one package: its deploy.json describes one artifact, the one `dery_deploy.load(folder)`
and `dery bench folder` run. Exporting a second format into a folder that holds another artifact's
package is refused (`check_one_package`) rather than overwriting that deploy.json; the same artifact
exported again replaces its own package, and `replace` (`--force`) replaces another's, saying so.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from dery_deploy import __version__
from dery_deploy.artifacts import sha256_file
from dery_deploy.data.task import Task
from dery_deploy.deploy.info import FILE, REFERENCE_MODEL, Budget, DeployInfo, Latency, ModelInput, Preprocess, Runtime
from dery_deploy.deploy.machine import fingerprint
from dery_deploy.deploy.settings import SessionValue, onnxruntime_settings
from dery_deploy.errors import DeryError
from dery_deploy.export.formats import RUNTIME_OF
from dery_deploy.export.formats.onnx_family import OnnxFile, OpenVinoFile
from dery_deploy.export.formats.tensorrt import EngineFile
from dery_deploy.export.report import ExportReport, FileRecord
from dery_deploy.network.plan import Plan
from dery_deploy.runtime.harness import Measurement

STATISTIC = (
    "per-call percentiles over all calls of a steady-state run (windows of back-to-back calls, interleaved "
    "with the reference workload, in a measurement worker process); standard error: bootstrap over windows"
)


def preprocess_of(task: Task) -> Preprocess:
    """The task's data pipeline as the package's preprocessing (`data/fashion_mnist.py`, `data/folder.py`)."""
    inp = task.input
    color = "L" if inp.channels == 1 else "RGB"
    if task.kind == "fashion-mnist":  # 28 px grey images zero-padded to 32, resized where the zoo takes another size
        return Preprocess(color, "pad", inp.size, pad_to=32, mean=list(inp.mean), std=list(inp.std))
    return Preprocess(color, "resize-crop", inp.size, mean=list(inp.mean), std=list(inp.std))


def session_settings(fmt: str, threads: int | None, file: FileRecord | None) -> dict[str, SessionValue]:
    """Every setting the export's measurement gave the runtime (built from the same functions), by the
    option's name; a TensorRT engine's are the input shapes it was built for."""
    if fmt == "onnx":
        return onnxruntime_settings(threads or torch.get_num_threads())
    if fmt == "openvino":
        from dery_deploy.runtime.openvino import compile_config

        return compile_config(threads)
    if isinstance(file, EngineFile):
        return {"min_shape": file.min_shape, "opt_shape": file.opt_shape, "max_shape": file.max_shape}
    return {}


def timed_beside(file: FileRecord | None) -> tuple[float | None, float | None]:
    """The machine's speed (the reference workload's median, ms) and other processes' CPU use (cores) while
    the file was timed, where its format's measurement records them (ONNX Runtime and OpenVINO files)."""
    if isinstance(file, (OnnxFile, OpenVinoFile)):
        return file.reference_ms, file.other_load_cores
    return None, None


def latency_of(
    m: Measurement, measured_in: str, reference_ms: float | None, other_load_cores: float | None = None
) -> Latency:
    """The figures a user reproduces with `dery bench`: percentiles over all calls (`promise_at`)."""
    return Latency(
        p50_ms=round(m.promise_at(50), 5),
        p90_ms=round(m.promise_at(90), 5),
        p99_ms=round(m.promise_at(99), 5),
        calls=int(m.runs),
        standard_error={f"p{q}": round(m.promise_uncertainty_at(q), 5) for q in (50, 90, 99)},
        noise=round(m.noise, 5),
        statistic=STATISTIC,
        measured_in=measured_in,
        when=time.strftime("%Y-%m-%dT%H:%M:%S"),
        reference_ms=reference_ms,
        other_load_cores=other_load_cores,
    )


def write_reference(out: Path) -> None:
    """The machine-speed probe the measurements timed beside the file, shipped so `dery bench` times it too."""
    from dery_deploy.runtime.calibration import reference_input, reference_module
    from dery_deploy.runtime.onnx import onnx_from_module, save_onnx

    if not (out / REFERENCE_MODEL).is_file():  # the export's measurement wrote it where it timed it
        save_onnx(onnx_from_module(reference_module(), reference_input(1), dynamic_batch=False), out / REFERENCE_MODEL)


def package_files(fmt: str, out: Path, artifact: str) -> dict[str, str]:
    names = [artifact]
    if fmt == "openvino":
        names.append(Path(artifact).with_suffix(".bin").name)
    if fmt == "tensorrt" and (out / "model.engine.json").is_file():
        names.append("model.engine.json")
    if fmt in ("onnx", "openvino") and (out / REFERENCE_MODEL).is_file():
        names.append(REFERENCE_MODEL)
    return {n: sha256_file(out / n) for n in names}


def check_one_package(out: Path, fmt: str, artifact: str, replace: bool = False) -> str | None:
    """Whether `artifact` (of format `fmt`) may become `out`'s package (module docstring): None where
    nothing is replaced, a line saying which package `replace` replaces.

    Raises:
        DeryError: `out` holds the intact package of another artifact and `replace` is False.
    """
    path = Path(out) / FILE
    if not path.is_file():
        return None
    try:
        other = DeployInfo.read(path)
    except DeryError:
        return None  # a damaged deploy.json describes nothing that could still be loaded
    if other.model == artifact or not (Path(out) / other.model).is_file():
        return None
    what = f"the {other.runtime.name} {other.runtime.precision} package of {other.model}"
    if replace:
        return f"{path} described {what}; it now describes {artifact}"
    raise DeryError(
        f"{out} already holds {what} (its {FILE}); a folder holds one package: export {fmt} into another "
        f"folder (--out DIR), or pass --force to make {artifact} the folder's package",
        "export",
    )


def write_package(
    out: Path,
    rep: ExportReport,
    task: Task,
    plan: Plan | None,
    measured: Measurement,
    threads: int | None,
    top1: float | None,
    replace: bool = False,
) -> Path:
    """Write `out/deploy.json` for the export `rep` (an `ExportReport`) that was measured as `measured`.

    Args:
        top1: the artifact's own test top-1 (%), None where it was not measured.
        replace: let it replace another artifact's package in `out` (`check_one_package`).

    Raises:
        DeryError: `out` holds another artifact's package and `replace` is False.
    """
    fmt = rep.format
    replaced = check_one_package(out, fmt, rep.artifact, replace)
    if replaced:
        print(f"note: {replaced}", file=sys.stderr)
    if fmt in ("onnx", "openvino"):
        write_reference(out)
    version = str(__import__(RUNTIME_OF[fmt]).__version__).split("-")[0]
    reference_ms, other_load_cores = timed_beside(rep.file)
    budget = plan.budget if plan else None
    info = DeployInfo(
        model=rep.artifact,
        files=package_files(fmt, out, rep.artifact),
        input=ModelInput("x", task.input.channels, task.input.size, task.input.size),
        preprocess=preprocess_of(task),
        output="y",
        classes=list(task.classes),
        runtime=Runtime(
            RUNTIME_OF[fmt],
            version,
            rep.precision,
            rep.batch,
            threads if rep.device == "cpu" else None,
            session_settings(fmt, threads, rep.file),
            rep.device,
        ),
        latency=latency_of(
            measured,
            "the export's own measurement of the file, alone in its pass",
            reference_ms,
            other_load_cores,
        ),
        budget=Budget(float(budget.latency_ms), int(budget.percentile or 50), _verdict(rep))
        if budget and budget.latency_ms
        else None,
        fingerprint=fingerprint(rep.device),
        accuracy={"top1": top1, "split": "test", "images": len(task.test), "task": task.kind},
        made_by=f"dery_deploy {__version__}",
    )
    return info.write(out / FILE)


def _verdict(rep: ExportReport) -> str:
    return rep.budget.line() if rep.budget is not None and rep.budget.checked else ""


def refresh_latency(
    out: Path,
    measured: Measurement,
    verdict_line: str,
    measured_in: str,
    reference_ms: float | None,
    other_load_cores: float | None = None,
    budget_ms: float | None = None,
) -> None:
    """Replace a package's recorded latency (and budget verdict) by a later measurement of the same file
    (`dery run`'s final pass), so deploy.json states what the report states; `budget_ms` replaces the
    budget where the run raised one it had chosen itself."""
    path = Path(out) / FILE
    if not path.is_file():
        return
    info = DeployInfo.read(path)
    info.latency = latency_of(measured, measured_in, reference_ms, other_load_cores)
    if info.budget is not None:
        info.budget.verdict = verdict_line
        if budget_ms is not None:
            info.budget.latency_ms = budget_ms
    info.write(path)
