#!/usr/bin/env python3
"""The fashion benchmark: reassembled networks against every donor that fits the same budget,
same data, same recipe, over seeds; plus export parity and latency. Writes JSON.

    python scripts/bench_finetune.py [--seeds 0,1] [--work runs/bench] [-o bench/finetune.json]

Each seed is one full `dery run` (default options: budgets at the 25th/50th/75th percentile of the
donors' measured CPU latencies, 4 + 6 epochs on 100 labels per class, the 10k test set), timed
end to end; seed 0 is exactly the README's main job.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_common import ROOT, machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--extra", default="", help="extra `dery run` arguments")
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "finetune.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from dery_deploy.artifacts import atomic_write_json

    result = {"machine": machine(), "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = Path(args.work) / f"seed{seed}"
        t0 = time.time()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dery_deploy.cli.main",
                "run",
                "--seed",
                str(seed),
                "-o",
                str(out),
                *args.extra.split(),
            ],
            capture_output=True,
            text=True,
        )
        wall = time.time() - t0
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        run = json.loads((out / "run.json").read_text())
        budgets = []
        for r in run["results"]:
            if "top1" not in r:
                budgets.append({"budget_ms": r["budget_ms"], "infeasible": r.get("infeasible")})
                continue
            donors = {n: run["donors"][n]["top1"] for n in r["donors_within_budget"]}
            best = max(donors.values()) if donors else None
            exports = {}
            for fmt in ("onnx", "aoti"):
                e = r.get(fmt)
                if e and "parity" in e:
                    exports[fmt] = {
                        "max_abs_diff": e["parity"]["max_abs_diff"],
                        "top1_identical": e["parity"]["top1_identical"],
                        "latency_ms": e["latency_ms"],
                        "predicted_ms": r["plan"]["predicted"]["latency_ms"],
                        "budget": e.get("budget", {}).get("within_budget"),
                    }
                elif e:
                    exports[fmt] = {"error": e.get("error")}
            budgets.append(
                {
                    "budget_ms": r["budget_ms"],
                    "plan": " > ".join(f"{b['donor']}[{b['start']}:{b['end']}]" for b in r["plan"]["blocks"]),
                    "predicted_ms": r["plan"]["predicted"]["latency_ms"],
                    "measured_ms": r.get("measured_ms"),
                    "reassembled_top1": r["top1"],
                    "reassembled_phase1_top1": r.get("phase1_top1"),
                    "donors_within_budget_top1": donors,
                    "best_donor_top1": best,
                    "reassembly_minus_best_donor": None if best is None else round(r["top1"] - best, 2),
                    "params_m": r["params_m"],
                    "exports": exports,
                }
            )
        result["seeds"][str(seed)] = {
            "wall_s": round(wall, 1),
            "run_seconds": run["seconds"],
            "budgets": budgets,
            "donor_latency_ms": run["donor_latency_ms"],
            "verify": run["verify"],
            "stages": run["stages"],
        }
        print(json.dumps(result["seeds"][str(seed)]["budgets"], indent=1), flush=True)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
