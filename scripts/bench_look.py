#!/usr/bin/env python3
"""Which recorded figure does `dery bench` reproduce: a shipped file's figure among other files (as the run's
final pass times it) or a look at its package alone (`runtime.worker.bench_package`, what the run's verdict
reads since 84e9de5)? Writes bench/look.json.

    python scripts/bench_look.py PACKAGE [PACKAGE ...] [--reps 5] [-o bench/look.json]

Per repeat, in a seeded shuffled order: one crowd pass (every package's file among the packages' model and
reference files on both runtimes at 1 and 2 threads, in a measurement worker, with the final pass's options and
its 3 s least duration), one look at each package alone, and one `dery bench PACKAGE --json` of each (its own
process, as a user runs it). Each figure is taken over the reference workload of its own measurement (the
machine's speed then), and each procedure's median over the repeats is compared with `dery bench`'s: the host
drifts between repeats, interleaving and the reference take that out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench_common import ROOT, machine

from dery_deploy.artifacts import atomic_write_json


def crowd_items(packages: list[Path], tmp: Path) -> list:
    """Each package's file as it ships, then the crowd: every package's ONNX file and reference on both runtimes
    at 1 and 2 threads (what does not run on a runtime is left out), and the reference workload per runtime."""
    from dery_deploy.deploy.info import read_package
    from dery_deploy.runtime.calibration import reference_item
    from dery_deploy.runtime.worker import FileItem

    items = []
    for d in packages:
        info = read_package(d)
        shape = [info.runtime.batch, info.input.channels, info.input.height, info.input.width]
        items.append(FileItem(str(d), str(d / info.model), info.runtime.name, info.runtime.threads or 1, shape))
        for name, sh in (("model.onnx", shape), ("reference.onnx", [1, 16, 32, 32])):
            if (d / name).is_file() and d / name != d / info.model:
                items += [FileItem(f"{d}|{name}|{rt}/t{t}", str(d / name), rt, t, sh)
                          for rt in ("onnxruntime", "openvino") for t in (1, 2)]  # fmt: skip
    for rt in ("onnxruntime", "openvino"):
        ref = reference_item(tmp, rt, 1)
        ref.key = f"reference|{rt}"
        items.append(ref)
    return items


def crowd(packages: list[Path], rows: list[dict]) -> None:
    from dery_deploy.deploy.info import read_package
    from dery_deploy.pipeline.final_pass import FINAL_MIN_S
    from dery_deploy.runtime.harness import TimingOptions
    from dery_deploy.runtime.worker import measure_files

    with tempfile.TemporaryDirectory() as tmp:
        res = measure_files(crowd_items(packages, Path(tmp)), replace(TimingOptions.for_budget(50), min_s=FINAL_MIN_S))
    for d in packages:
        ref = res.measurements[f"reference|{read_package(d).runtime.name}"].promise_at(50)
        rows.append({"how": "crowd", "package": str(d), "p50_ms": res.measurements[str(d)].promise_at(50),
                     "reference_ms": ref})  # fmt: skip


def look(d: Path, rows: list[dict]) -> None:
    from dery_deploy.pipeline.final_pass_file import LOOK_SECONDS
    from dery_deploy.runtime.worker import bench_package

    res, _ = bench_package(d, 50, LOOK_SECONDS)
    rows.append({"how": "look", "package": str(d), "p50_ms": res.p50_ms, "reference_ms": res.reference_ms})


def dery_bench(d: Path, rows: list[dict]) -> None:
    p = subprocess.run([sys.executable, "-m", "dery_deploy.cli.main", "bench", str(d), "--json"],
                       capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    out = json.loads(p.stdout.strip().splitlines()[-1])
    rows.append({"how": "dery bench", "package": str(d), "p50_ms": out["p50_ms"], "reference_ms": out["reference_ms"]})


def summarise(rows: list[dict], packages: list[Path]) -> dict:
    """Per package and procedure: the median relative figure (p50 / reference) and its deviation from `dery bench`'s."""
    out = {}
    for d in packages:
        rel = {h: statistics.median(r["p50_ms"] / r["reference_ms"] for r in rows if r["package"] == str(d)
                                    and r["how"] == h) for h in ("crowd", "look", "dery bench")}  # fmt: skip
        out[str(d)] = {h: {"relative": round(v, 4), "vs_dery_bench": round(v / rel["dery bench"] - 1, 4)}
                       for h, v in rel.items()}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("packages", nargs="+", type=Path)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "look.json"))
    args = ap.parse_args()
    rng, rows = random.Random(0), []
    for rep in range(args.reps):
        jobs = [("crowd", None)] + [(h, d) for d in args.packages for h in ("look", "dery bench")]
        rng.shuffle(jobs)
        for how, d in jobs:
            crowd(args.packages, rows) if how == "crowd" else look(d, rows) if how == "look" else dery_bench(d, rows)
        print(f"repeat {rep + 1} of {args.reps} done", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result = {"commit": commit.stdout.strip(), "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "reps": args.reps, "summary": summarise(rows, args.packages), "rows": rows}  # fmt: skip
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
