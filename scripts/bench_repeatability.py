#!/usr/bin/env python3
"""Do the same requests give the same answers on this machine? Writes bench/repeatability.json.

    python scripts/bench_repeatability.py [--zoo fashion] [--verify 20] [--budget-ms B] [-o FILE]

1. Three profiles of the zoo (every donor, unit, block, adapter and head of a K=4 partition, each
   followed by `--verify` random mixed assemblies measured end to end): two back to back, then a
   third while a background process this script starts and stops keeps one core busy. Reported:
   per-item agreement of every pair (median, p90, max of |a/b - 1|), each profile's time and noise
   index, its unstable items, and the latency model's leave-one-out error against its assemblies.
2. `dery assemble` twice with the same inputs (zoo, data, profile, budget), each in its own
   process and output: the same finalists and the same pick, or not.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import ROOT, machine, workspace

from dery_deploy.network.plan import Plan


def busy(stop) -> None:
    """Keep one core busy until `stop` is set (the background load of profile 3)."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def agreement(a: dict, b: dict) -> dict:
    rel = sorted(abs(a[k].median_ms / b[k].median_ms - 1) for k in a if k in b)
    return {
        "items": len(rel),
        "median": round(statistics.median(rel), 5),
        "p90": round(rel[int(round(0.9 * (len(rel) - 1)))], 5),
        "max": round(rel[-1], 5),
    }


def profile_once(zoo, spec, part, dis, cache: Path, n_verify: int) -> dict:
    from dery_deploy.profile.run import run_profile, verify
    from dery_deploy.profile.store import read_profile

    t0 = time.time()
    [path] = run_profile(zoo, spec, None, None, [1], None, dis, cache, num_classes=10)
    t_units = time.time() - t0
    [path] = run_profile(zoo, spec, None, None, [1], part, dis, cache, num_classes=10)
    t_all = time.time() - t0
    check = verify(zoo, spec, path, part, dis, n_verify, seed=0)
    prof = read_profile(path)
    return {
        "path": str(path),
        "seconds_donors_and_units": round(t_units, 1),
        "seconds_all_items": round(t_all, 1),
        "seconds_with_verify": round(time.time() - t0, 1),
        "items": len(prof.records),
        "unstable": sum(not r.stable for r in prof.records.values()),
        "median_uncertainty": round(statistics.median(r.uncertainty for r in prof.records.values()), 5),
        "noise_index": [p["noise_index"] for p in prof.passes],
        "latency_model": {
            k: v for k, v in check.to_dict().items() if k not in ("assemblies", "when", "partition_key", "seed")
        },
        "_records": prof.records,
    }


def assembly(plan: Plan) -> dict:
    """What one `dery assemble --json` picked: the pick, its rule, the finalists and their validation at the
    first rung, and the pick's measured latency."""
    sel = plan.selection
    assert sel is not None, "dery assemble --json writes the selection into the plan"
    return {
        "pick": sel.pick,
        "rule": sel.rule,
        "finalists": sorted({t.finalist for t in sel.trials}),
        "validation": {t.finalist: t.val_accuracy for t in sel.trials if t.rung == 0},
        "measured_ms": plan.measured.latency_ms if plan.measured else None,
    }


def assemble_twice(zoo: str, cache: Path, budget: float, out: Path) -> dict:
    runs: list[dict] = []
    for i in range(2):
        o = out / f"assemble-{i}" / "plan.json"
        t0 = time.time()
        p = subprocess.run(
            [sys.executable, "-m", "dery_deploy.cli.main", "assemble", "--zoo", zoo, "--latency-ms", f"{budget:g}"]
            + ["--cache", str(cache), "-o", str(o), "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if p.returncode != 0:
            runs.append({"error": p.stderr.strip().splitlines()[-1:]})
            continue
        runs.append({"seconds": round(time.time() - t0, 1), **assembly(Plan.from_dict(json.loads(p.stdout)[0]))})
    same = len(runs) == 2 and all("pick" in r for r in runs)
    return {
        "budget_ms": budget,
        "runs": runs,
        "same_pick": same and runs[0]["pick"] == runs[1]["pick"],
        "same_finalists": same and runs[0]["finalists"] == runs[1]["finalists"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="fashion")
    ap.add_argument("--verify", type=int, default=20)
    ap.add_argument(
        "--budget-ms", type=float, default=None, help="assemble budget (default: between the two fastest donors)"
    )
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "repeatability.json"))
    args = ap.parse_args()

    from dery_deploy.artifacts import atomic_write_json
    from dery_deploy.network.items import donor_key
    from dery_deploy.profile.latency_model import LatencyModel
    from dery_deploy.profile.store import read_profile
    from dery_deploy.runtime.devices import get_device

    result = {"machine": machine(), "zoo": args.zoo, "K": 4, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result["commit"] = commit.stdout.strip()
    spec = get_device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        zoo, _, part, dis = workspace(args.zoo, tmp / "ws")
        profiles = {}
        for name in ("first", "second", "loaded"):
            stop, proc = mp.Event(), None
            if name == "loaded":
                proc = mp.Process(target=busy, args=(stop,), daemon=True)
                proc.start()
            try:
                cache = tmp / name
                (cache / zoo.name).mkdir(parents=True)
                (cache / zoo.name / "partition.json").write_text((tmp / "ws" / zoo.name / "partition.json").read_text())
                profiles[name] = profile_once(zoo, spec, part, dis, cache, args.verify)
            finally:
                if proc:
                    stop.set()
                    proc.join()
            p = profiles[name]
            lm = p["latency_model"]
            print(
                f"profile {name}: {p['items']} items in {p['seconds_all_items']} s (donors+units "
                f"{p['seconds_donors_and_units']} s), noise index {p['noise_index']}, {p['unstable']} unstable; "
                f"latency model median {100 * lm['median_abs_rel_error']:.2f}% "
                f"max {100 * lm['max_abs_rel_error']:.2f}%",
                flush=True,
            )
        recs = {k: v.pop("_records") for k, v in profiles.items()}
        result["profiles"] = profiles
        result["agreement"] = {
            "first_vs_second": agreement(recs["first"], recs["second"]),
            "first_vs_loaded": agreement(recs["first"], recs["loaded"]),
            "second_vs_loaded": agreement(recs["second"], recs["loaded"]),
        }
        print("agreement", json.dumps(result["agreement"]), flush=True)
        prof = read_profile(profiles["first"]["path"])
        model = LatencyModel.of(prof)
        donors = sorted(model.predict_ms([donor_key(zoo, n, 10)]) for n in zoo.donor_names)
        budget = args.budget_ms or float(f"{(donors[0] + donors[1]) / 2:.3g}")
        result["assemble"] = assemble_twice(zoo.ref, tmp / "first", budget, tmp)
        print("assemble", json.dumps(result["assemble"]), flush=True)
    result["targets"] = {
        "per_item_agreement": "median <= 3%, p90 <= 8% between back-to-back profiles, at any hour",
        "latency_model": "median <= 3%, max <= 8% against mixed assemblies measured in the same run",
        "profile_time": "at most twice the 80-90 s one profile of the donors and units took before",
    }
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
