"""Compile and verify: ONNX (ONNX Runtime), OpenVINO IR, TensorRT engines, AOTInductor packages,
edge bundles.

Every export writes `report-<format>.json`: parity against PyTorch on the task's test images, the
artifact's latency measured here, and the budget check. An INT8 artifact (`--precision int8`: the
QDQ ONNX of `runtime.quantize`, calibrated on the task's unlabelled images, for onnx, openvino and
tensorrt) has no max-abs parity to speak of: its top-1 on the whole test split is measured against
the fp32 PyTorch network's on the same images, and the export fails when it drops by more than
`INT8_MAX_DROP` points (or twice the change's own standard error, on a small test split).

The budget is a promise about what ships: where this machine is the plan's device, the artifact is
measured at the plan's batch, precision and thread count, at the per-call percentile the budget
promises (at least 1024 calls for p90 and p99, as MLPerf's single-stream scenario asks), and
compared with the budget itself; the only allowance is the measurement's own uncertainty (one
standard error over its windows), printed beside the verdict. Over budget fails unless allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dery_deploy.artifacts import atomic_write_json, make_output_dir, sha256_file
from dery_deploy.data.task import Task, load_task
from dery_deploy.deploy.bench import MAX_ALLOWANCE, within_budget
from dery_deploy.errors import DeryError
from dery_deploy.export.bundle import jetson_bundle
from dery_deploy.export.package import write_package
from dery_deploy.runtime.calibration import REFERENCE_KEY, reference_item
from dery_deploy.runtime.devices import get_device, this_machine
from dery_deploy.runtime.evaluate import Logits, accuracy_change, artifact_accuracy, artifact_runner
from dery_deploy.runtime.harness import Measurement, TimingOptions, measure
from dery_deploy.runtime.onnx import OPSET, onnx_from_module, save_onnx
from dery_deploy.runtime.quantize import CALIBRATION_IMAGES, qdq_from_module, quantized_ops
from dery_deploy.runtime.worker import FileItem, measure_files
from dery_deploy.train.finetune import load_run_model
from dery_deploy.zoo.load import get_zoo

PARITY_IMAGES = 64
FP32_TOL = 1e-4
FP16_TOL = 5e-2  # max abs logit difference accepted for fp16 artifacts (logits are O(1-10))
# top-1 points an INT8 artifact may lose against fp32 on the test split; the goal for what
# ships is 0.5, this is the export's safety net (selection compares measured validation accuracy)
INT8_MAX_DROP = 1.0
FORMATS = ("onnx", "openvino", "tensorrt", "aoti")
PRECISIONS = {
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
    "aoti": ("fp32", "fp16"),
}
ARTIFACTS = {"onnx": "model.onnx", "openvino": "model.xml", "tensorrt": "model.engine", "aoti": "model.pt2"}


@dataclass
class BudgetVerdict:
    checked: bool
    reason: str = ""
    budget_ms: float | None = None
    predicted_ms: float | None = None
    measured_ms: float | None = None
    noise: float | None = None  # relative standard error of the measurement: the only allowance
    limit_ms: float | None = None
    within_budget: bool | None = None
    plan_device: str | None = None
    plan_backend: str | None = None
    plan_precision: str | None = None
    plan_batch: int | None = None
    percentile: int = 50  # of single calls, the budget's promise
    plan_threads: int | None = None
    measured_in: str = ""  # where the measurement was taken, when not by the export itself

    @property
    def status(self) -> str:
        """ "within", "over", "undecided" (the measurement was too noisy to judge) or "not checked"."""
        if not self.checked:
            return "not checked"
        return {True: "within", False: "over", None: "undecided"}[self.within_budget]

    @property
    def over(self) -> bool:
        return self.status == "over"

    def word(self) -> str:
        """The verdict in the words the terminal and the report print."""
        return {"within": "within budget", "over": "OVER BUDGET", "undecided": "UNDECIDED"}.get(
            self.status, "not checked"
        )

    def line(self) -> str:
        if not self.checked:
            return f"budget not checked: {self.reason}"
        at = "" if self.percentile == 50 else f" at p{self.percentile}"
        predicted = "" if self.predicted_ms is None else f"predicted {self.predicted_ms:.4f} ms, "
        head = f"budget {self.budget_ms:g} ms{at}: {predicted}measured {self.measured_ms:.4f} ms{at} over all calls"
        if self.status == "undecided":
            return (
                f"{head} (±{100 * self.noise:.1f}%, its standard error, is above the {100 * MAX_ALLOWANCE:g}% a "
                "verdict allows) -> UNDECIDED: measure again with nothing else running (dery bench)"
            )
        over = 100 * (self.measured_ms / self.budget_ms - 1)
        verdict = "within budget" if self.within_budget else f"OVER BUDGET by {over:.1f}%"
        return (
            f"{head} (±{100 * self.noise:.1f}%, its standard error, the only allowance: limit "
            f"{self.limit_ms:.4f} ms) -> {verdict}"
        )


def budget_check(
    plan: dict | None, measured: Measurement, artifact_device: str, precision: str, batch: int, threads: int | None
) -> BudgetVerdict:
    """The shipped artifact's measured latency against the plan's budget (see module docstring)."""
    if not plan or not (plan.get("budget") or {}).get("latency_ms"):
        return BudgetVerdict(False, "no latency budget (a donor run, or a plan without a budget)")
    b = plan["budget"]["latency_ms"]
    q = int(plan["budget"].get("percentile") or 50)
    base = dict(
        budget_ms=b,
        predicted_ms=plan.get("predicted", {}).get("latency_ms"),
        plan_device=plan.get("device"),
        plan_backend=plan.get("backend"),
        plan_precision=plan.get("precision"),
        plan_batch=plan.get("batch"),
        percentile=q,
        plan_threads=plan.get("threads"),
    )
    try:
        spec = get_device(plan.get("device") or "")
    except DeryError:
        return BudgetVerdict(False, f"unknown plan device {plan.get('device')!r}", **base)
    if spec.kind != artifact_device:
        return BudgetVerdict(
            False, f"the artifact ran on {artifact_device}, the plan's device {spec.id} is {spec.kind}", **base
        )
    if spec.id not in {s.id for s in this_machine()}:
        return BudgetVerdict(False, f"this machine is not the plan's device {spec.id!r}", **base)
    if (precision, batch) != (plan.get("precision", "fp32"), plan.get("batch", 1)):
        return BudgetVerdict(
            False,
            f"the artifact is {precision} batch {batch}, the budget is for "
            f"{plan.get('precision')} batch {plan.get('batch')}",
            **base,
        )
    if plan.get("threads") and threads != plan["threads"]:
        return BudgetVerdict(
            False, f"the artifact ran with {threads} threads, the budget is for {plan['threads']}", **base
        )
    # the statistic a user measures with the file alone: the per-call percentile over all calls
    noise = measured.promise_uncertainty_at(q)
    value = measured.promise_at(q)
    limit = b * (1 + noise)
    within = within_budget(value, b, noise)
    return BudgetVerdict(
        True,
        "" if within is not None else "the measurement's standard error is above the allowance: undecided",
        measured_ms=round(value, 5),
        noise=round(noise, 4),
        limit_ms=limit,
        within_budget=within,
        **base,
    )


@dataclass
class ExportReport:
    format: str
    artifact: str
    precision: str
    device: str  # cpu | cuda: where the artifact ran here
    batch: int  # the batch its latency was measured at
    parity: dict = field(default_factory=dict)
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_stable: bool | None = None
    latency_noise: float | None = None
    latency_backend: str = ""
    budget: BudgetVerdict | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def parity(ref: np.ndarray, out: np.ndarray, tol: float, min_agreement: float = 1.0) -> dict:
    agree = float((ref.argmax(1) == out.argmax(1)).mean())
    diff = float(np.abs(ref - out).max())
    return {
        "images": int(ref.shape[0]),
        "max_abs_diff": diff,
        "top1_agreement": agree,
        "top1_identical": agree == 1.0,
        "tolerance": tol,
        "ok": diff <= tol and agree >= min_agreement,
    }


def _timing(m: Measurement) -> dict:
    """The artifact's latency as a user measures it: per-call percentiles over all calls of the run."""
    return {
        "latency_ms": round(m.promise_at(50), 5),
        "latency_p90_ms": round(m.promise_at(90), 5),
        "latency_p99_ms": round(m.promise_at(99), 5),
        "latency_stable": m.stable,
        "latency_noise": round(m.promise_uncertainty_at(50), 4),
    }


