#!/usr/bin/env python3
"""Profile-bundle runner: measures every ONNX item of a dery_deploy bundle on the device it runs on.

Needs only NumPy plus TensorRT's `trtexec` (JetPack ships it at /usr/src/tensorrt/bin/trtexec) or,
with --backend onnxruntime, the onnxruntime package. It does not import dery_deploy.

    python3 runner.py --bundle DIR --out result.json                 # TensorRT (trtexec)
    python3 runner.py --bundle DIR --out result.json --backend onnxruntime

The result is rewritten after every item, so an interrupted run picks up where it stopped when it is
started again with the same --out. A failed item is recorded with its error and the run goes on; the
runner exits non-zero at the end naming the failed items (rerun to retry just those).

With TensorRT each item's engine is built once for the range of the manifest's batch sizes, with one
timing cache for the whole bundle (<bundle>/timing.cache), and each batch size is timed from it.

Then, on the host: dery profile --import result.json
"""

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SCHEMA = 1
BUILD_TIMEOUT_S = 3600  # one engine build on an Orin Nano takes minutes; an hour means trtexec hangs
TIME_TIMEOUT_S = 600


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
        fp = {"kind": "jetson", "gpu_name": model, "memory_mb": mem, "power": power_state()}
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


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file(bundle, item, name):
    """Refuse an item file that is not the one the manifest lists (a bundle damaged on its way to the device)."""
    want = item.get("sha256_fp16" if name == item.get("file_fp16") else "sha256")
    if want and sha256_file(os.path.join(bundle, name)) != want:
        raise RuntimeError(f"{name} does not match the manifest's sha256: copy the bundle again")


def write_json_atomic(path, obj):
    """Write JSON through a temporary file and a rename, so a kill leaves the old file or the new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def error_text(e):
    return f"{type(e).__name__}: {e}"[:4000]


# ---------------------------------------------------------------- onnxruntime


def run_onnxruntime(path, input_shape, batches, threads):
    """Records per batch size ({"error": ...} for a batch that failed) and onnxruntime's version."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    recs = {}
    for batch in batches:
        try:
            x = np.random.default_rng(0).standard_normal([batch] + input_shape).astype(np.float32)
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
            recs[batch] = rec
        except Exception as e:  # noqa: BLE001 - recorded for this batch; the run goes on
            recs[batch] = {"error": error_text(e)}
    return recs, ort.__version__


# ---------------------------------------------------------------- TensorRT (trtexec)


def trtexec_features(help_text):
    """What this trtexec accepts, read from its --help: TensorRT 11 dropped --fp16 (networks are strongly
    typed, precision comes from the ONNX), TensorRT 8.6 renamed --buildOnly to --skipInference. Where the
    banner gives a version it decides weak typing; the help text naming --fp16 is the fallback."""
    version, major = "", None
    m = re.search(r"TensorRT v(\d+)", help_text)
    if m:  # the banner spells 10.3.0 as v100300 (major * 10000 + ...), 8.5.2 as v8502 (major * 1000 + ...)
        v = int(m.group(1))
        major, rest = divmod(v, 10000 if v >= 10000 else 1000)
        version = f"{major}.{rest // 100}.{rest % 100}"
    return {
        "fp16": "--fp16" in help_text and (major is None or major < 11),
        "build_only": "--skipInference"
        if "--skipInference" in help_text
        else ("--buildOnly" if "--buildOnly" in help_text else None),
        "no_tf32": "--noTF32" in help_text,
        "strongly_typed": "--stronglyTyped" in help_text,
        "version": version,
    }


def shape_arg(batch, input_shape):
    return "x:" + "x".join(str(d) for d in [batch] + list(input_shape))


def engine_plan(item, precision, features, batches, opt_batch):
    """How to build one item's engine: the ONNX to read, the precision it will run at, and a note when that
    is not the precision the manifest asks for."""
    lo, hi = min(batches), max(batches)
    plan = {
        "onnx": item["file"],
        "precision": "fp32",
        "shapes": {"min": lo, "opt": min(max(opt_batch or lo, lo), hi), "max": hi},
        "flags": [],
        "note": None,
    }
    if precision == "fp16" and features["fp16"]:  # TensorRT <= 10: weakly typed, the builder may pick fp16
        plan.update(precision="fp16", flags=["--fp16"])
    elif precision == "fp16" and item.get("file_fp16"):  # TensorRT 11: strongly typed, the ONNX is fp16
        plan.update(precision="fp16", onnx=item["file_fp16"], flags=["--stronglyTyped"] * features["strongly_typed"])
    else:
        if precision == "fp16":
            plan["note"] = (
                "trtexec has no --fp16 (TensorRT 11 builds only strongly typed networks) and the bundle has no "
                "fp16 ONNX of this item: built from the fp32 ONNX as fp32"
            )
        # fp32 means fp32: TensorRT runs fp32 layers in TF32 (10-bit mantissas) unless told not to
        plan["flags"] = ["--noTF32"] * features["no_tf32"]
    return plan


