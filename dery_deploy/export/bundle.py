"""Edge bundles: what ships to a Jetson, where the TensorRT engine must be built (engines are GPU-
and TensorRT-version specific).

A bundle holds the ONNX (fp32, plus an fp16 one for TensorRT 11, which builds only strongly typed
networks, or for int8 the QDQ INT8 ONNX of `runtime.quantize`), `build_engine.sh` (the exact
trtexec flags, chosen by the device's TensorRT version), the parity inputs and the PyTorch logits,
and `check_engine.py`, which on the device runs the built engine on the parity inputs, compares the
logits (an INT8 engine: its top-1 agreement), times it and judges the plan's budget, writing
`check-result.json`. Every file is readable by others (a bundle is copied to another machine and
user).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from dery_deploy.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from dery_deploy.network.plan import Plan
from dery_deploy.runtime.evaluate import artifact_runner
from dery_deploy.runtime.onnx import onnx_from_module, save_onnx
from dery_deploy.runtime.quantize import qdq_from_module

FP16_TOL = 5e-2
INT8_AGREEMENT_SLACK = 0.05  # 3 of the 64 parity images may flip between INT8 kernels


def build_script(spec, shape: str, batch: int, max_batch: int, precision: str) -> str:
    """build_engine.sh: trtexec flags chosen on the device from its trtexec's help text (module docstring)."""
    shapes = f"--minShapes=x:1x{shape} --optShapes=x:{batch}x{shape} --maxShapes=x:{max_batch}x{shape}"
    if precision == "fp16":
        build = """# TensorRT 10 builds fp16 from the fp32 ONNX with --fp16 (weak typing); TensorRT 11 has no --fp16 and
# builds only strongly typed networks: the fp16 ONNX carries the precision. The version decides, where the
# banner gives one; a help text without --fp16 is the fallback.
if [ "$MAJOR" -ge 11 ] || { [ "$MAJOR" -eq 0 ] && ! has --fp16; }; then
  if has --stronglyTyped; then FLAGS+=(--stronglyTyped); fi
  run "$TRTEXEC" --onnx=model-fp16.onnx "${FLAGS[@]}"
else
  run "$TRTEXEC" --onnx=model.onnx --fp16 "${FLAGS[@]}"
fi"""
    elif precision == "int8":
        build = """# INT8 is the QDQ ONNX on both: TensorRT 10 runs its Q/DQ layers in INT8 with --int8 (no --fp16:
# the other layers stay fp32, as measured on the host); TensorRT 11 reads the precision from the Q/DQ
# types of a strongly typed network and has no --int8.
if [ "$MAJOR" -ge 11 ] || { [ "$MAJOR" -eq 0 ] && ! has --int8; }; then
  if has --stronglyTyped; then FLAGS+=(--stronglyTyped); fi
  run "$TRTEXEC" --onnx=model-int8.onnx "${FLAGS[@]}"
else
  if has --noTF32; then FLAGS+=(--noTF32); fi
  run "$TRTEXEC" --onnx=model-int8.onnx --int8 "${FLAGS[@]}"
fi"""
    else:
        build = """# fp32 means fp32: TensorRT runs fp32 layers in TF32 (10-bit mantissas) unless told not to
if has --noTF32; then FLAGS+=(--noTF32); fi
run "$TRTEXEC" --onnx=model.onnx "${FLAGS[@]}"
"""
    return f"""#!/usr/bin/env bash
# Build the {precision} TensorRT engine for {spec.name} on the device itself, then check it:
#   bash build_engine.sh && python3 check_engine.py        (TRTEXEC=PATH to use another trtexec)
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}
if ! command -v "$TRTEXEC" >/dev/null; then
  echo "build_engine.sh: trtexec not found at $TRTEXEC; set TRTEXEC=PATH (JetPack: /usr/src/tensorrt/bin/trtexec)" >&2
  exit 1
fi
# The help text is read once and whole: `trtexec --help | grep -q` under pipefail fails whenever grep stops
# reading at its match and trtexec dies of SIGPIPE, which read as "flag absent" and took the wrong branch.
HELP=$("$TRTEXEC" --help 2>&1) || true
has() {{ [[ $HELP == *"$1"* ]]; }}
MAJOR=0  # the banner spells 10.3.0 as v100300 and 8.6.2 as v8602
banner='TensorRT v([0-9]+)'
if [[ $HELP =~ $banner ]]; then
  v=${{BASH_REMATCH[1]}}
  if [ "$v" -ge 10000 ]; then MAJOR=$((v / 10000)); else MAJOR=$((v / 1000)); fi
fi
run() {{ echo "+ $*"; "$@"; }}
FLAGS=(--saveEngine=model.engine {shapes})
# TensorRT 8.6 renamed --buildOnly to --skipInference; older trtexecs know only --buildOnly
if has --skipInference; then FLAGS+=(--skipInference); elif has --buildOnly; then FLAGS+=(--buildOnly); fi
{build.strip()}
echo "engine built: model.engine; now run: python3 check_engine.py"
"""


@dataclass(frozen=True)
class Int8Parity:
    """What check_engine.py holds an INT8 engine to on the device: top-1 agreement with the fp32 PyTorch logits
    at least that of the same QDQ ONNX run here by ONNX Runtime, less INT8_AGREEMENT_SLACK."""

    int8_top1_agreement_here: float
    min_top1_agreement: float

    def to_dict(self) -> dict:
        # no tolerance: max |diff| means nothing for INT8, the agreement is what is held
        return {"tolerance": None, **asdict(self)}


