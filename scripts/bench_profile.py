#!/usr/bin/env python3
"""Benchmark the profile stage on this machine; writes JSON.

    python scripts/bench_profile.py [--zoo fashion] [--verify 20] [-o bench/profile.json]

Measures: time to profile the zoo's partition (K=4) with onnxruntime at batch 1; its repeatability
(a second run into a fresh cache: median relative difference per item); the latency model's error
from `--verify` (random mixed assemblies measured end to end) for onnxruntime and torch-eager; on a
GPU machine, also torch-cudagraph at batch 1 and 32.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_common import ROOT, machine, workspace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="fashion")
    ap.add_argument("--verify", type=int, default=20)
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "profile.json"))
    args = ap.parse_args()

    import torch

    from dery_deploy.artifacts import atomic_write_json
    from dery_deploy.profile.run import run_profile, verify
    from dery_deploy.profile.store import read_profile
    from dery_deploy.runtime.devices import get_device, this_machine

    result = {"machine": machine(), "zoo": args.zoo, "K": 4}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        zoo, sim, part, dis = workspace(args.zoo, cache)
        spec = this_machine()[0] if torch.cuda.is_available() else get_device("cpu")
        configs = (
            [("onnxruntime", "fp32", 1), ("torch-eager", "fp32", 1)]
            if spec.kind == "cpu"
            else [("torch-cudagraph", "fp16", 1), ("torch-cudagraph", "fp16", 32), ("torch-eager", "fp16", 1)]
        )
        result["device"] = spec.id
        result["runs"] = []
        for backend, prec, batch in configs:
            t0 = time.time()
            [path] = run_profile(zoo, spec, backend, prec, [batch], part, dis, cache / "a")
            seconds = time.time() - t0
            entry = {
                "backend": backend,
                "precision": prec,
                "batch": batch,
                "profile_seconds": round(seconds, 1),
                "items": len(read_profile(path)["records"]),
            }
            if backend == configs[0][0] and batch == configs[0][2]:
                [path2] = run_profile(zoo, spec, backend, prec, [batch], part, dis, cache / "b")
                a, b = read_profile(path)["records"], read_profile(path2)["records"]
                rel = [abs(a[k]["median_ms"] - b[k]["median_ms"]) / a[k]["median_ms"] for k in a]
                entry["repeatability"] = {
                    "median_rel_diff": round(statistics.median(rel), 4),
                    "p90_rel_diff": round(sorted(rel)[int(0.9 * (len(rel) - 1))], 4),
                    "unstable_items": sum(not r["stable"] for r in a.values()),
                }
            v = verify(zoo, spec, path, part, dis, args.verify, seed=0)
            entry["verify"] = {
                k: v[k] for k in ("n", "median_abs_rel_error", "max_abs_rel_error", "mean_signed_rel_error")
            }
            entry["verify"]["target"] = "median < 3%, max < 8%"
            entry["verify"]["assemblies"] = v["assemblies"]
            result["runs"].append(entry)
            print(
                backend,
                prec,
                batch,
                {k: v for k, v in entry.items() if k != "verify"},
                entry["verify"]["median_abs_rel_error"],
                entry["verify"]["max_abs_rel_error"],
                flush=True,
            )
    result["targets"] = {"profile_seconds_fashion_K4": "< 180 s"}
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