def build_command(trtexec, bundle, plan, input_shape, engine_path, cache_path, features):
    s = plan["shapes"]
    cmd = [
        trtexec,
        f"--onnx={os.path.join(bundle, plan['onnx'])}",
        f"--saveEngine={engine_path}",
        f"--timingCacheFile={cache_path}",
        f"--minShapes={shape_arg(s['min'], input_shape)}",
        f"--optShapes={shape_arg(s['opt'], input_shape)}",
        f"--maxShapes={shape_arg(s['max'], input_shape)}",
    ] + plan["flags"]
    if features["build_only"]:
        cmd.append(features["build_only"])
    return cmd


def time_command(trtexec, engine_path, batch, input_shape, times_path):
    return [
        trtexec,
        f"--loadEngine={engine_path}",
        f"--shapes={shape_arg(batch, input_shape)}",
        "--warmUp=200",
        "--duration=2",
        "--useCudaGraph",
        f"--exportTimes={times_path}",
    ]


def trtexec_version(text):
    return next((ln.split("TensorRT version:")[-1].strip() for ln in text.splitlines() if "TensorRT version" in ln), "")


def run_checked(cmd, timeout, what):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"trtexec {what} did not finish within {timeout} s: {' '.join(cmd)}") from None
    if p.returncode != 0:
        raise RuntimeError(f"trtexec {what} failed (exit {p.returncode}): {p.stdout[-1500:]}{p.stderr[-1500:]}")
    return p


def run_tensorrt(trtexec, bundle, item, batches, plan, features):
    """Build the item's engine once for all batch sizes (shared timing cache), then time each batch size from it.
    Returns records per batch ({"error": ...} for a batch that failed) and TensorRT's version."""
    os.makedirs(os.path.join(bundle, "engines"), exist_ok=True)
    name = hashlib.sha256(item["key"].encode()).hexdigest()[:16]
    engine = os.path.join(bundle, "engines", f"{name}-{plan['precision']}.plan")
    cache = os.path.join(bundle, "timing.cache")
    # trtexec rewrites the cache at the end of each build: work on a copy, so a kill mid-write cannot
    # corrupt the cache every later build reads
    work_cache = cache + ".work"
    if os.path.exists(cache):
        shutil.copyfile(cache, work_cache)
    t0 = time.perf_counter()
    try:
        p = run_checked(
            build_command(trtexec, bundle, plan, item["input_shape"], engine + ".tmp", work_cache, features),
            BUILD_TIMEOUT_S,
            f"build of {item['file']}",
        )
        os.replace(engine + ".tmp", engine)
        if os.path.exists(work_cache):
            os.replace(work_cache, cache)
    finally:
        for leftover in (engine + ".tmp", work_cache):
            if os.path.exists(leftover):
                os.remove(leftover)
    build_s = round(time.perf_counter() - t0, 3)
    version = trtexec_version(p.stdout) or features["version"]
    recs = {}
    try:
        for batch in batches:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    times = os.path.join(tmp, "times.json")
                    run_checked(
                        time_command(trtexec, engine, batch, item["input_shape"], times),
                        TIME_TIMEOUT_S,
                        f"timing of {item['file']} at batch {batch}",
                    )
                    with open(times) as f:
                        trace = json.load(f)
                # older trtexec exports its warm-up runs too; they start computing before --warmUp ms
                timed = [t for t in trace if t.get("startComputeMs", 1e9) >= 200] or trace
                rec = windows([t["computeMs"] for t in timed])
                rec["peak_memory_mb"] = None
                rec["build_s"] = build_s
                recs[batch] = rec
            except Exception as e:  # noqa: BLE001 - recorded for this batch; the run goes on
                recs[batch] = {"error": error_text(e)}
    finally:
        os.remove(engine)  # engines are large and an Orin Nano's disk is small; the timing cache is what is kept
    return recs, version


# ---------------------------------------------------------------- the run


