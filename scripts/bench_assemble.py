#!/usr/bin/env python3
"""Benchmark the reassembly stage; writes JSON.

    python scripts/bench_assemble.py [--zoo fashion] [--candidates 16] [--seeds 0,1] [-o bench/assemble.json]

Measures:
- The program at zoo scale: seeded random zoos of 24 donors x 6 sets, three budgets each; the time
  to a proven optimum and to the certified top 10 (exact DP + CP-SAT, `assemble/program.py`), and
  agreement with brute force on enumerable instances (8 donors x 5 sets, and the fashion zoo).
- Ranking: N candidates of the fashion zoo (donors, few-seam chains, the program's top chains and
  random chains across the latency range), each trained with the selection's short recipe and
  scored on the validation and test splits; Kendall tau of the task-aware program quality, the
  probe proxy, NASWOT and the old CKA objective against test accuracy, and each one's top-1 regret
  (test accuracy of the best candidate minus that of the one it ranks first).
- Selection's evidence, on the same candidates and against the same test accuracy: today's single
  validation split (`val`, 20% of the labels), the k-fold cross-validation selection now decides on
  (`kfold`: the same short recipe trained k times, every labelled image scored once out of fold), and
  one of those folds alone (`fold0`, a single split of the same size as `val`: what a screening rung
  sees), with the paired noise of the best two candidates under each.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_common import ROOT, kendall_tau, machine, workspace


def synthetic(donors: int, K: int, seed: int):
    """A random zoo: donors of different speed, adapters, quality terms like the task-aware ones."""
    from dery_deploy.assemble.program import ProgramData

    rng = random.Random(seed)
    opts = [[f"d{i}" for i in range(donors)] for _ in range(K)]
    speed = [rng.uniform(0.3, 3.0) for _ in range(donors)]
    bus = [[int(speed[d] * rng.uniform(50, 500)) for d in range(donors)] for _ in range(K)]
    bp = [[int(speed[d] * rng.uniform(1e4, 1e6)) for d in range(donors)] for _ in range(K)]
    bm = [[rng.uniform(1, 80) for _ in range(donors)] for _ in range(K)]
    pairs = [(a, b) for a in range(donors) for b in range(donors) if a != b]
    aus = [{p: rng.randint(5, 50) for p in pairs} for _ in range(K - 1)]
    ap = [{p: rng.randint(1000, 100000) for p in pairs} for _ in range(K - 1)]
    am = [{p: rng.uniform(1, 10) for p in pairs} for _ in range(K - 1)]
    sq = [{p: -rng.randint(500, 12000) for p in pairs} for _ in range(K - 1)]  # seams cost 0.5-12 points
    end_q = [rng.randint(40000, 90000) for _ in range(donors)]  # transferability 40-90%
    return ProgramData(
        opts,
        bus,
        bp,
        bm,
        aus,
        ap,
        am,
        [10] * donors,
        [1000] * donors,
        5,
        [[0] * donors for _ in range(K)],
        sq,
        0,
        end_q,
    )


def program_numbers(data, budget_us: int, enumerable: bool) -> dict:
    from dery_deploy.assemble.program import Budget, brute_force, solve

    b = Budget(budget_us)
    t = time.perf_counter()
    one = solve(data, b, top=1)
    t_opt = time.perf_counter() - t
    t = time.perf_counter()
    top = solve(data, b, top=10)
    t_top = time.perf_counter() - t
    out = {
        "budget_ms": budget_us / 1000,
        "status": one.status,
        "seconds_to_optimal": round(t_opt, 4),
        "seconds_top10": round(t_top, 4),
        "top": len(top.solutions),
        "dp_seconds_top10": top.extra.get("dp_seconds"),
    }
    if enumerable:
        bf = brute_force(data, b, 10)
        out["same_top10_as_brute_force"] = [s.quality for s in bf] == [s.quality for s in top.solutions]
    return out


def zoo_scale(seeds: int = 3) -> dict:
    from dery_deploy.assemble.program import fastest

    rows = []
    for seed in range(seeds):
        data = synthetic(24, 6, seed)
        lo = fastest(data).latency_us
        for factor in (1.3, 2.0, 3.0):
            rows.append({"seed": seed, **program_numbers(data, int(lo * factor), False)})
    small = []
    for seed in range(3):
        data = synthetic(8, 5, 100 + seed)
        small.append(program_numbers(data, int(fastest(data).latency_us * 2), True))
    return {
        "24x6": rows,
        "8x5": small,
        "target": "24x6: optimum <= 1 s, top 10 <= 5 s",
        "max_seconds_to_optimal": max(r["seconds_to_optimal"] for r in rows),
        "max_seconds_top10": max(r["seconds_top10"] for r in rows),
    }


def ranking(zoo_name: str, n: int, seed: int = 0, folds: int = 5) -> dict:
    """Train n candidates briefly and see how well each score ranks them."""
    from dery_deploy.assemble.candidates import AdapterFitter, Candidate, donor_plan, few_seam_choices, plan_from_choice
    from dery_deploy.assemble.program import Budget, solve
    from dery_deploy.assemble.program_data import Scores, program_data
    from dery_deploy.assemble.proxies import get_proxy
    from dery_deploy.data.task import load_task
    from dery_deploy.network.plan import build_net, save_plan_with_weights
    from dery_deploy.profile.latency_model import LatencyModel
    from dery_deploy.profile.run import run_profile
    from dery_deploy.profile.store import read_profile
    from dery_deploy.runtime.devices import get_device
    from dery_deploy.train.finetune import accuracy, finetune, load_run_model
    from dery_deploy.train.recipe import Recipe
    from dery_deploy.train.select import Finalist, rung_recipe, train_trial
    from dery_deploy.train.source import FinetuneSource

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        zoo, sim, part, dis = workspace(zoo_name, cache)
        task = load_task("fashion-mnist:labels_per_class=100", zoo.input, seed)
        [path] = run_profile(zoo, get_device("cpu"), "onnxruntime", "fp32", [1], part, dis, cache, task.num_classes)
        model = LatencyModel.of(read_profile(path))
        fitter = AdapterFitter.for_task(dis, task)
        scores = Scores.compute(dis, task, part, fitter)
        data = program_data(zoo, part, dis, model, task.num_classes, scores)
        rng = random.Random(seed)
        choices = [s.choice for s in solve(data, Budget(10**7), top=4).solutions]
        few = few_seam_choices(part)
        choices += rng.sample(few, 4)
        allc = [tuple(rng.randrange(len(s.blocks)) for s in part.sets) for _ in range(200)]
        choices += [c for c in allc if c not in choices][: max(0, n - len(choices) - 4)]
        cands = [
            Candidate.of(plan_from_choice(zoo, part, c, task.num_classes), data.evaluate(c), "bench")
            for c in dict.fromkeys(choices)
        ]
        for name in ("resnet10t_tops", "convnext_lower", "mnv3_rot", "mobilevit_lower"):
            cands.append(Candidate(donor_plan(zoo, part, name, task.num_classes), 0.0, 0, None, None, "donor"))
        x, y = task.labelled_sample(500, seed)
        probe, naswot = get_proxy("probe"), get_proxy("naswot")
        base = Recipe(plateau=0.02, seed=seed)
        recipe = rung_recipe(base, 1, (1, 2))
        fold_tasks = [task.fold(folds, f) for f in range(folds)]
        rows = []
        for i, c in enumerate(cands):
            torch.manual_seed(0)
            net = build_net(c.plan, zoo, dis)
            errs = fitter.init(net, c.plan)
            p = save_plan_with_weights(c.plan, net, cache / "plans" / f"{i}.json")
            row = {
                "plan": c.name,
                "seams": c.plan.seams,
                "quality": c.quality,
                "probe": probe(net, x, y),
                "naswot": naswot(net, x[:64]),
                "stitch_errors": [round(e, 3) for e in errs],
                "cka_quality": None if c.is_donor else cka_quality(c, sim, part),
            }
            t0 = time.time()
            src = FinetuneSource.of_plan(c.plan, str(p.with_suffix(".safetensors")))
            finetune(src, zoo, task, recipe, cache / "runs" / str(i), log=None, progress=False, test=False, force=True)
            m, _ = load_run_model(cache / "runs" / str(i), zoo)
            val, val_pred = accuracy(m, task.x("val"), task.y("val"))
            row.update(
                {
                    "val": val,
                    "val_correct": "".join("1" if c else "0" for c in (val_pred == task.y("val")).tolist()),
                    "test": accuracy(m, task.x("test"), task.y("test"))[0],
                    "train_s": round(time.time() - t0, 1),
                }
            )
            t0 = time.time()
            fin = Finalist(c.name, src, c.is_donor)
            held = [
                train_trial(fin, 1, f, zoo, fold_tasks[f], base, (1, 2), cache / "folds" / f"{i}-{f}", True)
                for f in range(folds)
            ]
            correct = "".join(t.correct for t in held)
            row.update(
                {
                    "kfold": 100 * correct.count("1") / len(correct),
                    "kfold_correct": correct,
                    "fold0": held[0].val_accuracy,
                    "fold0_correct": held[0].correct,
                    "kfold_train_s": round(time.time() - t0, 1),
                }
            )
            rows.append(row)
            print(
                f"{row['plan']}: test {row['test']:.2f} val {row['val']:.2f} {folds}-fold {row['kfold']:.2f} "
                f"probe {row['probe']:.1f} quality {row['quality']}",
                flush=True,
            )
    test = [r["test"] for r in rows]
    out = {"candidates": rows, "recipe": recipe.__dict__, "folds": folds, "kendall_tau": {}, "top1_regret": {}}
    for key in ("probe", "naswot", "val", "fold0", "kfold", "quality", "cka_quality"):
        sub = [r for r in rows if r[key] is not None]
        out["kendall_tau"][key] = round(kendall_tau([r[key] for r in sub], [r["test"] for r in sub]), 3)
        pick = max(sub, key=lambda r: r[key])
        out["top1_regret"][key] = round(max(r["test"] for r in sub) - pick["test"], 2)
    out["selection_evidence"] = {key: evidence(rows, key) for key in ("val", "fold0", "kfold")}
    out["best_test"] = max(test)
    out["median_train_s"] = statistics.median(r["train_s"] for r in rows)
    out["median_kfold_train_s"] = statistics.median(r["kfold_train_s"] for r in rows)
    return out


def evidence(rows: list[dict], key: str) -> dict:
    """What selection would see under one kind of evidence: how many images it rests on, the paired
    noise between the two candidates it ranks first, and their test accuracies."""
    from dery_deploy.train.select import paired_noise

    first, second = sorted(rows, key=lambda r: -r[key])[:2]
    return {
        "images": len(first[f"{key}_correct"]),
        "top2": [first["plan"], second["plan"]],
        "top2_difference": round(first[key] - second[key], 2),
        "top2_paired_noise": round(paired_noise(first[f"{key}_correct"], second[f"{key}_correct"]), 2),
        "top2_test": [round(first["test"], 2), round(second["test"], 2)],
    }


def cka_quality(c, sim, part) -> float:
    """The previous objective: CKA of every stitched boundary (1 for native ones)."""
    q = 0.0
    for a, b in zip(c.plan.blocks, c.plan.blocks[1:]):
        q += 1.0 if (a.donor == b.donor and a.end == b.start) else float(sim.matrix(a.donor, b.donor)[a.end, b.start])
    return q


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="fashion")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--folds", type=int, default=5, help="k of the cross-validation scored beside the validation split")
    ap.add_argument(
        "--seeds", default="0", help="of the task's splits, the candidates and training; the first is the full record"
    )
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "assemble.json"))
    args = ap.parse_args()
    from dery_deploy.artifacts import atomic_write_json

    t0 = time.time()
    result = {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "program": zoo_scale()}
    print(
        "program at 24x6:",
        result["program"]["max_seconds_to_optimal"],
        result["program"]["max_seconds_top10"],
        flush=True,
    )
    seeds = [int(x) for x in args.seeds.split(",")]
    for seed in seeds:
        rk = ranking(args.zoo, args.candidates, seed, args.folds)
        print(f"seed {seed}: kendall tau", rk["kendall_tau"], "regret", rk["top1_regret"], flush=True)
        result.setdefault("ranking", rk)
        result.setdefault("ranking_by_seed", {})[str(seed)] = {
            k: rk[k] for k in ("kendall_tau", "top1_regret", "selection_evidence", "best_test")
        }
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
