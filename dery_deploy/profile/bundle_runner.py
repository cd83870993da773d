#!/usr/bin/env python3
"""Profile-bundle runner: measures every ONNX item of a dery_deploy bundle on the device it runs on.

Needs only NumPy plus TensorRT's `trtexec` (JetPack ships it at /usr/src/tensorrt/bin/trtexec) or,
with --backend onnxruntime, the onnxruntime package. It does not import dery_deploy.

    python3 runner.py --bundle DIR --out result.json                 # TensorRT (trtexec)
    python3 runner.py --bundle DIR --out result.json --backend onnxruntime

Then, on the host: dery profile --import result.json
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SCHEMA = 1


def fingerprint():
    model = ""
    try:
        with open("/proc/device-tree/model", "rb") as f:
            model = f.read().decode(errors="ignore").strip("\x00").strip()
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    if "Jetson" in model or "Orin" in model:
        fp = {"kind": "jetson", "gpu_name": model, "memory_mb": mem}
        tegra = shutil.which("tegrastats")
        if tegra:
            try:
                p = subprocess.run([tegra, "--interval", "200"], capture_output=True, text=True, timeout=0.7)
                fp["tegrastats"] = (p.stdout or "").splitlines()[:1]
            except subprocess.TimeoutExpired as e:
                fp["tegrastats"] = (e.stdout.decode() if e.stdout else "").splitlines()[:1]
        return fp
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"kind": "cpu", "cpu_model": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "memory_mb": mem}


def windows(samples, tol=0.03):
    """Split per-call samples into 3+ windows; stable when the last three medians agree."""
    n = max(5, len(samples) // 10)
    meds = [statistics.median(samples[i : i + n]) for i in range(0, len(samples) - n + 1, n)]
    last = meds[-3:]
    stable = len(last) == 3 and max(last) <= min(last) * (1 + tol)
    tail = samples[-3 * n :]
    s = sorted(tail)
    return {
        "median_ms": round(statistics.median(tail), 5),
        "p90_ms": round(s[int(round(0.9 * (len(s) - 1)))], 5),
        "runs": len(samples),
        "stable": stable,
        "windows": len(meds),
        "window_medians_ms": [round(m, 5) for m in meds],
    }


def run_onnxruntime(path, shape, threads):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t_end = time.perf_counter() + 0.1
    while time.perf_counter() < t_end:
        sess.run(None, {"x": x})
    samples, t_stop = [], time.perf_counter() + 5.0
    while time.perf_counter() < t_stop:
        t0 = time.perf_counter_ns()
        sess.run(None, {"x": x})
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if len(samples) >= 60 and len(samples) % 30 == 0 and windows(samples)["stable"]:
            break
    rec = windows(samples)
    rec["peak_memory_mb"] = None
    return rec, ort.__version__


def run_trtexec(trtexec, path, shape, fp16):
    with tempfile.TemporaryDirectory() as tmp:
        times = os.path.join(tmp, "times.json")
        cmd = [
            trtexec,
            f"--onnx={path}",
            "--shapes=x:" + "x".join(map(str, shape)),
            "--warmUp=200",
            "--duration=2",
            "--useCudaGraph",
            f"--exportTimes={times}",
        ] + (["--fp16"] if fp16 else [])
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"trtexec failed on {path}: {p.stdout[-2000:]}{p.stderr[-2000:]}")
        with open(times) as f:
            samples = [t["computeMs"] for t in json.load(f)]
        version = next(
            (ln.split("TensorRT version:")[-1].strip() for ln in p.stdout.splitlines() if "TensorRT version" in ln), ""
        )
    rec = windows(samples)
    rec["peak_memory_mb"] = None
    return rec, version


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--backend", choices=["tensorrt", "onnxruntime"], default="tensorrt")
    ap.add_argument("--trtexec", default=shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    man_path = os.path.join(args.bundle, "manifest.json")
    with open(man_path, "rb") as f:
        raw = f.read()
    man = json.loads(raw)
    if args.backend == "tensorrt" and not os.path.exists(args.trtexec):
        sys.exit(
            f"error: trtexec not found at {args.trtexec}; pass --trtexec PATH (JetPack: /usr/src/tensorrt/bin/trtexec)"
        )
    fp_start = fingerprint()
    results, version = {}, ""
    total = len(man["items"]) * len(man["batches"])
    done = 0
    for batch in man["batches"]:
        recs = {}
        for item in man["items"]:
            path = os.path.join(args.bundle, item["file"])
            shape = [batch] + item["input_shape"]
            if args.backend == "onnxruntime":
                rec, version = run_onnxruntime(path, shape, args.threads)
            else:
                rec, version = run_trtexec(args.trtexec, path, shape, man["precision"] == "fp16")
            rec.update({"kind": item["kind"], **item.get("info", {})})
            recs[item["key"]] = rec
            done += 1
            print(f"[{done}/{total}] b{batch} {item['kind']} {rec['median_ms']:.4f} ms", flush=True)
        results[str(batch)] = recs
    out = {
        "schema": SCHEMA,
        "kind": "profile-bundle-result",
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "device": man["device"],
        "zoo": man["zoo"],
        "structure_hash": man["structure_hash"],
        "backend": args.backend,
        "backend_version": version,
        "precision": man["precision"] if args.backend == "tensorrt" else "fp32",
        "fingerprint": {"start": fp_start, "end": fingerprint()},
        "manifest": man,
        "results": results,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
