#!/usr/bin/env python3
"""Reassembly quality and the budget promise, over seeds and budgets in the gaps between donor
latencies; and when reassembly pays as the labels grow. Writes JSON.

    python scripts/bench_quality.py [--seeds 0,1,2] [--work runs/bench] [-o bench/quality.json]
    python scripts/bench_quality.py --labels-per-class 100,1000,6000   # seeds 0,1 -> bench/scaling.json
    python scripts/bench_quality.py --merge A.json B.json [...] -o bench/quality.json   # one table of their seeds

To compare two commits' run times on a host whose speed drifts, run one seed of each in turn (each commit's
own checkout and script, `--seeds 0 -o ...`, then `--seeds 1`), and `--merge` each commit's single-seed tables.

Budgets come from the donors' latencies measured here (one `dery profile` without a partition):
below every donor, between the two fastest, between the fastest good donor (the best by source
accuracy among the two fastest... in practice resnet10t_tops) and the next, and in the widest gap
above. Each seed is one full `dery run --budgets ...` (every network trained with the same recipe,
distillation included), timed end to end. Per budget it records the shipped pick and its test
accuracy, the best reassembled plan and the best fitting donor (same recipe), stitch-only vs end to
end, and what shipped measured against the budget; per run the finalists dropped after measurement.

With --labels-per-class (the data-scaling table, "when does reassembly pay"), a cell is one label
count and one seed: one `dery run` over the gap budgets on Fashion-MNIST with that many labels per
class (6000 = every training image labelled, 20% of them the validation split), with the recipe cut
where this 2-core machine needs it (`CUTS`, recorded in the JSON). The JSON is written after every
cell and a rerun skips the cells it holds (same budgets, same cut) and keeps its budgets; an
interrupted cell's `dery run` resumes from its own finished stages. Estimated on this CPU when quiet
(one epoch measured at each label count, every other training of a 100-label run scaled by the
images it would process): a cell over 4 budgets takes about 10 min at 100 labels, 16 min at 1000 and
an hour at 6000, about 3 hours for the table with 2 seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench_common import ROOT, machine, read_run

if TYPE_CHECKING:
    from dery_deploy.pipeline.manifest import RunManifest
    from dery_deploy.pipeline.records import BudgetResult, MixResult


def dery(*args: str) -> subprocess.CompletedProcess:
    """The `dery` of this checkout (run from its root, so `-m` imports this package, not an installed one)."""
    return subprocess.run(
        [sys.executable, "-m", "dery_deploy.cli.main", *args], capture_output=True, text=True, cwd=ROOT
    )


def gap_budgets() -> tuple[list[float], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        p = dery("profile", "--zoo", "fashion", "--device", "cpu", "--json", "--cache", tmp)
        if p.returncode:
            raise SystemExit(p.stderr[-3000:])
        donors = {n: d["latency_ms"] for n, d in json.loads(p.stdout)[0]["donors"].items()}
    lat = sorted(donors.values())
    r = lambda x: float(f"{x:.3g}")  # noqa: E731
    widest = max((lat[i + 1] / lat[i], (lat[i] + lat[i + 1]) / 2) for i in range(2, len(lat) - 1))[1]
    return sorted({r(0.85 * lat[0]), r((lat[0] + lat[1]) / 2), r((lat[1] + lat[2]) / 2), r(widest)}), donors


def summarise(run: RunManifest) -> list[dict]:
    """One row per budget of a run: what shipped against the best donor and the best reassembled network."""
    return [
        {"budget_ms": r.budget_ms, "infeasible": r.infeasible} if r.infeasible is not None else budget_row(r, run)
        for r in run.results
    ]


def fitting_donors(r: BudgetResult, run: RunManifest) -> dict[str, float | None]:
    """Each donor that fits the budget and its test top-1, on the target it fits fastest (int8's where that
    is int8; older runs kept only the donor's own)."""
    fit = r.donor_fit or {}
    return {n: fit[n].top1 if n in fit else run.donors[n].top1 for n in r.donors_within_budget or []}


def budget_row(r: BudgetResult, run: RunManifest) -> dict:
    donors = fitting_donors(r, run)
    best = max(donors, key=lambda n: donors[n] or 0.0) if donors else None
    best_top1 = donors.get(best) if best else None
    sel, triple, shipped = r.selection, r.pick_triple, r.export
    timing = shipped.timing if shipped else None
    verdict = shipped.budget if shipped else None
    return {
        "budget_ms": r.budget_ms,
        "promised_ms": r.promised_ms,  # the raised budget, where the run raised one it chose itself
        "pick": triple.network if triple else sel.pick if sel else None,
        "pick_target": triple.target if triple else None,
        "pick_kind": r.pick_kind,
        "rule": sel.rule if sel else None,
        "selection_noise": sel.noise if sel else None,
        "selection_images": sel.images if sel else None,
        "selection_folds": sel.folds if sel else 1,
        "shipped_top1": r.top1,
        "best_donor": best,
        "best_donor_top1": best_top1,
        **mix_columns(r.mix, best_top1),
        "shipped_minus_donor": None if best_top1 is None or r.top1 is None else round(r.top1 - best_top1, 2),
        "shipped_measured_ms": timing.latency_ms if timing else None,
        "shipped_noise": timing.latency_noise if timing else None,
        "shipped_within_budget": verdict.within_budget if verdict else None,
        "shipped_budget_checked": verdict.checked if verdict else None,
        "finalists": len(r.finalists or []),
        "dropped_over_budget": len(r.rejected_over_budget or []),
        "planning_margin": r.margin,
    }


def mix_columns(mix: MixResult | None, donor_top1: float | None) -> dict:
    """The best reassembled network of a budget (its plan), against the best donor."""
    plan = mix.plan if mix else None
    return {
        "best_reassembled": plan.describe() if plan else None,
        "best_reassembled_seams": plan.seams if plan else None,
        "best_reassembled_top1": mix.top1 if mix else None,
        "best_reassembled_val": mix.val_accuracy if mix else None,
        "best_reassembled_carried_from_ms": mix.carried_from if mix else None,
        "best_reassembled_stitch_only_top1": mix.phase1_top1 if mix else None,
        "best_reassembled_measured_ms": mix.measured_ms if mix else None,
        "reassembled_minus_donor": None if mix is None or donor_top1 is None else round(mix.top1 - donor_top1, 2),
    }


# Per label count: the `dery run` options that cut its recipe to fit this 2-core CPU, and why. One
# epoch costs the same per image at every label count (measured: 0.48-0.58 ms resnet10t_tops,
# 0.72-0.78 mnv3_rot, 0.76-0.85 mobilevit_lower), so it is 10x longer at 1000 labels and 60x at 6000;
# the cut keeps every cut recipe at more optimisation steps than the default gets at 100 labels
# (13 steps x 10 epochs), so no label count is under-trained relative to the baseline. The selection
# rungs (1 and 2 epochs end to end) are the pipeline's and stay; at 1000+ labels the validation split
# (2000+ images) decides alone, without cross-validation (`train/select/halving.py`, `default_folds`).
CUTS: dict[int, tuple[list[str], str]] = {
    100: ([], "the default recipe (phase 1 at most 4 epochs, phase 2 6 epochs)"),
    1000: (
        ["--epochs-adapter", "1", "--epochs-full", "2"],
        "phase 1 one epoch, phase 2 two epochs (375 steps; the default's 4 / 6 would be 10x longer per epoch)",
    ),
    6000: (
        ["--epochs-adapter", "1", "--epochs-full", "1"],
        "phase 1 and phase 2 one epoch each (1500 steps; the default's 4 / 6 would be 60x longer per epoch)",
    ),
}


def targets(args) -> list[str]:
    """dery run's --targets where the benchmark restricts them (recorded with each cell)."""
    return ["--targets", args.targets] if args.targets else []


def data_spec(labels: int) -> str:
    """The --data of a label count: 6000 per class is every Fashion-MNIST training image."""
    return "fashion-mnist" if labels >= 6000 else f"fashion-mnist:labels_per_class={labels}"


def scaling(args, budgets: list[float], donor_ms: dict) -> None:
    """The data-scaling table: one `dery run` per (label count, seed), resumable cell by cell."""
    from dery_deploy.artifacts import atomic_write_json

    out = Path(args.out).resolve()
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update(
        {
            "machine": machine(),
            "budgets": budgets,
            "donor_latency_ms_profiled": donor_ms,
            "cuts": {str(n): why for n, (_, why) in CUTS.items()},
        }
    )
    cells = result.setdefault("cells", {})
    for labels in [int(x) for x in args.labels_per_class.split(",")]:
        if labels not in CUTS:
            raise SystemExit(f"--labels-per-class {labels}: no recipe cut for it; choose from {sorted(CUTS)}")
        for seed in [int(s) for s in args.seeds.split(",")]:
            name = f"{labels}/{seed}"
            done = cells.get(name)
            same = done and done["budgets_asked"] == budgets and done["cut"] == CUTS[labels][0]
            if same and done.get("targets") == args.targets:
                folder = Path(args.work) / f"labels{labels}-seed{seed}"
                if (folder / "run.json").is_file():  # re-read: what is summarised may have grown since the cell ran
                    done["budgets"] = summarise(read_run(folder))
                print(f"cell {name}: done, skipped", flush=True)
                continue
            t0 = time.time()
            run = one_run(
                Path(args.work) / f"labels{labels}-seed{seed}",
                seed,
                budgets,
                ["--data", data_spec(labels), *CUTS[labels][0], *targets(args)],
            )
            cells[name] = {
                "labels_per_class": labels,
                "seed": seed,
                "data": data_spec(labels),
                "cut": CUTS[labels][0],
                "budgets_asked": budgets,
                "targets": args.targets,
                "wall_s": round(time.time() - t0, 1),
                "budgets": summarise(run),
                "recipe": plain(run.recipe),
                "teacher": plain(run.teacher),
            }
            result["per_labels"] = per_labels(cells)
            result["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            atomic_write_json(out, result)
            print(f"cell {name}: {cells[name]['wall_s']} s", json.dumps(cells[name]["budgets"], indent=1), flush=True)
    result["per_labels"] = per_labels(cells)
    result["best_mix_val_non_decreasing"] = {name: non_decreasing(c["budgets"]) for name, c in cells.items()}
    atomic_write_json(out, result)


def non_decreasing(rows: list[dict]) -> bool | None:
    """Issue 21's promise within one run: the best reassembled network's validation accuracy never falls
    as the budget grows (None where fewer than two budgets have one)."""
    by_budget = sorted(rows, key=lambda r: r["budget_ms"])
    vals = [r["best_reassembled_val"] for r in by_budget if r.get("best_reassembled_val") is not None]
    return None if len(vals) < 2 else all(b >= a for a, b in zip(vals, vals[1:]))


def per_labels(cells: dict) -> dict:
    """Per label count and budget: means over seeds and the per-seed verdict."""
    out: dict = {}
    for c in cells.values():
        for r in c["budgets"]:
            out.setdefault(str(c["labels_per_class"]), {}).setdefault(f"{r['budget_ms']:g}", []).append(r)
    return {
        n: {
            b: aggregate([r for r in rows if "pick" in r])
            for b, rows in sorted(by.items(), key=lambda kv: float(kv[0]))
        }
        for n, by in sorted(out.items(), key=lambda kv: int(kv[0]))
    }


def one_run(out: Path, seed: int, budgets: list[float], extra: list[str]) -> RunManifest:
    """One `dery run` over `budgets` into `out` (resumed where it stopped); its run.json, typed."""
    p = dery(
        "run",
        "--seed",
        str(seed),
        "--budgets",
        ",".join(f"{b:g}" for b in budgets),
        "-o",
        str(out.resolve()),
        "--no-aoti",
        "--allow-over-budget",  # the verdicts are what this measures: recorded, not fatal
        "--heal-every-mix",  # the reassembled-vs-donor columns need every budget's best mix healed
        *extra,
    )
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return read_run(out)


def plain(record: Any) -> dict | None:
    """A typed record as the JSON this benchmark writes (None stays None)."""
    return None if record is None else asdict(record)


def aggregate(rows: list[dict]) -> dict:
    agg: dict = {}
    for key in (
        "shipped_top1",
        "best_reassembled_top1",
        "best_donor_top1",
        "reassembled_minus_donor",
        "shipped_minus_donor",
        "best_reassembled_stitch_only_top1",
    ):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            agg[key] = {
                "mean": round(statistics.mean(vals), 2),
                "std": round(statistics.stdev(vals), 2) if len(vals) > 1 else 0.0,
                "n": len(vals),
            }
    agg["picks"] = [r["pick"] for r in rows]
    agg["pick_kinds"] = [r["pick_kind"] for r in rows]
    agg["selection_noise"] = [r.get("selection_noise") for r in rows]
    agg["verdict"] = verdict(rows)
    return agg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default=None, help="default: 0,1,2; with --labels-per-class 0,1")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench"))
    ap.add_argument(
        "-o", "--out", default=None, help="default: bench/quality.json, with --labels-per-class bench/scaling.json"
    )
    ap.add_argument(
        "--labels-per-class", default=None, help=f"the data-scaling table over these label counts, of {sorted(CUTS)}"
    )
    ap.add_argument("--budgets", default=None, help="budgets in ms (default: the gaps between the donors' latencies)")
    ap.add_argument(
        "--targets",
        default=None,
        help="dery run's --targets (e.g. onnxruntime/fp32: compare networks on one runtime; default: the device's)",
    )
    ap.add_argument("--merge", nargs="+", default=None, help="tables (JSON) to merge into -o; runs nothing")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from dery_deploy.artifacts import atomic_write_json

    if args.merge:
        merge(args.merge, args.out or str(ROOT / "bench" / "quality.json"))
        return

    scaled = bool(args.labels_per_class)
    args.out = args.out or str(ROOT / "bench" / ("scaling.json" if scaled else "quality.json"))
    args.seeds = args.seeds or ("0,1" if scaled else "0,1,2")
    before = json.loads(Path(args.out).read_text()) if scaled and Path(args.out).is_file() else {}
    if args.budgets:
        budgets, donor_ms = [float(b) for b in args.budgets.split(",")], {}
    elif before.get("budgets"):  # a resumed table keeps its budgets: a new profile would move them a little
        budgets, donor_ms = before["budgets"], before["donor_latency_ms_profiled"]
    else:
        budgets, donor_ms = gap_budgets()
    print("budgets", budgets, "donors", donor_ms, flush=True)
    if scaled:
        scaling(args, budgets, donor_ms)
        return
    result: dict = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "budgets": budgets,
        "donor_latency_ms_profiled": donor_ms,
        "seeds": {},
    }
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.time()
        run = one_run(Path(args.work) / f"seed{seed}", seed, budgets, targets(args))
        result["seeds"][str(seed)] = {
            "wall_s": round(time.time() - t0, 1),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "budgets": summarise(run),
            "teacher": plain(run.teacher),
            "verify": plain(run.verify),
            "donor_latency_ms": run.donor_latency_ms,
        }
        print(json.dumps(result["seeds"][str(seed)]["budgets"], indent=1), flush=True)
    atomic_write_json(args.out, tabulate(result, budgets))