def load_previous(path, manifest_sha, backend):
    """The result of an earlier, interrupted run of this manifest and backend at `path`, or None."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            prev = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: {path} exists but is not a result file ({e}); move it away or pass another --out")
    if prev.get("kind") != "profile-bundle-result" or prev.get("schema") != SCHEMA:
        sys.exit(f"error: {path} exists but is not a bundle result of schema {SCHEMA}; pass another --out")
    if prev.get("manifest_sha256") != manifest_sha:
        sys.exit(
            f"error: {path} was measured from another manifest than {manifest_sha[:12]}...; "
            "pass another --out (or delete it to start over)"
        )
    if prev.get("backend") != backend:
        sys.exit(f"error: {path} was measured with --backend {prev.get('backend')}, not {backend}; pass another --out")
    return prev


def measured(results, key, batches):
    """Has `key` a record without an error at every batch size?"""
    return all("error" not in results.get(str(b), {}).get(key, {"error": "missing"}) for b in batches)


def result_precision(man, results, backend):
    """The precision the records were measured at: the manifest's, unless TensorRT had to build fp32."""
    if backend == "onnxruntime":
        return "fp32"
    built = {r["precision_built"] for recs in results.values() for r in recs.values() if "precision_built" in r}
    if not built:
        return man["precision"]
    return built.pop() if len(built) == 1 else "mixed"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--backend", choices=["tensorrt", "onnxruntime"], default="tensorrt")
    ap.add_argument("--trtexec", default=shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--opt-batch",
        type=int,
        default=None,
        help="batch size TensorRT tunes each engine for (default: the smallest of the manifest's)",
    )
    args = ap.parse_args()
    man_path = os.path.join(args.bundle, "manifest.json")
    with open(man_path, "rb") as f:
        raw = f.read()
    man = json.loads(raw)
    manifest_sha = hashlib.sha256(raw).hexdigest()
    batches = [int(b) for b in man["batches"]]
    features = None
    if args.backend == "tensorrt":
        if not os.path.exists(args.trtexec):
            sys.exit(
                f"error: trtexec not found at {args.trtexec}; pass --trtexec PATH "
                "(JetPack: /usr/src/tensorrt/bin/trtexec), or measure with ONNX Runtime instead: --backend onnxruntime"
            )
        h = subprocess.run([args.trtexec, "--help"], capture_output=True, text=True)
        features = trtexec_features(h.stdout + h.stderr)

    prev = load_previous(args.out, manifest_sha, args.backend)
    out = prev or {
        "schema": SCHEMA,
        "kind": "profile-bundle-result",
        "manifest_sha256": manifest_sha,
        "device": man["device"],
        "zoo": man["zoo"],
        "structure_hash": man["structure_hash"],
        "backend": args.backend,
        "backend_version": "",
        "precision": man["precision"] if args.backend == "tensorrt" else "fp32",
        "fingerprint": {"start": fingerprint(), "end": None},
        "manifest": man,
        "results": {},
    }
    results = out["results"]
    for b in batches:
        results.setdefault(str(b), {})
    todo = [it for it in man["items"] if not measured(results, it["key"], batches)]
    if prev is not None:
        print(f"resuming {args.out}: {len(man['items']) - len(todo)} of {len(man['items'])} items already measured")
    out["complete"] = False

    for n, item in enumerate(todo, 1):
        label = f"[{n}/{len(todo)}] {item['kind']} {item['file']}"
        info = {"kind": item["kind"], **item.get("info", {})}
        extra = {}
        try:
            plan = engine_plan(item, man["precision"], features, batches, args.opt_batch) if features else None
            check_file(args.bundle, item, plan["onnx"] if plan else item["file"])
            if args.backend == "onnxruntime":
                path = os.path.join(args.bundle, item["file"])
                recs, version = run_onnxruntime(path, item["input_shape"], batches, args.threads)
            else:
                recs, version = run_tensorrt(args.trtexec, args.bundle, item, batches, plan, features)
                extra = {"precision_built": plan["precision"], "engine_batches": plan["shapes"]}
                if plan["note"]:
                    extra["precision_note"] = plan["note"]
            out["backend_version"] = version or out["backend_version"]
        except Exception as e:  # noqa: BLE001 - one item's failure is recorded; the others are still measured
            recs = {b: {"error": error_text(e)} for b in batches}
        for b in batches:
            rec = recs[b] if "error" in recs[b] else {**recs[b], **extra, **info}
            results[str(b)][item["key"]] = rec
            shown = f"error: {rec['error'][:200]}" if "error" in rec else f"{rec['median_ms']:.4f} ms"
            print(f"{label} b{b}: {shown}", flush=True)
        out["fingerprint"]["end"] = fingerprint()
        out["precision"] = result_precision(man, results, args.backend)
        write_json_atomic(args.out, out)

    errors = {k: r["error"] for recs in results.values() for k, r in recs.items() if "error" in r}
    notes = sorted({r["precision_note"] for recs in results.values() for r in recs.values() if "precision_note" in r})
    out["complete"] = True
    out["failed"] = sorted(errors)
    out["fingerprint"]["end"] = fingerprint()
    out["precision"] = result_precision(man, results, args.backend)
    write_json_atomic(args.out, out)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.out}")
    if errors:
        files = {it["key"]: it["file"] for it in man["items"]}
        lines = "\n".join(f"  {files.get(k, '?')} ({k}): {errors[k][:300]}" for k in sorted(errors))
        sys.exit(f"error: {len(errors)} of {len(man['items'])} items failed (rerun to retry them):\n{lines}")


if __name__ == "__main__":
    main()
