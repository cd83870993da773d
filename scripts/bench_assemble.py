#!/usr/bin/env python3
"""Benchmark the reassembly stage; writes JSON.

    python scripts/bench_assemble.py [--zoo fashion] [--assemblies 16] [-o bench/assemble.json]

Measures:
- CP-SAT time to optimality and for the top 10 on the fashion zoo (K=4, its real CPU profile) and on
  a seeded synthetic zoo of 24 donors at K=6; the same instances by brute force where enumerable
  (fashion: 6^4; a synthetic 8 donors x K=5), checking that CP-SAT returns the same optimum.
- Proxy vs accuracy: for N assemblies spanning the latency range, NASWOT and ZiCo scores against the
  test accuracy after a short, fixed adapter-only training; Kendall tau for each proxy.
- Accuracy of the least-squares-initialised assembled network before any training (adapters by
  least squares, the head a closed-form ridge probe on the training features).
- CP-SAT + proxy rerank vs Optuna TPE on the proxy, same number of proxy evaluations, 3 budgets.
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
    from dery_deploy.assemble.program import ProgramData

    rng = random.Random(seed)
    opts = [[f"d{i}" for i in range(donors)] for _ in range(K)]
    speed = [rng.uniform(0.3, 3.0) for _ in range(donors)]  # some donors are slow everywhere
    bms = [[speed[d] * rng.uniform(0.05, 0.5) for d in range(donors)] for _ in range(K)]
    bp = [[int(speed[d] * rng.uniform(1e4, 1e6)) for d in range(donors)] for _ in range(K)]
    bm = [[rng.uniform(1, 80) for _ in range(donors)] for _ in range(K)]
    pairs = [(a, b) for a in range(donors) for b in range(donors) if a != b]
    ams = [{p: rng.uniform(0.005, 0.05) for p in pairs} for _ in range(K - 1)]
    ap = [{p: rng.randint(1000, 100000) for p in pairs} for _ in range(K - 1)]
    am = [{p: rng.uniform(1, 10) for p in pairs} for _ in range(K - 1)]
    ck = [{p: rng.uniform(0.3, 0.95) for p in pairs} for _ in range(K - 1)]
    return ProgramData(opts, bms, bp, bm, ams, ap, am, ck, [0.01] * donors, [1000] * donors, 0.005)


def cpsat_numbers(data, budget: float, enumerable: bool) -> dict:
    from dery_deploy.assemble.program import brute_force, solve

    t = time.perf_counter()
    one = solve(data, budget, top=1)
    t_opt = time.perf_counter() - t
    t = time.perf_counter()
    top = solve(data, budget, top=10)
    t_top = time.perf_counter() - t
    out = {
        "budget_ms": round(budget, 4),
        "status": one.status,
        "seconds_to_optimal": round(t_opt, 4),
        "seconds_top10": round(t_top, 4),
        "solutions": len(top.solutions),
    }
    if enumerable:
        t = time.perf_counter()
        best, _ = brute_force(data, budget)
        out["brute_force_seconds"] = round(time.perf_counter() - t, 3)
        q = data.evaluate(best)["quality"] if best else None
        out["same_optimum_as_brute_force"] = bool(
            best is not None and one.solutions and abs(data.evaluate(one.solutions[0].choice)["quality"] - q) < 2e-3
        )
    return out


def ridge_head(net, x: torch.Tensor, y: torch.Tensor, classes: int, lam: float = 1e-2) -> None:
    """Set the head's linear layer to the ridge solution on pooled, normalised training features."""
    net.eval()
    with torch.no_grad():
        pooled = torch.cat([net.head.pool(net.forward_features(x[i : i + 500])) for i in range(0, len(x), 500)])
        feats = net.head.norm(pooled).double()
        f1 = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.double)], 1)
        t = torch.nn.functional.one_hot(y, classes).double()
        w = torch.linalg.solve(f1.T @ f1 + lam * torch.eye(f1.shape[1], dtype=torch.double), f1.T @ t)
        net.head.fc.weight.copy_(w[:-1].T.float())
        net.head.fc.bias.copy_(w[-1].float())