def int8_engine_parity(model, qdq: bytes, x: torch.Tensor) -> Int8Parity:
    """The INT8 engine's parity bar (`Int8Parity`): the engine's INT8 kernels round differently from ONNX
    Runtime's, hence the slack."""
    with torch.inference_mode():
        ref = model(x).numpy().argmax(1)
    here = float((artifact_runner(qdq, "onnxruntime")(x).argmax(1) == ref).mean())
    return Int8Parity(round(here, 5), round(max(0.0, here - INT8_AGREEMENT_SLACK), 5))


@dataclass(frozen=True)
class BundleReport:
    """An edge bundle's report (`report-tensorrt.json` in the bundle): what was shipped where, and why it has
    no budget verdict yet (the engine is built, timed and judged on the device)."""

    FORMAT: ClassVar[str] = "tensorrt-bundle"
    MANIFEST: ClassVar[str] = "bundle.json"

    bundle: str  # the bundle's folder
    precision: str
    device: str  # the device's id
    batch: int
    unjudged: str  # why the report has no budget verdict (`_budget_to_judge`)
    next: str  # what the user does with the bundle

    @property
    def format(self) -> str:
        return self.FORMAT

    def to_dict(self) -> dict[str, object]:
        return {
            "format": self.FORMAT,
            "bundle": self.bundle,
            "precision": self.precision,
            "device": self.device,
            "batch": self.batch,
            "budget": {"checked": False, "reason": self.unjudged},
            "manifest": self.MANIFEST,
            "next": self.next,
        }


def jetson_bundle(
    model,
    x: torch.Tensor,
    spec,
    out: Path,
    precision: str,
    batch: int,
    plan: Plan | None,
    max_batch: int = 32,
    calibration: torch.Tensor | None = None,
) -> BundleReport:
    """Write the bundle (module docstring) and return its report; `calibration`: the images an int8
    bundle's QDQ ONNX is calibrated on (the task's unlabelled images)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    files, int8_parity = _write_onnx(model, x, out, precision, calibration)
    shape = "x".join(str(s) for s in x.shape[1:])
    max_batch = max(max_batch, batch, x.shape[0])
    atomic_write_text(out / "build_engine.sh", build_script(spec, shape, batch, max_batch, precision))
    (out / "build_engine.sh").chmod((out / "build_engine.sh").stat().st_mode | 0o111)
    atomic_write_bytes(out / "parity_inputs.bin", np.ascontiguousarray(x.numpy(), dtype=np.float32).tobytes())
    with torch.inference_mode():
        atomic_write_bytes(
            out / "parity_logits.bin", np.ascontiguousarray(model(x).numpy(), dtype=np.float32).tobytes()
        )
    shutil.copyfile(Path(__file__).with_name("engine_check.py"), out / "check_engine.py")
    (out / "check_engine.py").chmod(0o755)
    budget, why = _budget_to_judge(plan, spec, out)
    manifest = {
        "device": spec.id,
        "device_name": spec.name,
        "precision": precision,
        "batch": batch,
        "input": {"name": "x", "shape": list(x.shape[1:])},
        "output": "y",
        "parity": {
            "images": int(x.shape[0]),
            "inputs": "parity_inputs.bin",
            "logits": "parity_logits.bin",
            "classes": int(model(x[:1]).shape[1]),
            "tolerance": FP16_TOL if precision == "fp16" else 1e-3,
            **(int8_parity.to_dict() if int8_parity is not None else {}),
        },
        "budget_ms": budget,
        "predicted_ms": plan.predicted.latency_ms if plan and plan.predicted else None,
        "files": {f: sha256_file(out / f) for f in files + ["parity_inputs.bin", "parity_logits.bin"]},
    }
    atomic_write_json(out / BundleReport.MANIFEST, manifest)
    next_step = f"copy {out} to the {spec.name}, run build_engine.sh, then python3 check_engine.py"
    return BundleReport(str(out), precision, spec.id, batch, why, next_step)


def _write_onnx(
    model, x: torch.Tensor, out: Path, precision: str, calibration: torch.Tensor | None
) -> tuple[list[str], Int8Parity | None]:
    """The bundle's ONNX files (fp32, plus the fp16 or QDQ INT8 one the precision needs) and, for int8, the
    engine's parity bar."""
    save_onnx(onnx_from_module(model, x[:1]), out / "model.onnx")
    files = ["model.onnx"]
    if precision == "fp16":
        save_onnx(onnx_from_module(model, x[:1], precision="fp16"), out / "model-fp16.onnx")
        files.append("model-fp16.onnx")
    if precision != "int8":
        return files, None
    if calibration is None:
        raise ValueError("an int8 bundle needs calibration images")
    qdq = qdq_from_module(model, calibration)
    save_onnx(qdq, out / "model-int8.onnx")
    files.append("model-int8.onnx")
    return files, int8_engine_parity(model, qdq, x)


def _budget_to_judge(plan: Plan | None, spec, out: Path) -> tuple[float | None, str]:
    """The budget check_engine.py judges the engine by (None: it only times it), and why the report has no
    verdict yet."""
    # the plan's budget is a promise for the plan's device only; another device's engine is timed, not judged
    plan_device = plan.device if plan else None
    budget = plan.budget.latency_ms if plan and plan.budget and plan_device == spec.id else None
    why = (
        f"not measured yet: check_engine.py measures the engine on the device and judges the budget there "
        f"(writes {out.name}/check-result.json)"
        if budget is not None
        else f"the plan's budget is for {plan_device!r}, not {spec.id!r}: check_engine.py times the engine but "
        f"judges no budget (plan for it with --device {spec.id})"
        if plan
        else "no plan budget (a donor run)"
    )
    return budget, why
