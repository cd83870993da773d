#!/usr/bin/env python3
"""Does a shipped package's recorded latency hold hours later on the same machine? Writes bench/hours.json.

    python scripts/bench_hours.py PACKAGE_OR_GLOB [...] [--seconds 4] [--repeats 1] [-o bench/hours.json]

Each package (a folder with deploy.json, made by any earlier `dery run`) is measured now exactly as `dery bench`
measures it (`runtime.worker.bench_package`: a fresh measurement worker, its recorded session settings, the
reference workload interleaved), one package at a time. Against the figure the package records
(its p50 over all calls and the reference workload's beside it, taken when the run made it), per package:
the raw change of p50, the machine's change (reference now over reference then), and the package's change
once the machine's is divided out (`BenchResult.relative_to`, what `dery bench` prints). Issue 26 asks that
the relative figures of one file agree within 3% across passes, processes and hours where raw figures move
by tens of percent. Run it with nothing else on the machine: other processes' CPU time during each
measurement is recorded beside it (`other_load_cores`), and the summary leaves out measurements taken
under load (over 0.05 cores), as `dery bench` warns about them.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import time
from datetime import datetime
from pathlib import Path

from bench_common import ROOT, machine

BUSY_CORES = 0.05  # other processes' CPU time during a measurement above which it is left out of the summary


def packages(patterns: list[str]) -> list[Path]:
    found = {Path(p).resolve() for pat in patterns for p in glob.glob(pat)}
    return sorted(p for p in found if (p / "deploy.json").is_file())


def one(folder: Path, seconds: float) -> dict | None:
    from dery_deploy.deploy.info import read_package
    from dery_deploy.runtime.worker import bench_package

    info = read_package(folder)
    rec = info.latency
    if rec is None or not rec.reference_ms or not rec.when:
        return None
    q = info.budget.percentile if info.budget else 50
    res, load = bench_package(folder, q, seconds)
    made = datetime.fromisoformat(rec.when)
    rel = res.relative_to(info)
    assert rel is not None and res.reference_ms is not None
    speed, relative = rel
    return {
        "package": str(folder),
        "target": f"{info.runtime.name}/{info.runtime.precision}/t{info.runtime.threads}",
        "made": rec.when,
        "hours_apart": round((datetime.now() - made).total_seconds() / 3600, 2),
        "recorded_in": (rec.measured_in or "")[:60],
        "recorded_p50_ms": rec.p50_ms,
        "recorded_reference_ms": rec.reference_ms,
        "recorded_other_load_cores": rec.other_load_cores,
        "now_p50_ms": round(res.p50_ms, 5),
        "now_reference_ms": round(res.reference_ms, 5),
        "now_standard_error": round(res.standard_error["p50"], 4),
        "now_other_load_cores": load,
        "raw_change": round(res.p50_ms / rec.p50_ms - 1, 4),
        "machine_change": round(speed, 4),
        "relative_change": round(relative, 4),
    }


def summary(rows: list[dict]) -> dict:
    quiet = [
        r
        for r in rows
        if (r["now_other_load_cores"] or 0) <= BUSY_CORES and (r["recorded_other_load_cores"] or 0) <= BUSY_CORES
    ]
    alone = [r for r in quiet if r["recorded_in"].startswith("the shipped package alone")]

    def spread(rs: list[dict]) -> dict:
        if not rs:
            return {"n": 0}
        raw = sorted(abs(r["raw_change"]) for r in rs)
        rel = sorted(abs(r["relative_change"]) for r in rs)
        return {
            "n": len(rs),
            "hours_apart": [min(r["hours_apart"] for r in rs), max(r["hours_apart"] for r in rs)],
            "raw_abs_median": round(statistics.median(raw), 4),
            "raw_abs_max": raw[-1],
            "relative_abs_median": round(statistics.median(rel), 4),
            "relative_abs_p90": rel[min(len(rel) - 1, int(0.9 * len(rel)))],
            "relative_abs_max": rel[-1],
            "relative_within_3pct": sum(x <= 0.03 for x in rel),
        }

    return {
        "quiet": spread(quiet),
        "recorded_alone_as_dery_bench": spread(alone),
        "left_out_under_load": len(rows) - len(quiet),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="+", help="package folders, or globs of them (quoted)")
    ap.add_argument("--seconds", type=float, default=4.0, help="each measurement's least duration (`dery bench`'s)")
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "hours.json"))
    a = ap.parse_args()
    found = packages(a.packages)
    if not found:
        raise SystemExit(f"no package folder (with deploy.json) matches {' '.join(a.packages)}")
    infos = []
    for folder in found:
        row = one(folder, a.seconds)
        if row is None:
            print(f"{folder}: no recorded reference workload or time; skipped")
            continue
        infos.append(row)
        print(
            f"{row['made']} ({row['hours_apart']:5.1f} h ago) {row['target']:22s} p50 {row['recorded_p50_ms']:.4f} -> "
            f"{row['now_p50_ms']:.4f} ms ({100 * row['raw_change']:+.1f}%), "
            f"machine {100 * row['machine_change']:+.1f}%, relative {100 * row['relative_change']:+.1f}% "
            f"(load {row['now_other_load_cores']})",
            flush=True,
        )
    infos.sort(key=lambda r: r["made"])
    out = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": a.seconds,
        "summary": summary(infos),
        "packages": infos,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(a.out)
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
