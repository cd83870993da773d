#!/usr/bin/env python3
"""Issue 28's "done when" for `dery run --family`: per seed, one `dery run --family` on the embedded fashion
zoo (ONNX Runtime fp32, batch 1) at three budgets in the gaps between donors, and what it ships measured
against the run's own separately shipped networks at the same budgets. Writes JSON after every seed.

    python scripts/bench_family_run.py [--seeds 0,1,2] [--labels-per-class 100] [-o FILE]
    python scripts/bench_family_run.py --quick     # smoke: seed 0, 20 labels per class, `dery run --quick`
    python scripts/bench_family_run.py --family-training frozen  # option (a): bench/family_run.json
    python scripts/bench_family_run.py   # option (b), joint, the run's default: bench/family_run_joint.json; in the
                                         # frozen bench's folders it reuses everything but the family

Budgets: those `scripts/bench_family.py` chose for the fashion zoo (bench/family.json's `budgets_chosen_ms`,
the three a default `dery run` chooses there), unless `--budgets`. Per seed and path:
- within its budget in the family's own pass (run.json's `family`), and its figure measured untrained
  before any training (`pipeline.family_check`);
- test top-1 against the run's separately shipped network at that budget (paired by seed);
- the family's distinct weight bytes against the separate artifacts';
- process memory (RSS rise, each in a fresh subprocess) with every path loaded, `load_family` against
  `dery_deploy.load` of each separate package, and the same files compiled by OpenVINO;
- `at_budget` at 20 budgets from the fastest path's figure to 1.5x the largest path's, each pick checked
  against one fresh `dery bench FAMILY --json` pass run right after;
- the family's stages' wall time against the run's (run.json's stages).
Latency figures carry the other processes' load of the machine where it was read (`other_load_cores`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench_common import ROOT, machine
from bench_quality import data_spec, dery, one_run

SWEEP = 20  # at_budget's budgets

# a fresh process: the runtime imported first, then RSS before and after every path is loaded and run once
RSS_PROGRAM = r"""
import json, sys
import numpy as np
mode, spec = sys.argv[1], json.loads(sys.argv[2])
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
if mode.endswith("ort"):
    import onnxruntime  # the runtime's own import is not what a loaded path costs
    import dery_deploy
    from dery_deploy.deploy.family import load_family
    before = rss()
    if mode == "family-ort":
        family = load_family(spec["family"])
        preds = [family.predictor(p.name) for p in family.paths]
    else:
        preds = [dery_deploy.load(f) for f in spec["packages"]]
    for p in preds:
        i = p.info.input
        p.logits(np.zeros((p.batch, i.channels, i.height, i.width), np.float32))
