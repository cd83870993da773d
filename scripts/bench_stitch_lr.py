#!/usr/bin/env python3
"""A/B of the phase-2 stitch learning-rate scale (adapters and head vs borrowed blocks) under
`dery run`'s default final recipe; writes JSON.

    python scripts/bench_stitch_lr.py --plans RUN/budget-X/finalists/01.json ... \
        --donors resnet10t_tops,mnv3_rot --teacher RUN/donors/ce/resnet10t_tops \
        [--scales 1,3,10] [--seeds 0,1,2] [--work runs/stitch-lr] [-o bench/stitch_lr.json]

Every network (each plan, and each whole donor with its new head) is fine-tuned by `dery finetune`
with the same recipe as `dery run`'s final training (seam matching 4 epochs, distillation 0.5 from
the teacher on 4096 unlabelled images per epoch, phase 1 until its loss plateaus), once per scale
and seed. A network already trained in `--work` (its metrics.json exists) is read, not retrained.
The scale is chosen on validation accuracy; test accuracy is reported only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench_common import ROOT, machine

from dery_deploy.train.run_folder import FinetuneMetrics

RECIPE = ["--match-epochs", "4", "--distill", "0.5", "--distill-images", "4096", "--plateau", "0.02"]


def train(source: list[str], out: Path, teacher: str, scale: float, seed: int) -> FinetuneMetrics:
    if not (out / "metrics.json").is_file():
        args = [*source, "-o", str(out), "--teacher", teacher, *RECIPE]
        args += ["--stitch-lr-scale", f"{scale:g}", "--seed", str(seed), "--force", "--no-resume"]
        p = subprocess.run([sys.executable, "-m", "dery_deploy.cli.main", "finetune", *args], capture_output=True)
        if p.returncode:
            raise SystemExit(p.stderr.decode()[-3000:])
    return FinetuneMetrics.read(out / "metrics.json")


def blocks(plan: str) -> str:
    """A plan file's blocks in order (read through `Plan.from_dict`, which takes older plan files too)."""
    from dery_deploy.network.plan import Plan

    b = Plan.from_dict(json.loads(Path(plan).read_text())).blocks
    return " + ".join(f"{x.donor}[{x.start}:{x.end}]" for x in b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", nargs="+", required=True, help="plan JSONs with mixed donors (a run's finalists)")
    ap.add_argument("--donors", default="resnet10t_tops,mnv3_rot", help="whole donors of the fashion zoo")
    ap.add_argument("--teacher", required=True, help="a fine-tuned donor run folder")
    ap.add_argument("--scales", default="1,3,10")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "stitch-lr")
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "bench" / "stitch_lr.json")
    args = ap.parse_args()
    from dery_deploy.artifacts import atomic_write_json

    nets = {f"mix{Path(p).stem}": [str(Path(p).resolve())] for p in args.plans}
    nets |= {d: ["--donor", d, "--zoo", "fashion"] for d in args.donors.split(",")}
    scales = [float(s) for s in args.scales.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[dict] = []
    for seed in seeds:
        for scale in scales:
            for name, source in nets.items():
                m = train(source, args.work / f"{name}-{scale:g}-s{seed}", args.teacher, scale, seed)
                row = {"net": name, "scale": scale, "seed": seed, "val": m.val_accuracy, "test": m.test_accuracy}
                rows.append(row | {"train_seconds": m.train_seconds})
                print(json.dumps(rows[-1]), flush=True)
    summary: dict = {}
    for name in nets:
        summary[name] = {}
        for scale in scales:
            val = [r["val"] for r in rows if r["net"] == name and r["scale"] == scale]
            test = [r["test"] for r in rows if r["net"] == name and r["scale"] == scale]
            summary[name][f"{scale:g}"] = {
                "val_mean": round(statistics.mean(val), 2),
                "test_mean": round(statistics.mean(test), 2),
                "test_std": round(statistics.stdev(test), 2) if len(test) > 1 else 0.0,
            }
    val_total = {f"{s:g}": round(sum(summary[n][f"{s:g}"]["val_mean"] for n in nets), 2) for s in scales}
    result = {
        "machine": machine(),
        "recipe": RECIPE,
        "teacher": args.teacher,
        "plans": {f"mix{Path(p).stem}": {"path": p, "blocks": blocks(p)} for p in args.plans},
        "rows": rows,
        "summary": summary,
        "val_mean_sum_by_scale": val_total,
        "best_scale_on_val": max(val_total, key=val_total.get),
    }
    atomic_write_json(args.out, result)
    print(json.dumps({"summary": summary, "best_scale_on_val": result["best_scale_on_val"]}, indent=1))


if __name__ == "__main__":
    main()