def adapter_only_accuracy(net, task, epochs: int = 3, seed: int = 0) -> float:
    import torch.nn.functional as F

    from dery_deploy.data.task import augment
    from dery_deploy.train.finetune import _set_phase, accuracy

    params = _set_phase(net, 1)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(task.train_y), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(net(augment(task.train_x[idx], g)), task.train_y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return accuracy(net, task.test_x, task.test_y)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="fashion")
    ap.add_argument("--assemblies", type=int, default=16)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "assemble.json"))
    args = ap.parse_args()

    from dery_deploy.artifacts import atomic_write_json
    from dery_deploy.assemble.proxies import get_proxy
    from dery_deploy.assemble.stage import AdapterFitter, assemble, probe_for_adapters, program_data, proxy_batch
    from dery_deploy.data.task import load_task
    from dery_deploy.network.plan import build_net
    from dery_deploy.profile.latency_model import plan_items, predict
    from dery_deploy.profile.run import random_plans, run_profile
    from dery_deploy.profile.store import read_profile
    from dery_deploy.runtime.devices import get_device

    result = {"machine": machine(), "zoo": args.zoo}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        zoo, sim, part, dis = workspace(args.zoo, cache)
        spec = get_device("cpu")
        [ppath] = run_profile(zoo, spec, "onnxruntime", "fp32", [1], part, dis, cache)
        prof = read_profile(ppath)
        data = program_data(zoo, part, dis, sim, prof, str(ppath))
        lat = sorted(
            data.evaluate(c)["latency_ms"]
            for c in __import__("itertools").product(*[range(len(o)) for o in data.options])
        )
        result["cpsat"] = {
            "fashion_K4": [cpsat_numbers(data, lat[int(q * (len(lat) - 1))], True) for q in (0.1, 0.5, 0.9)],
            "synthetic_24_donors_K6": [
                cpsat_numbers(synthetic(24, 6, s), b, False) for s, b in ((0, 2.0), (1, 4.0), (2, 8.0))
            ],
            "synthetic_8_donors_K5": [cpsat_numbers(synthetic(8, 5, s), b, True) for s, b in ((0, 1.5), (1, 3.0))],
            "target": "< 1 s to optimality, < 5 s for the top 10",
        }
        print("cpsat", result["cpsat"], flush=True)

        # proxies vs accuracy after a short adapter-only training, spanning the latency range
        task = load_task("fashion-mnist:labels_per_class=100", zoo)
        sub = torch.randperm(len(task.test_y), generator=torch.Generator().manual_seed(0))[: args.test_images]
        task.test_x, task.test_y = task.test_x[sub], task.test_y[sub]
        fitter = AdapterFitter(dis, probe_for_adapters(zoo))
        images, labels = proxy_batch(zoo)
        probe_images, probe_labels = proxy_batch(zoo, 500)
        plans = random_plans(zoo, part, 60, seed=3, mixed=False)
        for p in plans:
            p.predicted = {"latency_ms": predict(plan_items(p, zoo, dis), prof)}
        plans.sort(key=lambda p: p.predicted["latency_ms"])
        step = max(1, len(plans) // args.assemblies)
        chosen = plans[::step][: args.assemblies]
        rows = []
        for p in chosen:
            torch.manual_seed(0)
            net = build_net(p, zoo, dis)
            errs = fitter.init(net, p)
            scores = {name: get_proxy(name)(net, images, labels) for name in ("naswot", "zico")}
            scores["probe"] = get_proxy("probe")(net, probe_images, probe_labels)
            ridge_head(net, task.train_x, task.train_y, 10)
            from dery_deploy.train.finetune import accuracy

            lsq_acc = accuracy(net, task.test_x, task.test_y)[0]
            t0 = time.time()
            acc = adapter_only_accuracy(net, task)
            rows.append(
                {
                    "plan": p.describe(),
                    "predicted_ms": round(p.predicted["latency_ms"], 4),
                    **{k: round(v, 3) for k, v in scores.items()},
                    "lsq_init_accuracy": round(lsq_acc, 2),
                    "adapter_only_accuracy": round(acc, 2),
                    "stitch_errors": [round(e, 3) for e in errs],
                    "train_s": round(time.time() - t0, 1),
                }
            )
            print(rows[-1], flush=True)
        accs = [r["adapter_only_accuracy"] for r in rows]
        result["proxy_vs_accuracy"] = {
            "assemblies": rows,
            "training": "3 epochs, adapters + head only (from the LSQ adapters and ridge head), 1000 labelled images, AdamW 1e-3",
            "test_images": args.test_images,
            "kendall_tau": {
                name: round(kendall_tau([r[name] for r in rows], accs), 3) for name in ("naswot", "zico", "probe")
            },
            "kendall_tau_lsq_init_vs_trained": round(kendall_tau([r["lsq_init_accuracy"] for r in rows], accs), 3),
            "kendall_tau_latency_vs_accuracy": round(kendall_tau([r["predicted_ms"] for r in rows], accs), 3),
            "lsq_init_accuracy_median": statistics.median(r["lsq_init_accuracy"] for r in rows),
        }
        print("tau", result["proxy_vs_accuracy"]["kendall_tau"], flush=True)

        # CP-SAT top-N + proxy rerank vs Optuna on the proxy, same number of proxy evaluations
        comp = []
        for proxy in ("naswot", "probe"):
            for q in (0.25, 0.5, 0.75):
                b = round(lat[int(q * (len(lat) - 1))], 4)
                row = {"proxy": proxy, "budget_ms": b}
                for search in ("cpsat", "optuna"):
                    t0 = time.time()
                    res = assemble(
                        zoo, part, dis, sim, prof, str(ppath), b, top=10, proxy=proxy, search=search, fitter=fitter
                    )
                    best = res["candidates"][0]
                    # what the pick is worth: accuracy after the same short adapter-only training
                    torch.manual_seed(0)
                    net = build_net(best.plan, zoo, dis)
                    fitter.init(net, best.plan)
                    ridge_head(net, task.train_x, task.train_y, 10)
                    row[search] = {
                        "best_proxy": round(best.proxy, 3),
                        "plan": res["plan"].describe(),
                        "seconds": round(time.time() - t0, 2),
                        "evaluations": len(res["candidates"]),
                        "adapter_only_accuracy": round(adapter_only_accuracy(net, task), 2),
                    }
                comp.append(row)
                print(row, flush=True)
        result["cpsat_vs_optuna"] = {
            "evaluations_each": 10,
            "budgets": comp,
            "cpsat_wins_on_proxy": sum(r["cpsat"]["best_proxy"] >= r["optuna"]["best_proxy"] for r in comp),
            "cpsat_wins_on_accuracy": sum(
                r["cpsat"]["adapter_only_accuracy"] >= r["optuna"]["adapter_only_accuracy"] for r in comp
            ),
        }
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