else:
    import openvino as ov
    core = ov.Core()
    before = rss()
    compiled = []
    for f in spec["files"]:
        m = core.read_model(f)
        shape = [1 if d.is_dynamic else d.get_length() for d in m.input(0).get_partial_shape()]
        m.reshape(shape)  # a separate package's graph has a dynamic batch: batch 1, as the family's paths
        compiled.append((core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": spec["threads"]}), shape))
    for c, shape in compiled:
        c(np.zeros(shape, np.float32))
after = rss()
print(json.dumps({"before_mb": round(before, 1), "after_mb": round(after, 1), "rise_mb": round(after - before, 1)}))
"""


def rss(mode: str, spec: dict) -> dict:
    """RSS rise of loading (and running once) what `spec` names, in a fresh process; the error where it failed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-c", RSS_PROGRAM, mode, json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def memory(run, folder: Path) -> dict:
    """Every path loaded against every separate package loaded, in ONNX Runtime and OpenVINO."""
    from dery_deploy.deploy.family_info import read_family

    info = read_family(folder)
    separate = [r for r in run.results if r.export_dir and r.export and r.export.artifact]
    packages = [r.export_dir for r in separate]
    onnx = [str(Path(r.export_dir) / r.export.artifact) for r in separate]
    threads = (info.paths[0].runtime.threads if info.paths else None) or 1
    family_files = [str(folder / p.model) for p in info.paths]
    return {
        "onnxruntime": {
            "family": rss("family-ort", {"family": str(folder)}),
            "separate": rss("separate-ort", {"packages": packages}),
        },
        "openvino": {
            "family": rss("family-ov", {"files": family_files, "threads": threads}),
            "separate": rss("separate-ov", {"files": onnx, "threads": threads}),
        },
        "separate_packages": packages,
    }


class Load:
    """Other processes' CPU use while a child runs, in cores: the machine's busy time less the children's."""

    def __enter__(self) -> Load:
        self.t0 = self._read()
        return self

    def __exit__(self, *exc) -> None:
        t1 = self._read()
        wall = t1[0] - self.t0[0]
        self.cores = round(max(0.0, (t1[1] - self.t0[1]) - (t1[2] - self.t0[2])) / wall, 3) if wall > 1 else None

    @staticmethod
    def _read() -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def sweep(folder: Path, percentile: int) -> dict:
    """`at_budget` at SWEEP budgets, each pick checked against a fresh `dery bench` pass of every path."""
    from dery_deploy.deploy.bench import within_budget
    from dery_deploy.deploy.family import load_family
    from dery_deploy.errors import DeryError

    family = load_family(folder)
    figures = {p.name: family.figure(p, percentile)[0] for p in family.paths}
    largest = max(family.paths, key=lambda p: p.budget.latency_ms)
    lo, hi = min(figures.values()), 1.5 * figures[largest.name]
    budgets = [round(lo + (hi - lo) * k / (SWEEP - 1), 5) for k in range(SWEEP)]
    picks: dict[float, str | None] = {}
    for b in budgets:
        try:
            picks[b] = family.pick(b, percentile).name
        except DeryError:
            picks[b] = None
    with Load() as load:
        p = dery("bench", str(folder), "--json", "--percentile", str(percentile))
    if p.returncode not in (0, 2, 3):
        return {"error": p.stderr[-2000:]}
    fresh = {
        r["path"]: (r[f"p{percentile}_ms"], r["standard_error"][f"p{percentile}"])
        for r in json.loads(p.stdout)["paths"]
    }
    rows, ok = [], 0
    for b in budgets:
        name = picks[b]
        fits = [n for n, (v, se) in fresh.items() if within_budget(v, b, se)]
        # a pick is right when the fresh pass measures it within the budget; a refusal, when no path is
        good = within_budget(fresh[name][0], b, fresh[name][1]) is True if name else not fits
        ok += bool(good)
        rows.append(
            {"budget_ms": b, "pick": name, "fresh_ms": fresh[name][0] if name else None, "fresh_fits": fits, "ok": good}
        )
    return {
        "budgets": len(budgets),
        "ok": ok,
        "refused": sum(1 for r in rows if r["pick"] is None),
        # refused although the fresh pass measures a path within: at_budget's figure undecided or slower there
        "refused_but_a_path_fits": sum(1 for r in rows if r["pick"] is None and r["fresh_fits"]),
        "picked_over": sum(1 for r in rows if r["pick"] is not None and not r["ok"]),
        "fresh_bench": {n: {"ms": v, "se": se} for n, (v, se) in fresh.items()},
        "fresh_bench_other_load_cores": load.cores,
        "rows": rows,
    }


def seed_row(run, folder: Path, wall_s: float, rest_s: float | None = None) -> dict:
    """One seed: the family's paths against the run's separate networks, memory, the sweep and wall time."""
    fam = run.family
    if fam is None or fam.note:
        return {"wall_s": wall_s, "note": fam.note if fam else "no family recorded"}
    from dery_deploy.deploy.family_info import read_family

    info = read_family(Path(fam.folder))
    loads = [p.latency.other_load_cores for p in info.paths if p.latency is not None]
    paths = [
        {
            "name": p.name,
            "budget_ms": p.budget_ms,
            "plan": p.plan,
            "trained": p.trained,
            "fallback": p.fallback,
            "before_ms": p.before_ms,
            "before_se_ms": p.before_se_ms,
            "before_within": p.before_within,
            "family_pass_ms": p.latency_ms,
            "family_pass_se_ms": p.latency_se_ms,
            "within": p.within,
            "verdict": p.verdict,
            "top1": p.top1,
            "separate_plan": p.separate_plan,
            "separate_top1": p.separate_top1,
            "separate_ms": p.separate_ms,
            "top1_difference": p.difference,
        }
        for p in fam.paths
    ]
    family_s = sum(s.seconds for s in run.stages if "family" in s.stage)
    reused = any(s.status == "reused" for s in run.stages if "family" not in s.stage)
    rest = rest_s if (rest_s is not None and reused) else run.seconds - family_s
    limit = asdict(run.time_limit) if run.time_limit is not None else None
    return {
        "wall_s": wall_s,
        "time_limit": limit,  # what `--time-limit` cut, where it was given
        "run_seconds": run.seconds,
        "family_stage_seconds": round(family_s, 1),
        "family_fraction_of_run": round(family_s / (rest + family_s), 4) if rest + family_s else None,
        # what building the family adds to the run without it (issue 28: at most 20%)
        "family_added_to_run": round(family_s / rest, 4) if rest > 0 else None,
        # where the run without the family was reused (a joint rerun): its seconds from the first run's row
        "rest_seconds_from_first_run": rest_s if reused else None,
        "within": sum(1 for p in fam.paths if p.within),
        "paths": paths,
        "before_passes": fam.before_passes,
        "before_other_load_cores": fam.before_other_load_cores,
        "before_notes": fam.before_notes,
        "family_pass_other_load_cores": max((c for c in loads if c is not None), default=None),
        "distinct_bytes": fam.distinct_bytes,
        "separate_bytes": fam.separate_bytes,
        "bytes_ratio": fam.ratio,
        "memory": memory(run, Path(fam.folder)),
        "at_budget": sweep(Path(fam.folder), fam.percentile),
    }


def summary(seeds: dict) -> dict:
    rows = [s for s in seeds.values() if "paths" in s]
    by_budget: dict[str, list[float]] = {}
    for s in rows:
        for p in s["paths"]:
            if p["top1_difference"] is not None:
                by_budget.setdefault(f"{p['budget_ms']:g}", []).append(p["top1_difference"])
    return {
        "within": f"{sum(s['within'] for s in rows)} of {sum(len(s['paths']) for s in rows)}",
        "top1_difference_mean": {b: round(statistics.mean(d), 2) for b, d in by_budget.items()},
        "top1_differences": by_budget,
        "bytes_ratio": [s["bytes_ratio"] for s in rows],
        "at_budget_ok": f"{sum(s['at_budget'].get('ok', 0) for s in rows)} of {SWEEP * len(rows)}",
        "family_fraction_of_run": [s["family_fraction_of_run"] for s in rows],
        "family_added_to_run": [s["family_added_to_run"] for s in rows],
    }


def first_run_rest(seed: int, args) -> float | None:
    """A joint rerun reuses the seed's folder up to the family: the run's seconds without the family, from the
    frozen bench's row of that seed (bench/family_run.json), where it has one."""
    if args.family_training == "frozen":
        return None
    f = ROOT / "bench" / "family_run.json"
    row = json.loads(f.read_text()).get("seeds", {}).get(str(seed)) if f.is_file() else None
    return round(row["run_seconds"] - row["family_stage_seconds"], 1) if row else None


def commit() -> str:
    p = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return p.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default=None, help="default 0,1,2 (--quick: 0)")
    ap.add_argument("--labels-per-class", type=int, default=None, help="default 100 (--quick: 20)")
    ap.add_argument("--budgets", default=None, help="ms, comma-separated (default: bench/family.json's fashion)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-family"))
    ap.add_argument("--quick", action="store_true", help="a smoke run: `dery run --quick`, 20 labels per class")
    ap.add_argument(
        "--time-limit", type=float, default=None, help="minutes: `dery run --time-limit` (its cuts are recorded)"
    )
    ap.add_argument(
        "--family-training",
        choices=("frozen", "joint"),
        default="joint",
        help="`dery run --family-training` (default joint, as the run's): where the frozen bench ran first in the "
        "same folders, only the family is trained again and its time is held against the first run's",
    )
    ap.add_argument(
        "-o",
        "--out",
        default=None,
        help="default bench/family_run.json, joint: family_run_joint.json (--quick: runs/...)",
    )
    args = ap.parse_args()
    from dery_deploy.artifacts import atomic_write_json

    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    labels = args.labels_per_class or (20 if args.quick else 100)
    name = "family_run.json" if args.family_training == "frozen" else "family_run_joint.json"
    out = Path(
        args.out or (Path(args.work) / name.replace("family_run", "quick") if args.quick else ROOT / "bench" / name)
    )
    if args.budgets:
        budgets = [float(b) for b in args.budgets.split(",")]
    else:
        budgets = json.loads((ROOT / "bench" / "family.json").read_text())["fashion"]["budgets_chosen_ms"]
    result = json.loads(out.read_text()) if out.is_file() else {}
    same = result.get("budgets") == budgets and result.get("labels_per_class") == labels
    same = same and result.get("time_limit_min") == args.time_limit
    same = same and result.get("family_training", "frozen") == args.family_training
    done = result.get("seeds", {}) if same and result.get("quick", False) == args.quick else {}
    for row in done.values():  # seeds measured before rows kept their commit: the file's was theirs
        row.setdefault("commit", result.get("commit"))
    result = {
        "machine": machine(),
        "commit": commit(),
        "command": " ".join(["python", "scripts/bench_family_run.py", *sys.argv[1:]]),
        "budgets": budgets,
        "labels_per_class": labels,
        "quick": args.quick,
        "time_limit_min": args.time_limit,
        "target": "onnxruntime/fp32, batch 1",
        "family_training": args.family_training,
        "seeds": done,
    }
    for seed in seeds:
        if str(seed) in done:
            print(f"seed {seed}: done, skipped", flush=True)
            continue
        cut = f"-limit{args.time_limit:g}" if args.time_limit else ""
        folder = Path(args.work) / f"labels{labels}-seed{seed}{'-quick' if args.quick else ''}{cut}"
        extra = ["--data", data_spec(labels), "--family", "--targets", "onnxruntime/fp32"]
        extra += ["--time-limit", f"{args.time_limit:g}"] if args.time_limit else []
        extra += ["--family-training", args.family_training]
        t0 = time.time()
        run = one_run(folder, seed, budgets, [*extra, *(["--quick"] if args.quick else [])])
        row = seed_row(run, folder, round(time.time() - t0, 1), first_run_rest(seed, args))
        row["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        row["commit"] = commit()  # the file's commit is the last seed's; each seed keeps its own
        result["seeds"][str(seed)] = row
        result["summary"] = summary(result["seeds"])
        atomic_write_json(out, result)
        print(f"seed {seed}:", json.dumps({k: v for k, v in row.items() if k != "at_budget"}, indent=1), flush=True)
        sw = row.get("at_budget", {})
        misses = [r for r in sw.get("rows", []) if not r["ok"]]
        print(f"seed {seed} at_budget: {sw.get('ok')} of {SWEEP} ok; not ok: {misses}", flush=True)
    result["summary"] = summary(result["seeds"])
    atomic_write_json(out, result)
    print("summary:", json.dumps(result["summary"], indent=1), flush=True)


if __name__ == "__main__":
    main()
