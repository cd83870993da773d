#!/usr/bin/env python3
"""Benchmark the family program (`assemble/family.py`, issue 28 item 1); writes JSON.

    python scripts/bench_family.py [--seeds 3] [--delta 0.02] [--price 0.05] [--no-fashion] [-o bench/family.json]

- Random zoos of 24 donors x 6 sets (`bench_assemble.synthetic`, the program bench's), three budgets each
  (1.3x, 2x and 3x the fastest assembly): the solve's time, its status, the parameters the family stores
  against the three independent optima stored separately, and each path's quality given up.
- The embedded fashion zoo (profiled here on onnxruntime/fp32, 1 thread, task-aware scores on
  Fashion-MNIST at 100 labels per class): the same at the three budgets a default `dery run` would choose.
Solve times are CPU time on this machine's cores (2 workers), not latencies.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_assemble import synthetic
from bench_common import ROOT, machine, workspace


def family_row(data, budgets, delta: float, price: float) -> dict:
    from dery_deploy.assemble.family import solve_family

    fam = solve_family(data, budgets, delta=delta, price=price)
    return {
        "budgets_ms": [p.budget_ms for p in fam.paths],
        "status": fam.status,
        "seconds": fam.seconds,
        "stored_params": fam.distinct_params,
        "separate_params": fam.separate_params,
        "optima_as_family_params": fam.optima_shared_params,
        "ratio": round(fam.ratio, 4),
        "loss": [round(p.loss, 5) for p in fam.paths],
        "paths": [list(p.choice) for p in fam.paths],
    }


def random_zoos(seeds: int, delta: float, price: float) -> list[dict]:
    from dery_deploy.assemble.program import Budget, fastest

    rows = []
    for seed in range(seeds):
        data = synthetic(24, 6, seed)
        lo = fastest(data).latency_us
        rows.append({"seed": seed, **family_row(data, [Budget(int(lo * f)) for f in (1.3, 2.0, 3.0)], delta, price)})
    return rows


def fashion(delta: float, price: float) -> dict:
    from dery_deploy.assemble.candidates import AdapterFitter
    from dery_deploy.assemble.pool import planned_budget, planning_margin
    from dery_deploy.assemble.program import Budget
    from dery_deploy.assemble.program_data import Scores, program_data
    from dery_deploy.data.task import load_task
    from dery_deploy.network.items import donor_key
    from dery_deploy.pipeline.budgets import choose_budgets, feasible_floor
    from dery_deploy.profile.latency_model import LatencyModel, budget_us
    from dery_deploy.profile.run import run_profile
    from dery_deploy.profile.store import read_profile
    from dery_deploy.runtime.devices import get_device

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        zoo, _, part, dis = workspace("fashion", cache)
        task = load_task("fashion-mnist:labels_per_class=100", zoo.input, 0)
        [path] = run_profile(zoo, get_device("cpu"), "onnxruntime", "fp32", [1], part, dis, cache, task.num_classes)
        model = LatencyModel.of(read_profile(path))
        scores = Scores.compute(dis, task, part, AdapterFitter.for_task(dis, task))
        data = program_data(zoo, part, dis, model, task.num_classes, scores)
        donor_ms = {n: model.predict_ms([donor_key(zoo, n, task.num_classes)]) for n in zoo.donor_names}
        budgets, _ = choose_budgets(donor_ms, False, feasible_floor(zoo, part, dis, model, task, scores))
        planned = [planned_budget(Budget(budget_us(b)), model) for b in budgets]
        margin = planning_margin(model)
        return {"budgets_chosen_ms": budgets, "planning_margin": margin, **family_row(data, planned, delta, price)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--delta", type=float, default=0.02)
    ap.add_argument("--price", type=float, default=0.05)
    ap.add_argument("--no-fashion", action="store_true", help="only the random zoos (no profile, no data)")
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "family.json"))
    args = ap.parse_args()
    from dery_deploy.artifacts import atomic_write_json

    t0 = time.time()
    out: dict = {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "delta": args.delta}
    out["price"] = args.price
    out["random_24x6"] = random_zoos(args.seeds, args.delta, args.price)
    for r in out["random_24x6"]:
        by_optima = r["optima_as_family_params"] / r["separate_params"]
        print(
            f"24x6 seed {r['seed']}: {r['status']} in {r['seconds']} s, stores {r['ratio']:.2f}x "
            f"({by_optima:.2f}x by the optima), loss {r['loss']}"
        )
    if not args.no_fashion:
        out["fashion"] = f = fashion(args.delta, args.price)
        print(f"fashion {f['budgets_chosen_ms']}: {f['status']} in {f['seconds']} s, stores {f['ratio']:.2f}x")
    out["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
