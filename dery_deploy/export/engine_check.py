#!/usr/bin/env python3
"""Check a TensorRT engine built from a dery_deploy bundle, on the device it was built on.

Needs only NumPy and TensorRT's `trtexec` (JetPack: /usr/src/tensorrt/bin/trtexec); it does not
import dery_deploy. It runs the engine on the bundle's parity images, compares the logits with the
PyTorch ones shipped beside them, times batch inference with CUDA graphs, judges the plan's
latency budget, and writes check-result.json.

The budget is judged as `dery bench` judges a package (one rule, whichever tool measured): the latency
at the budget's percentile over all timed iterations, its block-bootstrap standard error, and
`within_budget`. `summarise` and `within_budget` below are verbatim copies of
`dery_deploy/deploy/bench.py`'s (this file runs alone on the device and cannot import the package;
tests/deploy/test_shared_verdict.py holds the copies equal).

Exit code: 0 parity holds and the budget is kept (or there is none), 1 parity failed (or an error),
2 over budget, 3 undecided (the standard error stayed above MAX_ALLOWANCE: rerun on a quieter device).

    python3 check_engine.py                     # in the bundle folder, after build_engine.sh
    python3 check_engine.py --bundle DIR --trtexec /usr/src/tensorrt/bin/trtexec
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

# copied from dery_deploy/deploy/bench.py with `summarise` and `within_budget` (module docstring)
BLOCKS = 20
BOOTSTRAP = 300
MAX_ALLOWANCE = 0.02


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


def summarise(samples: np.ndarray, rng: np.random.Generator) -> tuple[dict[int, float], dict[int, float], float]:
    """Percentiles over all calls, their relative block-bootstrap standard errors, and the noise index."""
    qs = (50, 90, 99)
    est = {q: float(np.percentile(samples, q)) for q in qs}
    blocks = np.array_split(samples, min(BLOCKS, len(samples)))
    idx = rng.integers(0, len(blocks), size=(BOOTSTRAP, len(blocks)))
    boot = np.array([np.percentile(np.concatenate([blocks[i] for i in row]), qs) for row in idx])
    se = {q: float(boot[:, k].std() / max(est[q], 1e-12)) for k, q in enumerate(qs)}
    medians = np.array([np.median(b) for b in blocks])
    noise = max(0.0, float(np.median(medians) / max(np.percentile(medians, 25), 1e-12) - 1))
    return est, se, noise


def within_budget(value: float, budget: float, se: float) -> bool | None:
    """The one rule: within when value <= budget * (1 + se); a standard error above MAX_ALLOWANCE decides
    only a value that is over or under the budget by more than that error, and leaves the rest undecided."""
    limit = budget * (1 + se)
    if se <= MAX_ALLOWANCE or value > limit or value * (1 + se) <= budget:
        return value <= limit
    return None


def judge_times(samples, budget, percentile=50):
    """trtexec's per-iteration times (ms) judged against `budget` at `percentile` (module docstring)."""
    samples = np.asarray(samples[len(samples) // 10 :], dtype=np.float64)  # the first tenth still warms up
    est, se, noise = summarise(samples, np.random.default_rng(0))
    within = None if budget is None else within_budget(est[percentile], budget, se[percentile])
    return {
        "latency_ms": round(est[50], 5),
        "percentile": percentile,
        "latency_ms_at_percentile": round(est[percentile], 5),
        "standard_error": round(se[percentile], 5),
        "noise": round(noise, 4),
        "runs": len(samples),
        "within_budget": within,
        "undecided": budget is not None and within is None,
    }


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
    budget = man.get("budget_ms")
    timing = judge_times(samples, budget, int(man.get("budget_percentile") or 50))
    diff = float(np.abs(ref - got).max())
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    # an INT8 engine has no logit tolerance (tolerance null): its top-1 agreement is what is held
    tol, min_agree = par["tolerance"], par.get("min_top1_agreement", 0.98)
    parity_ok = (tol is None or diff <= tol) and agree >= min_agree
    version = next(
        (line.split("TensorRT version:")[-1].strip() for line in log.splitlines() if "TensorRT version" in line), ""
    )
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
        "batch": man["batch"],
        **timing,
        "budget_ms": budget,
        "predicted_ms": man.get("predicted_ms"),
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
    q, at, se = timing["percentile"], timing["latency_ms_at_percentile"], timing["standard_error"]
    line = f"p{q} {at:.4f} ms at batch {man['batch']} (standard error ±{100 * se:.1f}%, {timing['runs']} runs)"
    if budget is not None:
        verdict = {True: "within budget", False: "OVER BUDGET", None: "undecided"}[timing["within_budget"]]
        print(f"{line}, budget {budget:g} ms -> {verdict}")
    else:
        print(line)
    print(f"wrote {os.path.join(b, 'check-result.json')}")
    if not parity_ok:
        sys.exit(1)
    sys.exit(3 if timing["undecided"] else 2 if timing["within_budget"] is False else 0)


if __name__ == "__main__":
    main()