def merge(paths: list[str], out: str) -> None:
    """One table of the seeds of several tables made at the same budgets (each seed from one table only)."""
    from dery_deploy.artifacts import atomic_write_json

    tables = [json.loads(Path(p).read_text()) for p in paths]
    budgets = tables[0]["budgets"]
    if any(t["budgets"] != budgets for t in tables):
        raise SystemExit(f"--merge: the tables were made at other budgets ({[t['budgets'] for t in tables]})")
    result = {**tables[0], "merged_from": [str(p) for p in paths], "seeds": {}}
    for path, t in zip(paths, tables):
        for seed, row in t["seeds"].items():
            if seed in result["seeds"]:
                raise SystemExit(f"--merge: seed {seed} is in more than one table ({path})")
            result["seeds"][seed] = {"when": t["when"], **row}
    result["seeds"] = dict(sorted(result["seeds"].items(), key=lambda kv: int(kv[0])))
    atomic_write_json(out, tabulate(result, budgets))


def tabulate(result: dict, budgets: list[float]) -> dict:
    """`result` with its per-budget aggregates, budget promise and run seconds over its seeds."""
    result["per_budget"] = {
        f"{b:g}": aggregate(
            [r for s in result["seeds"].values() for r in s["budgets"] if r["budget_ms"] == b and "pick" in r]
        )
        for b in budgets
    }
    shipped = [r for s in result["seeds"].values() for r in s["budgets"] if r.get("shipped_budget_checked")]
    result["budget_promise"] = {
        "shipped_checked": len(shipped),
        "shipped_within_budget": sum(1 for r in shipped if r["shipped_within_budget"]),
        "shipped_undecided": sum(1 for r in shipped if r["shipped_within_budget"] is None),  # too noisy to judge
        "measured_over_budget": [
            {"budget_ms": r["budget_ms"], "measured_ms": r["shipped_measured_ms"]}
            for r in shipped
            if r["shipped_measured_ms"] > r.get("promised_ms", r["budget_ms"])
        ],
        "finalists": sum(r["finalists"] for s in result["seeds"].values() for r in s["budgets"] if "finalists" in r),
        "finalists_dropped_over_budget": sum(
            r["dropped_over_budget"]
            for s in result["seeds"].values()
            for r in s["budgets"]
            if "dropped_over_budget" in r
        ),
    }
    result["run_seconds"] = [s["wall_s"] for s in result["seeds"].values()]
    return result


