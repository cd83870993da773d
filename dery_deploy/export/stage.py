"""Compile and verify: ONNX (ONNX Runtime), TensorRT engines, AOTInductor packages.

Every export writes `report-<format>.json`: parity against PyTorch on 64 test images, the
artifact's latency measured on this machine, and the plan's predicted latency and budget. When
this machine is the plan's device and the measured latency exceeds the budget by more than the
latency model's stated error, the export fails loudly (unless allowed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dery_deploy.artifacts import atomic_write_json, atomic_write_text, sha256_file
from dery_deploy.errors import DeryError
from dery_deploy.export.onnx_export import OPSET, onnx_from_module, save_onnx
from dery_deploy.profile.harness import measure

PARITY_IMAGES = 64
FP32_TOL = 1e-4
FP16_TOL = 5e-2  # max abs logit difference accepted for fp16 engines (logits are O(1-10))
DEFAULT_MODEL_ERROR = 0.10  # assumed latency-model error when the profile was never verified


def parity(ref: np.ndarray, out: np.ndarray) -> dict:
    return {"images": int(ref.shape[0]), "max_abs_diff": float(np.abs(ref - out).max()),
            "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean()),
            "top1_identical": bool((ref.argmax(1) == out.argmax(1)).all())}


def budget_check(cfg: dict, measured_ms: float, artifact_device: str) -> dict:
    """Measured latency against the plan's budget, when this machine is the plan's device and the
    artifact ran on that kind of processor (an ONNX Runtime CPU timing says nothing of a GPU budget)."""
    from dery_deploy.profile.devices import get_device, this_machine

    plan = cfg["source"].get("plan")
    if not plan or not plan.get("budget", {}).get("latency_ms"):
        return {"checked": False, "reason": "no latency budget (a donor run, or a plan without budget)"}
    budget = plan["budget"]["latency_ms"]
    err = plan.get("predicted", {}).get("model_max_rel_error")
    stated = err if err is not None else DEFAULT_MODEL_ERROR
    here = {s.id for s in this_machine()}
    out = {"budget_ms": budget, "predicted_ms": plan["predicted"]["latency_ms"], "measured_ms": round(measured_ms, 5),
           "plan_device": plan.get("device"), "plan_backend": plan.get("backend"), "plan_batch": plan.get("batch"),
           "model_error": stated, "model_error_source": "profile --verify" if err is not None else "default (profile not verified)"}
    try:
        spec = get_device(plan.get("device") or "")
    except DeryError:
        return {**out, "checked": False, "reason": f"unknown plan device {plan.get('device')!r}"}
    if spec.kind != artifact_device:
        return {**out, "checked": False, "reason": f"the artifact ran on {artifact_device}, the plan's device is {spec.kind}"}
    if plan.get("device") not in here:
        return {**out, "checked": False, "reason": f"this machine is not the plan's device {plan.get('device')!r}"}
    limit = budget * (1 + stated)
    ref = plan["predicted"].get("reference_ms")
    judged = measured_ms
    if ref:
        # express the measurement at the profile's machine speed (see profile/calibration.py)
        from dery_deploy.profile.backends import get_backend
        from dery_deploy.profile.calibration import Calibrator

        try:
            now = Calibrator(get_backend(plan["backend"]), plan.get("precision", "fp32"), artifact_device,
                             plan.get("batch", 1)).measure()
        except DeryError:
            now = None
        if now:
            judged = measured_ms * ref / now
            out.update({"calibration_now_ms": round(now, 5), "reference_ms": ref,
                        "measured_at_reference_speed_ms": round(judged, 5)})
    return {**out, "checked": True, "limit_ms": round(limit, 5), "within_budget": judged <= limit,
            "measured_over_predicted": round(judged / plan["predicted"]["latency_ms"], 4)}


def _inputs(cfg: dict, zoo) -> torch.Tensor:
    from dery_deploy.data.task import load_task

    return load_task(cfg["data"], zoo).test_x[:PARITY_IMAGES].contiguous()


def export_onnx(model, x: torch.Tensor, out: Path) -> dict:
    import onnx

    from dery_deploy.profile.backends.onnxruntime import OnnxRuntime

    t0 = time.perf_counter()
    data = onnx_from_module(model, x[:1])
    path = save_onnx(data, out / "model.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = OnnxRuntime.session(data, "cpu")
    with torch.inference_mode():
        ref = model(x).numpy()
    got = sess.run(None, {"x": x.numpy()})[0]
    par = parity(ref, got)
    par["ok"] = par["max_abs_diff"] <= FP32_TOL and par["top1_identical"]
    par["tolerance"] = FP32_TOL
    x1 = np.ascontiguousarray(x[:1].numpy())
    m = measure(lambda: sess.run(None, {"x": x1}))
    import onnxruntime

    return {"format": "onnx", "artifact": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "opset": OPSET, "dynamic_batch": True, "onnxruntime": onnxruntime.__version__, "parity": par,
            "latency_ms": round(m.median_ms, 5), "latency_p90_ms": round(m.p90_ms, 5), "latency_stable": m.stable,
            "latency_backend": "onnxruntime CPU EP, batch 1", "export_s": round(time.perf_counter() - t0, 2)}


def export_aoti(model, x: torch.Tensor, out: Path, device: str = "cpu") -> dict:
    from safetensors.torch import load_file, save_file

    t0 = time.perf_counter()
    m = model.to(device).eval()
    xd = x.to(device)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.inference_mode():
        ref = m(xd).float().cpu().numpy()
    pkg = out / "model.pt2"
    tmp_pkg = out / ".model.pt2.tmp.pt2"
    try:
        ep = torch.export.export(m, (xd[:2],), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_pkg))
    except Exception as e:  # noqa: BLE001 - a tracing/compile failure of this network, reported as such
        tmp_pkg.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DeryError(f"AOTInductor could not compile this network on torch {torch.__version__} "
                        f"({type(e).__name__}: {first}); ship the ONNX export instead", "export") from None
    os.replace(tmp_pkg, pkg)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        inp, res = Path(tmp) / "x.safetensors", Path(tmp) / "y.safetensors"
        tensors = {"x": x.contiguous()}
        if device == "cuda":
            tensors["device_cuda"] = torch.ones(1)
        save_file(tensors, str(inp))
        proc = subprocess.run([sys.executable, "-m", "dery_deploy.export.aoti_check", str(pkg), str(inp), str(res)],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            sig = -proc.returncode if proc.returncode < 0 else None
            what = f"crashed with signal {sig}" if sig else f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] }"
            return {"format": "aoti", "artifact": pkg.name, "device": device, "build_s": round(build_s, 2),
                    "load_ok": False, "error": f"aoti_load_package {what} in a child process; the package was built but "
                    f"does not load on this machine's torch {torch.__version__}"}
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        got = load_file(str(res))["y"].numpy()
    par = parity(ref, got)
    par["ok"] = par["max_abs_diff"] <= FP32_TOL and par["top1_identical"]
    par["tolerance"] = FP32_TOL
    return {"format": "aoti", "artifact": pkg.name, "sha256": sha256_file(pkg), "bytes": pkg.stat().st_size,
            "device": device, "torch": torch.__version__, "build_s": round(build_s, 2), "load_ok": True,
            "load_s": round(info["load_s"], 3), "parity": par, "latency_ms": round(info["latency_ms"], 5),
            "latency_p90_ms": round(info["p90_ms"], 5), "latency_stable": info["stable"],
            "latency_backend": f"AOTInductor {device}, batch 1"}


def export_tensorrt(model, x: torch.Tensor, out: Path, precision: str, max_batch: int = 32) -> dict:
    from dery_deploy.export.tensorrt_engine import EngineRunner, engine_from_onnx, import_tensorrt

    trt = import_tensorrt()
    data = onnx_from_module(model, x[:1])
    save_onnx(data, out / "model.onnx")
    engine, build_s = engine_from_onnx(data, (1, *x.shape[1:]), precision == "fp16", max_batch=max(max_batch, x.shape[0]))
    from dery_deploy.artifacts import atomic_write_bytes

    path = atomic_write_bytes(out / "model.engine", engine)
    runner = EngineRunner(engine)
    with torch.inference_mode():
        ref = model(x).numpy()
    got = runner(x.cuda()).cpu().numpy()
    par = parity(ref, got)
    tol = FP16_TOL if precision == "fp16" else 1e-3
    par.update({"tolerance": tol, "ok": par["max_abs_diff"] <= tol and par["top1_agreement"] >= 0.98})
    x1 = x[:1].cuda().contiguous()
    runner.bind(x1)
    m = measure(runner.execute, cuda=True)
    sidecar = {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(), "precision": precision,
               "input": "x", "output": "y", "min_shape": [1, *x.shape[1:]], "opt_shape": [1, *x.shape[1:]],
               "max_shape": [max(max_batch, x.shape[0]), *x.shape[1:]], "sha256": sha256_file(path)}
    atomic_write_json(out / "model.engine.json", sidecar)
    return {"format": "tensorrt", "artifact": path.name, "sidecar": "model.engine.json", **sidecar, "build_s": round(build_s, 2),
            "parity": par, "latency_ms": round(m.median_ms, 5), "latency_p90_ms": round(m.p90_ms, 5),
            "latency_stable": m.stable, "latency_backend": f"TensorRT {precision}, batch 1"}


def jetson_bundle(model, x: torch.Tensor, spec, out: Path, precision: str, max_batch: int = 32) -> dict:
    """ONNX + a build script for the device: a TensorRT engine must be built on the GPU it runs on."""
    out.mkdir(parents=True, exist_ok=True)
    data = onnx_from_module(model, x[:1])
    save_onnx(data, out / "model.onnx")
    shape = "x".join(str(s) for s in x.shape[1:])
    flags = (f"--onnx=model.onnx --saveEngine=model.engine --minShapes=x:1x{shape} --optShapes=x:1x{shape} "
             f"--maxShapes=x:{max_batch}x{shape}" + (" --fp16" if precision == "fp16" else "") + " --skipInference")
    script = f"""#!/usr/bin/env bash