def _batch_of(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x[:batch].contiguous() if x.shape[0] >= batch else x[:1].expand(batch, *x.shape[1:]).contiguous()


def _int8_task(task: Task | None) -> Task:
    if task is None:
        raise ValueError("an INT8 export is calibrated and evaluated on the task's images: pass the task")
    return task


def int8_onnx(model, task: Task | None, seed: int) -> tuple[bytes, dict]:
    """The network's QDQ INT8 ONNX, calibrated on the task's unlabelled images, and how it was made."""
    task = _int8_task(task)
    t0 = time.perf_counter()
    calibration = task.unlabelled_images(CALIBRATION_IMAGES, seed)
    qdq = qdq_from_module(model, calibration)
    return qdq, {
        "calibration": {"images": len(calibration), "of": "the task's unlabelled images", "seed": seed},
        "quantized_ops": quantized_ops(qdq),
        "quantize_s": round(time.perf_counter() - t0, 2),
    }


def int8_accuracy(model, logits: Logits, x: torch.Tensor, task: Task | None) -> tuple[dict, dict]:
    """An INT8 artifact's top-1 on the test split against the fp32 PyTorch network's (module docstring).

    Returns:
        the report's parity block (top-1 change with its tolerance, the max |diff| on the parity
        images only as information) and its INT8 fields (int8_top1, fp32_top1, int8_top1_change).
    """
    task = _int8_task(task)
    acc = accuracy_change(model, logits, task.x("test"), task.y("test"), "test")
    tol = max(INT8_MAX_DROP, 2 * acc["change_se"])
    with torch.inference_mode():
        diff = float(np.abs(model(x).numpy() - logits(x)).max())
    parity_block = {
        "images": acc["images"],
        "split": "test",
        "check": "top-1 change against fp32 PyTorch on the same images (max |diff| means nothing for INT8)",
        "top1_agreement": acc["top1_agreement"],
        "top1_identical": acc["top1_agreement"] == 1.0,
        "max_abs_diff": diff,
        "tolerance": round(tol, 3),
        "tolerance_unit": f"top-1 points lost: {INT8_MAX_DROP:g}, or twice the change's standard error if larger",
        "ok": acc["top1_change"] >= -tol,
    }
    fields = {
        "int8_top1": acc["top1"],
        "fp32_top1": acc["fp32_top1"],
        "int8_top1_change": acc["top1_change"],
        "int8_top1_change_se": acc["change_se"],
    }
    return parity_block, fields


def exported_onnx(model, x: torch.Tensor, precision: str, task: Task | None, seed: int) -> tuple[bytes, dict]:
    """The ONNX an export ships from: fp32, or QDQ INT8 calibrated on the task (with its record)."""
    if precision == "int8":
        return int8_onnx(model, task, seed)
    return onnx_from_module(model, x[:1]), {}


def checked_outputs(model, logits, x: torch.Tensor, precision: str, task: Task | None, int8: dict) -> dict:
    """The artifact's outputs against the network's: fp32 parity on `x`, or for INT8 the top-1 change
    on the test split (written into `int8`); the parity block of the report."""
    if precision == "int8":
        par, fields = int8_accuracy(model, logits, x, task)
        int8.update(fields)
        return par
    with torch.inference_mode():
        ref = model(x).numpy()
    return parity(ref, logits(x), FP32_TOL)


def _measure_artifact(
    path: Path, runtime: str, threads: int | None, shape: tuple, percentile: int
) -> tuple[Measurement, dict]:
    """The shipped file timed as it runs where it ships, in a measurement worker (`runtime.worker`) that
    times nothing else but the machine's reference workload: returns it and the reference's median."""
    n = threads or torch.get_num_threads()
    # the reference lands beside the artifact: the package ships it, for `dery bench` to time too
    items = [
        FileItem("artifact", str(path), runtime, n, [int(v) for v in shape]),
        reference_item(path.parent, runtime, n),
    ]
    res = measure_files(items, TimingOptions.for_budget(percentile))
    context = {
        "reference_ms": round(res.measurements[REFERENCE_KEY].promise_at(50), 5),  # the machine's speed then
        "other_load_cores": res.summary.other_load_cores,  # other processes' CPU use while it was timed
    }
    return res.measurements["artifact"], context


def export_onnx(
    model,
    x: torch.Tensor,
    out: Path,
    batch: int,
    threads: int | None,
    percentile: int,
    precision: str = "fp32",
    task: Task | None = None,
    seed: int = 0,
) -> ExportReport:
    """model.onnx (fp32) or model-int8.onnx (QDQ INT8, needs `task`), run by ONNX Runtime on the CPU."""
    import onnx
    import onnxruntime

    t0 = time.perf_counter()
    data, int8 = exported_onnx(model, x, precision, task, seed)
    path = save_onnx(data, out / ("model-int8.onnx" if precision == "int8" else "model.onnx"))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    par = checked_outputs(model, artifact_runner(data, "onnxruntime", threads), x, precision, task, int8)
    m, context = _measure_artifact(path, "onnxruntime", threads, (batch, *x.shape[1:]), percentile)
    return ExportReport(
        "onnx",
        path.name,
        precision,
        "cpu",
        batch,
        par,
        **_timing(m),
        latency_backend=f"onnxruntime {onnxruntime.__version__} CPU EP, batch {batch}, {threads or 'default'} threads",
        extra={
            **int8,
            "threads": threads,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "opset": OPSET,
            "dynamic_batch": True,
            "export_s": round(time.perf_counter() - t0, 2),
            **context,
            "_measurement": m,
        },
    )


def export_openvino(
    model,
    x: torch.Tensor,
    out: Path,
    batch: int,
    threads: int | None,
    percentile: int,
    precision: str = "fp32",
    task: Task | None = None,
    seed: int = 0,
) -> ExportReport:
    """OpenVINO IR: model.xml + model.bin (fp32) or model-int8.xml + .bin (from the QDQ INT8 ONNX,
    needs `task`), saved and timed at the plan's batch (`runtime.openvino`)."""
    from dery_deploy.runtime.openvino import import_openvino, save_ir

    ov = import_openvino()
    t0 = time.perf_counter()
    data, int8 = exported_onnx(model, x, precision, task, seed)
    # the plan's batch saved static: a plain compile_model of the shipped file runs the measured shape
    xml = save_ir(data, out / ("model-int8.xml" if precision == "int8" else "model.xml"), batch=batch)
    logits = artifact_runner(xml, "openvino", threads)  # the IR as shipped, for any batch
    par = checked_outputs(model, logits, x, precision, task, int8)
    m, context = _measure_artifact(xml, "openvino", threads, (batch, *x.shape[1:]), percentile)
    weights = xml.with_suffix(".bin")
    return ExportReport(
        "openvino",
        xml.name,
        precision,
        "cpu",
        batch,
        par,
        **_timing(m),
        latency_backend=(
            f"OpenVINO {ov.__version__.split('-')[0]} CPU, compiled for batch {batch}, {threads or 'default'} "
            "threads, f32 inference precision"
        ),
        extra={
            **int8,
            "threads": threads,
            "weights": weights.name,
            "sha256": sha256_file(xml),
            "weights_sha256": sha256_file(weights),
            "bytes": xml.stat().st_size + weights.stat().st_size,
            "dynamic_batch": False,
            "export_s": round(time.perf_counter() - t0, 2),
            **context,
            "_measurement": m,
        },
    )


def export_aoti(
    model, x: torch.Tensor, out: Path, device: str, precision: str, batch: int, threads: int | None, percentile: int
) -> ExportReport:
    from safetensors.torch import load_file, save_file

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    if device == "cpu" and precision != "fp32":
        raise DeryError("an AOTInductor CPU package is fp32; use --precision fp32", "export")
    with torch.inference_mode():
        ref = model(x).numpy()  # the fp32 CPU network the task was evaluated with
    t0 = time.perf_counter()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    # TF32 would round fp32 matmuls and convolutions to 10-bit mantissas: parity at 1e-4 needs it off
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    pkg, tmp_pkg = out / "model.pt2", out / ".model.pt2.tmp.pt2"
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
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        inp, res = Path(tmp) / "x.safetensors", Path(tmp) / "y.safetensors"
        tensors = {"x": x.to(dtype).contiguous()}
        if device == "cuda":
            tensors["device_cuda"] = torch.ones(1)
        save_file(tensors, str(inp))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dery_deploy.runtime.aoti_check",
                str(pkg),
                str(inp),
                str(res),
                str(batch),
                str(threads or 0),
                str(percentile),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            sig = -proc.returncode if proc.returncode < 0 else None
            what = (
                f"crashed with signal {sig}"
                if sig
                else f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
            )
            return ExportReport(
                "aoti",
                pkg.name,
                precision,
                device,
                batch,
                extra={
                    "build_s": round(build_s, 2),
                    "load_ok": False,
                    "error": f"aoti_load_package {what} in a child process; the package was built but does not load "
                    f"on this machine's torch {torch.__version__}",
                },
            )
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        got = load_file(str(res))["y"].numpy()
    m = Measurement(**info["measurement"])
    par = parity(ref, got, FP32_TOL if precision == "fp32" else FP16_TOL, 1.0 if precision == "fp32" else 0.98)
    return ExportReport(
        "aoti",
        pkg.name,
        precision,
        device,
        batch,
        par,
        **_timing(m),
        latency_backend=f"AOTInductor {device} {precision}, batch {batch}",
        extra={
            "sha256": sha256_file(pkg),
            "bytes": pkg.stat().st_size,
            "torch": torch.__version__,
            "build_s": round(build_s, 2),
            "load_ok": True,
            "load_s": round(info["load_s"], 3),
            "_measurement": m,
        },
    )


def tensorrt_engine(
    model, x: torch.Tensor, precision: str, batch: int, max_batch: int = 32
) -> tuple[bytes, float, bytes, dict]:
    """The plan's engine: tuned for the plan's `batch` (what it is timed and judged at), accepting 1 up to
    the parity images and `max_batch`. Returns (engine, build seconds, its ONNX, the shapes it was built for)."""
    from dery_deploy.runtime.tensorrt import engine_from_module

    top = max(max_batch, x.shape[0], batch)
    engine, build_s, onnx_bytes = engine_from_module(model, x[:1], precision, max_batch=top, opt_batch=batch)
    shapes = {"min_shape": [1, *x.shape[1:]], "opt_shape": [batch, *x.shape[1:]], "max_shape": [top, *x.shape[1:]]}
    return engine, build_s, onnx_bytes, shapes


def export_tensorrt(
    model,
    x: torch.Tensor,
    out: Path,
    precision: str,
    batch: int,
    percentile: int = 50,
    max_batch: int = 32,
    task: Task | None = None,
    seed: int = 0,
) -> ExportReport:
    from dery_deploy.runtime.tensorrt import EngineRunner, engine_from_qdq, import_tensorrt

    trt = import_tensorrt()
    max_b = max(max_batch, x.shape[0], batch)
    int8: dict = {}
    if precision == "int8":
        onnx_bytes, int8 = int8_onnx(model, task, seed)
        # tuned for the plan's batch, as `tensorrt_engine` tunes fp32 / fp16 engines
        engine, build_s = engine_from_qdq(onnx_bytes, (batch, *x.shape[1:]), max_b)
        shapes = {
            "min_shape": [1, *x.shape[1:]],
            "opt_shape": [batch, *x.shape[1:]],
            "max_shape": [max_b, *x.shape[1:]],
        }
    else:
        engine, build_s, onnx_bytes, shapes = tensorrt_engine(model, x, precision, batch, max_batch)
    save_onnx(onnx_bytes, out / ("model-int8.onnx" if precision == "int8" else "model.onnx"))
    from dery_deploy.artifacts import atomic_write_bytes

    path = atomic_write_bytes(out / "model.engine", engine)
    runner = EngineRunner(engine)
    if precision == "int8":

        def logits(t: torch.Tensor) -> np.ndarray:  # the engine takes at most max_b images at a time
            return np.concatenate([runner(t[i : i + max_b].cuda()).cpu().numpy() for i in range(0, len(t), max_b)])

        par, fields = int8_accuracy(model, logits, x, task)
        int8.update(fields)
    else:
        with torch.inference_mode():
            ref = model(x).numpy()
        par = parity(ref, runner(x.cuda()).cpu().numpy(), FP16_TOL if precision == "fp16" else 1e-3, 0.98)
    runner.bind(_batch_of(x, batch).cuda())
    m = measure(runner.execute, cuda=True, stream=runner.stream, opts=TimingOptions.for_budget(percentile))
    sidecar = {
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "precision": precision,
        "input": "x",
        "output": "y",
        **shapes,
        "sha256": sha256_file(path),
    }
    atomic_write_json(out / "model.engine.json", sidecar)
    return ExportReport(
        "tensorrt",
        path.name,
        precision,
        "cuda",
        batch,
        par,
        **_timing(m),
        latency_backend=f"TensorRT {trt.__version__} {precision}, batch {batch}",
        extra={"sidecar": "model.engine.json", **sidecar, **int8, "build_s": round(build_s, 2), "_measurement": m},
    )


def shipped_top1(rep: ExportReport, out: Path, task: Task, threads: int | None) -> float | None:
    """The artifact's own test top-1 (%): measured by the INT8 check, else run here on the test split
    (ONNX Runtime and OpenVINO files); None for an fp32 / fp16 engine (its parity is what is checked)."""
    if rep.precision == "int8":
        return rep.extra.get("int8_top1")
    if rep.format not in ("onnx", "openvino"):
        return None
    runtime = "onnxruntime" if rep.format == "onnx" else "openvino"
    return round(artifact_accuracy(out / rep.artifact, task, "test", runtime, threads)[0], 3)


def export_precision(fmt: str, precision: str | None, plan: dict | None, spec) -> str:
    """The precision to export: the one asked for, else the plan's, else the device's default; a
    plan's precision the format does not have (fp16 planned, ONNX for the CPU) falls back to fp32."""
    allowed = PRECISIONS[fmt]
    if precision is not None:
        if precision not in allowed:
            known = sorted({p for ps in PRECISIONS.values() for p in ps})
            if precision not in known:
                raise DeryError(f"--precision must be one of {', '.join(known)}, got {precision!r}", "export")
            others = [f for f, ps in PRECISIONS.items() if precision in ps]
            raise DeryError(
                f"--format {fmt} exports {' or '.join(allowed)}, not {precision}; for {precision} use --format "
                f"{' or '.join(others)}",
                "export",
            )
        return precision
    prec = (plan.get("precision") if plan else None) or (spec.default_precision if spec else "fp32")
    return prec if prec in allowed else "fp32"


def export_run(
    run: Path,
    fmt: str,
    precision: str | None,
    device: str | None,
    out: Path | None,
    bundle: Path | None,
    allow_over_budget: bool,
    force: bool,
    plan: dict | None = None,
    accept_int8_loss: bool = False,
) -> dict:
    """Export a fine-tuned run, check parity, measure, and hold the artifact to the plan's budget.

    Args:
        plan: the plan the artifact must keep (default: the run's own); a donor run picked as a
            budget's plan is held to that plan's budget.
        accept_int8_loss: record an INT8 artifact's test accuracy change instead of failing beyond the
            tolerance (`dery run`, whose pick already weighed the INT8 change on validation).
    """
    if fmt not in FORMATS:
        raise DeryError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}", "export")
    if precision is not None:
        export_precision(fmt, precision, None, None)  # a precision the format lacks: said before any work
    model, cfg = load_run_model(run)
    zoo = get_zoo(cfg.get("zoo_ref", cfg["zoo"]))
    plan = plan or cfg["source"].get("plan")
    spec = get_device(device) if device else (get_device(plan["device"]) if plan and plan.get("device") else None)
    prec = export_precision(fmt, precision, plan, spec)
    batch = int(plan.get("batch", 1)) if plan else 1
    threads = plan.get("threads") if plan else (spec.threads if spec else None)
    percentile = int(((plan or {}).get("budget") or {}).get("percentile") or 50)
    out = Path(out or Path(run) / "export")
    seed = cfg["recipe"].get("seed", 0)
    task = load_task(cfg["data"], zoo.input, seed=seed)
    x = task.x("test")[:PARITY_IMAGES].contiguous()
    if bundle is not None:
        if fmt != "tensorrt" or spec is None or spec.kind != "jetson":
            raise DeryError("--bundle is for `--format tensorrt --device <jetson id>`", "export")
        if bundle.exists() and any(bundle.iterdir()) and not force:
            raise DeryError(f"bundle folder {bundle} exists; pass --force or choose another", "export")
        calibration = task.unlabelled_images(CALIBRATION_IMAGES, seed) if prec == "int8" else None
        shipped = jetson_bundle(model, x, spec, bundle, prec, batch, plan, calibration=calibration)
        atomic_write_json(bundle / "report-tensorrt.json", shipped)
        return shipped
    if fmt == "tensorrt" and spec is not None and spec.kind == "jetson":
        # checked before TensorRT is looked for: an engine built here would not run there anyway
        raise DeryError(
            f"a TensorRT engine for the {spec.name} is built on the device itself (engines are specific to "
            f"their GPU and TensorRT version): add --bundle DIR, copy DIR to the device and run "
            f"DIR/build_engine.sh there, then python3 DIR/check_engine.py",
            "export",
        )
    artifact = ARTIFACTS[fmt] if prec != "int8" or fmt == "tensorrt" else ARTIFACTS[fmt].replace(".", "-int8.")
    if (out / artifact).exists() and not force:
        raise DeryError(f"{out / artifact} exists; pass --force to overwrite it", "export")
    make_output_dir(out, "output folder", "export")
    if fmt == "onnx":
        rep = export_onnx(model, x, out, batch, threads, percentile, prec, task, seed)
    elif fmt == "openvino":
        rep = export_openvino(model, x, out, batch, threads, percentile, prec, task, seed)
    elif fmt == "aoti":
        dev = "cuda" if (spec and spec.kind == "cuda") else "cpu"
        if dev == "cuda" and not torch.cuda.is_available():
            raise DeryError(f"--device {spec.id} needs a CUDA GPU for a CUDA AOTInductor package; none here", "export")
        rep = export_aoti(model, x, out, dev, prec if dev == "cuda" else "fp32", batch, threads, percentile)
    else:
        rep = export_tensorrt(model, x, out, prec, batch, percentile, task=task, seed=seed)
    measured = rep.extra.pop("_measurement", None)
    if measured is not None:
        ran_with = threads if rep.device == "cpu" else (plan or {}).get("threads")
        rep.budget = budget_check(plan, measured, rep.device, rep.precision, rep.batch, ran_with)
    if measured is not None and fmt != "aoti":  # a package: deploy.json beside the artifact
        write_package(out, rep, task, plan, measured, threads, shipped_top1(rep, out, task, threads))
    # relative: the export folder is a package a user copies elsewhere, with no absolute path inside
    rel = os.path.relpath(Path(run).resolve(), out.resolve())
    d = {**rep.to_dict(), "run": rel, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(out / f"report-{fmt}.json", d)
    if rep.parity and not rep.parity["ok"] and rep.precision == "int8" and not accept_int8_loss:
        raise DeryError(
            f"{fmt} int8 accuracy: top-1 {rep.extra['int8_top1']:.2f}% against fp32 {rep.extra['fp32_top1']:.2f}% on "
            f"{rep.parity['images']} test images, {rep.extra['int8_top1_change']:+.2f} points (tolerance "
            f"-{rep.parity['tolerance']:g}); ship --precision fp32, see {out / f'report-{fmt}.json'}",
            "export",
        )
    if rep.parity and not rep.parity["ok"] and rep.precision != "int8":
        raise DeryError(
            f"{fmt} parity failed: max |diff| {rep.parity['max_abs_diff']:.3g} (tolerance "
            f"{rep.parity['tolerance']:g}), top-1 agreement {100 * rep.parity['top1_agreement']:.1f}%; "
            f"see {out / f'report-{fmt}.json'}",
            "export",
        )
    if rep.budget and rep.budget.over and not allow_over_budget:
        planned = (plan or {}).get("backend")
        if {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}.get(fmt) == planned:
            fix = "re-assemble under a lower budget"
        else:  # another runtime than the one the plan was measured with: a lower budget would not help
            fix = (
                f"the plan was measured with {planned}, and the {fmt} runtime is slower here: ship the plan's "
                f"format, or profile with the {fmt} runtime's backend and re-assemble"
            )
        raise DeryError(
            f"{rep.budget.line()}; the {fmt} artifact does not keep the budget: {fix}, or pass --allow-over-budget "
            "to accept it",
            "export",
        )
    return d
