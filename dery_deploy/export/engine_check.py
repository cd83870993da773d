#!/usr/bin/env python3
"""Check a TensorRT engine built from a dery_deploy bundle, on the device it was built on.

Needs only NumPy and TensorRT's `trtexec` (JetPack: /usr/src/tensorrt/bin/trtexec); it does not
import dery_deploy. It runs the engine on the bundle's parity images, compares the logits with the
PyTorch ones shipped beside them, times batch inference with CUDA graphs, judges the plan's
latency budget (the only allowance is the timing's own spread), and writes check-result.json.

    python3 check_engine.py                     # in the bundle folder, after build_engine.sh
    python3 check_engine.py --bundle DIR --trtexec /usr/src/tensorrt/bin/trtexec
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np


def power_state(sysfs="/sys", nvpmodel=None):
    """The Jetson's power mode (nvpmodel) and GPU clocks, pinned or not (jetson_clocks pins the minimum to the
    maximum): a Jetson's latency depends on both, so every measurement records them. None where unreadable.
    The same function is in the profile runner and check_engine.py (each runs alone on the device)."""
    state = {"nvpmodel": None, "gpu_freq_mhz": None, "jetson_clocks": None}
    tool = nvpmodel or shutil.which("nvpmodel")
    if tool:
        try:
            out = subprocess.run([tool, "-q"], capture_output=True, text=True, timeout=10).stdout
            lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
            for i, ln in enumerate(lines):
                if ln.startswith("NV Power Mode"):
                    mode_id = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].isdigit() else None
                    state["nvpmodel"] = {"mode": ln.split(":", 1)[1].strip(), "id": mode_id and int(mode_id)}
        except (OSError, subprocess.SubprocessError):
            pass
    root = os.path.join(sysfs, "class", "devfreq")
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    for name in names:  # the GPU's devfreq node: 17000000.gpu (JetPack 6), 17000000.ga10b (JetPack 5)
        if not re.search(r"gpu|ga10b|gv11b|gp10b", name):
            continue
        try:
            freq = {}
            for key in ("cur", "min", "max"):
                with open(os.path.join(root, name, f"{key}_freq")) as f:
                    freq[key] = round(int(f.read().strip()) / 1e6, 1)
        except (OSError, ValueError):
            continue
        state["gpu_freq_mhz"] = freq
        state["jetson_clocks"] = freq["min"] == freq["max"]
        break
    return state


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:2])} failed (exit {p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
    return p.stdout


def exported_output(path, name, count):
    """trtexec --exportOutput JSON: a list of {name, dimensions, values}."""
    with open(path) as f:
        data = json.load(f)
    for t in data if isinstance(data, list) else [data]:
        if t.get("name") == name:
            values = np.asarray(t["values"], dtype=np.float32)
            return values.reshape(count, -1)
    sys.exit(f"error: {path} has no output named {name!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--engine", default="model.engine")
    ap.add_argument("--trtexec", default=shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec")
    args = ap.parse_args()
    b = args.bundle
    with open(os.path.join(b, "bundle.json")) as f:
        man = json.load(f)
    engine = os.path.join(b, args.engine)
    if not os.path.exists(engine):
        sys.exit(f"error: {engine} not found: run build_engine.sh first")
    if not os.path.exists(args.trtexec):
        sys.exit(f"error: trtexec not found at {args.trtexec}; pass --trtexec PATH")
    par = man["parity"]
    shape = "x".join(str(s) for s in man["input"]["shape"])
    n = par["images"]
    ref = np.fromfile(os.path.join(b, par["logits"]), dtype=np.float32).reshape(n, -1)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        run(
            [
                args.trtexec,
                f"--loadEngine={engine}",
                f"--shapes=x:{n}x{shape}",
                f"--loadInputs=x:{os.path.join(b, par['inputs'])}",
                f"--exportOutput={out}",
                "--iterations=1",
                "--warmUp=0",
                "--duration=0",
            ]
        )
        got = exported_output(out, man["output"], n)
        times = os.path.join(tmp, "times.json")
        log = run(
            [
                args.trtexec,
                f"--loadEngine={engine}",
                f"--shapes=x:{man['batch']}x{shape}",
                "--useCudaGraph",
                "--warmUp=500",
                "--duration=5",
                f"--exportTimes={times}",
            ]
        )
        with open(times) as f:
            samples = [t["computeMs"] for t in json.load(f)]
    samples = samples[len(samples) // 10 :]  # the first tenth still warms up
    k = max(1, len(samples) // 3)
    windows = [statistics.median(samples[i * k : (i + 1) * k]) for i in range(3) if samples[i * k : (i + 1) * k]]
    median = statistics.median(samples)
    noise = (max(windows) - min(windows)) / (2 * min(windows)) if len(windows) > 1 else 0.0
    diff = float(np.abs(ref - got).max())
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    # an INT8 engine has no logit tolerance (tolerance null): its top-1 agreement is what is held
    tol, min_agree = par["tolerance"], par.get("min_top1_agreement", 0.98)
    parity_ok = (tol is None or diff <= tol) and agree >= min_agree
    version = next(
        (line.split("TensorRT version:")[-1].strip() for line in log.splitlines() if "TensorRT version" in line), ""
    )
    budget = man.get("budget_ms")
    result = {
        "kind": "engine-check",
        "device": man["device"],
        "tensorrt": version,
        "precision": man["precision"],
        "parity": {
            "images": n,
            "max_abs_diff": diff,
            "top1_agreement": agree,
            "tolerance": tol,
            "min_top1_agreement": min_agree,
            "ok": parity_ok,
        },
        "latency_ms": round(median, 5),
        "batch": man["batch"],
        "noise": round(noise, 4),
        "runs": len(samples),
        "budget_ms": budget,
        "predicted_ms": man.get("predicted_ms"),
        "within_budget": None if budget is None else median <= budget * (1 + noise),
        "power": power_state(),  # nvpmodel mode and GPU clocks: the latency holds for these settings
    }
    tmp_out = os.path.join(b, ".check-result.json.tmp")
    with open(tmp_out, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp_out, os.path.join(b, "check-result.json"))
    limit = "no logit tolerance for INT8" if tol is None else f"tolerance {tol:g}"
    print(
        f"parity: max |diff| {diff:.3g} ({limit}), top-1 agreement {100 * agree:.1f}% (at least "
        f"{100 * min_agree:.1f}%) -> {'OK' if parity_ok else 'FAILED'}"
    )
    if budget is not None:
        verdict = "within budget" if result["within_budget"] else "OVER BUDGET"
        print(
            f"latency {median:.4f} ms at batch {man['batch']} (noise ±{100 * noise:.1f}%), "
            f"budget {budget:g} ms -> {verdict}"
        )
    else:
        print(f"latency {median:.4f} ms at batch {man['batch']} (noise ±{100 * noise:.1f}%)")
    print(f"wrote {os.path.join(b, 'check-result.json')}")
    sys.exit(0 if parity_ok and result["within_budget"] is not False else 1)


if __name__ == "__main__":
    main()