# Build the TensorRT engine for {spec.name} on the device itself (engines are GPU- and version-specific),
# then time it. Needs JetPack's trtexec.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}
"$TRTEXEC" {flags}
"$TRTEXEC" --loadEngine=model.engine --shapes=x:1x{shape} --useCudaGraph --warmUp=500 --duration=5 | tail -n 20
"""
    atomic_write_text(out / "build_engine.sh", script)
    os.chmod(out / "build_engine.sh", 0o755)
    np.save(out / "parity_inputs.npy", x.numpy())
    with torch.inference_mode():
        np.save(out / "parity_logits.npy", model(x).numpy())
    manifest = {"device": spec.id, "precision": precision, "onnx": "model.onnx", "sha256": sha256_file(out / "model.onnx"),
                "trtexec_flags": flags, "parity_inputs": "parity_inputs.npy", "parity_logits": "parity_logits.npy"}
    atomic_write_json(out / "bundle.json", manifest)
    return {"format": "tensorrt-bundle", "bundle": str(out), **manifest}


def export_run(run: Path, fmt: str, precision: str | None, device: str | None, out: Path | None, bundle: Path | None,
               allow_over_budget: bool, force: bool) -> dict:
    from dery_deploy.profile.devices import get_device
    from dery_deploy.train.finetune import load_run_model
    from dery_deploy.zoo.load import get_zoo

    if fmt not in ("onnx", "tensorrt", "aoti"):
        raise DeryError(f"--format must be onnx, tensorrt or aoti, got {fmt!r}", "export")
    model, cfg = load_run_model(run)
    zoo = get_zoo(cfg.get("zoo_ref", cfg["zoo"]))
    spec = get_device(device) if device else None
    prec = precision or (spec.default_precision if spec else "fp32")
    if prec not in ("fp32", "fp16"):
        raise DeryError(f"--precision must be fp32 or fp16, got {prec!r}", "export")
    out = Path(out or Path(run) / "export")
    x = _inputs(cfg, zoo)
    if bundle is not None:
        if fmt != "tensorrt" or spec is None or spec.kind != "jetson":
            raise DeryError("--bundle is for `--format tensorrt --device <jetson id>`", "export")
        if bundle.exists() and any(bundle.iterdir()) and not force:
            raise DeryError(f"bundle folder {bundle} exists; pass --force or choose another", "export")
        return jetson_bundle(model, x, spec, bundle, prec)
    artifact = {"onnx": "model.onnx", "tensorrt": "model.engine", "aoti": "model.pt2"}[fmt]
    if (out / artifact).exists() and not force:
        raise DeryError(f"{out / artifact} exists; pass --force to overwrite it", "export")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        if prec != "fp32":
            raise DeryError("ONNX export is fp32 (ONNX Runtime CPU); use --format tensorrt for fp16", "export")
        rep = export_onnx(model, x, out)
    elif fmt == "aoti":
        dev = "cuda" if (spec and spec.kind == "cuda") else "cpu"
        if dev == "cuda" and not torch.cuda.is_available():
            raise DeryError(f"--device {spec.id} needs a CUDA GPU for a CUDA AOTInductor package; none here", "export")
        rep = export_aoti(model, x, out, dev)
    else:
        rep = export_tensorrt(model, x, out, prec)
    if "latency_ms" in rep:
        rep["budget"] = budget_check(cfg, rep["latency_ms"], rep.get("device", "cuda" if fmt == "tensorrt" else "cpu"))
    rep.update({"run": str(run), "precision": prec, "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
    atomic_write_json(out / f"report-{fmt}.json", rep)
    if rep.get("parity") and not rep["parity"]["ok"]:
        raise DeryError(f"{fmt} parity failed: max |diff| {rep['parity']['max_abs_diff']:.3g} (tolerance "
                        f"{rep['parity']['tolerance']:g}), top-1 agreement {100 * rep['parity']['top1_agreement']:.1f}%; "
                        f"see {out / f'report-{fmt}.json'}", "export")
    b = rep.get("budget", {})
    if b.get("checked") and not b["within_budget"] and not allow_over_budget:
        raise DeryError(f"OVER BUDGET: {fmt} artifact runs in {b['measured_ms']:.4f} ms, budget {b['budget_ms']:g} ms "
                        f"(+{100 * b['model_error']:.1f}% model error = {b['limit_ms']:.4f} ms); pass --allow-over-budget "
                        "to accept it", "export")
    return rep