def verdict(rows: list[dict]) -> str:
    """Per seed, not on the mean: which donors fit a budget drifts with the measured latencies,
    so a mean over seeds can hide a loss behind one large win."""
    diffs = [r["reassembled_minus_donor"] for r in rows if r.get("reassembled_minus_donor") is not None]
    if not any(r.get("best_donor_top1") is not None for r in rows):
        return "no donor fits: reassembly is the only answer"
    parts = []
    won = sum(d >= 1 for d in diffs)
    lost = sum(d <= -1 for d in diffs)
    tied = len(diffs) - won - lost
    no_donor = len(rows) - len(diffs)
    for n, word in ((won, "won"), (tied, "tied"), (lost, "lost")):
        if n:
            parts.append(f"{word} {n}")
    if no_donor:
        parts.append(f"no donor fit {no_donor}")
    out = f"{', '.join(parts)} of {len(rows)} seeds (±1 point = tied)"
    if lost:  # what the user got where the best reassembled network lost: selection may have shipped the donor
        kept = sum(
            1 for r in rows if (r.get("reassembled_minus_donor") or 0) <= -1 and r.get("shipped_minus_donor") == 0
        )
        out += f"; where it lost, selection shipped the donor {kept} of {lost} times"
    return out


if __name__ == "__main__":
    main()
