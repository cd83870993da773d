#!/usr/bin/env python3
"""Benchmark the profile stage and the latency model on this machine; writes JSON.

    python scripts/bench_profile.py [--zoo fashion] [--verify 20] [-o bench/profile.json]

Measures: time to profile the zoo (K=4 partition) with onnxruntime at batch 1; its repeatability
(a second profile into a fresh cache: per-item relative difference); and for onnxruntime and
torch-eager (on a GPU: torch-cudagraph at batch 1 and 32) the latency model against `--verify`
random mixed assemblies measured end to end: raw sum of items, at the reference machine speed,
and the model as chosen (with its sum-of-parts correction), all leave-one-out.
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

    result = {"machine": machine(), "zoo": args.zoo, "K": 4, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        zoo, _, part, dis = workspace(args.zoo, cache)
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
            [path] = run_profile(zoo, spec, backend, prec, [batch], part, dis, cache / "a", num_classes=10)
            entry = {
                "backend": backend,
                "precision": prec,
                "batch": batch,
                "profile_seconds": round(time.time() - t0, 1),
                "items": len(read_profile(path).records),
            }
            if (backend, batch) == configs[0][::2]:
                [path2] = run_profile(zoo, spec, backend, prec, [batch], part, dis, cache / "b", num_classes=10)
                a, b = read_profile(path).records, read_profile(path2).records
                rel = sorted(abs(a[k].median_ms - b[k].median_ms) / a[k].median_ms for k in a)
                entry["repeatability"] = {
                    "median_rel_diff": round(statistics.median(rel), 4),
                    "p90_rel_diff": round(rel[int(0.9 * (len(rel) - 1))], 4),
                    "unstable_items": sum(not r.stable for r in a.values()),
                }
            v = verify(zoo, spec, path, part, dis, args.verify, seed=0)
            entry["verify"] = {k: val for k, val in v.to_dict().items() if k != "assemblies"}
            entry["verify"]["assemblies"] = [r.__dict__ for r in v.assemblies]
            entry["verify"]["target"] = "median <= 3%, max <= 8% (onnxruntime CPU, quiet period)"
            result["runs"].append(entry)
            print(
                backend,
                prec,
                batch,
                entry["profile_seconds"],
                "s;",
                {
                    k: entry["verify"][k]
                    for k in (
                        "speed",
                        "scale",
                        "median_abs_rel_error",
                        "max_abs_rel_error",
                        "raw_median_abs_rel_error",
                        "raw_max_abs_rel_error",
                        "calibrated_median_abs_rel_error",
                        "calibrated_max_abs_rel_error",
                    )
                },
                flush=True,
            )
    result["targets"] = {"profile_seconds_fashion_K4": "< 180 s"}
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
