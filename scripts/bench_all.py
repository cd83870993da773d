#!/usr/bin/env python3
"""Run every benchmark script and write bench/results.json plus bench/results.md.

    python scripts/bench_all.py            # about 45 minutes on a 2-core CPU
    python scripts/bench_all.py --skip finetune

Each script also runs alone; this collects their JSON and times `dery run --quick` from scratch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

from bench_common import ROOT, machine

SCRIPTS = ["similarity", "profile", "assemble", "finetune"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip", nargs="*", default=[])
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from dery_deploy.artifacts import atomic_write_json, atomic_write_text

    bench = ROOT / "bench"
    results = {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "scripts": {}}
    for name in SCRIPTS:
        if name in args.skip:
            if (bench / f"{name}.json").is_file():
                results["scripts"][name] = json.loads((bench / f"{name}.json").read_text())
            continue
        t0 = time.time()
        subprocess.run([sys.executable, str(ROOT / "scripts" / f"bench_{name}.py")], check=True)
        results["scripts"][name] = json.loads((bench / f"{name}.json").read_text())
        results["scripts"][name]["bench_wall_s"] = round(time.time() - t0, 1)
    previous = json.loads((bench / "results.json").read_text()) if (bench / "results.json").is_file() else {}
    if "quick" in args.skip:
        results.update({k: previous[k] for k in ("quick_run_s", "quick_rerun_s", "quick_when") if k in previous})
    else:
        quick = ROOT / "runs" / "bench-quick"
        shutil.rmtree(quick, ignore_errors=True)
        t0 = time.time()
        subprocess.run(
            [sys.executable, "-m", "dery_deploy.cli.main", "run", "--quick", "-o", str(quick)],
            check=True,
            capture_output=True,
        )
        results["quick_run_s"] = round(time.time() - t0, 1)
        t0 = time.time()
        subprocess.run(
            [sys.executable, "-m", "dery_deploy.cli.main", "run", "--quick", "-o", str(quick)],
            check=True,
            capture_output=True,
        )
        results["quick_rerun_s"] = round(time.time() - t0, 1)
        results["quick_when"] = results["when"]
    atomic_write_json(bench / "results.json", results)
    atomic_write_text(bench / "results.md", summary(results))
    print(summary(results))


def summary(r: dict) -> str:
    s = r["scripts"]
    m = r["machine"]
    lines = [
        f"# Benchmark results ({r['when']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"GPU: {m['gpu'] or 'none'}.",
        "",
    ]
    if "similarity" in s:
        sim, part = s["similarity"]["similarity"], s["similarity"]["partition"]
        lines += [
            "## Similarity and partition (fashion zoo, 512 probe images, K=4)",
            "",
            f"- `dery similarity` from an empty cache: {sim['wall_s']} s, peak RSS {sim['peak_rss_mb']} MB "
            f"(target < 60 s, < 2 GB); cached rerun {sim['cached_rerun_s']} s.",
            f"- Partition objective, exact-DP optimiser: {part['dp']['objective']} in {part['dp']['seconds']} s; "
            f"paper's one-unit moves: {part['paper_local_moves']['objective']} in {part['paper_local_moves']['seconds']} s "
            f"(difference {part['dp_minus_paper']:+}).",
            f"- Stability: {part['stability']['same_as_most_common']} of 5 seeds return the same partition.",
            "",
        ]
    if "profile" in s:
        lines += ["## Profile and latency model", ""]
        for run in s["profile"]["runs"]:
            v = run["verify"]
            rep = run.get("repeatability")
            lines.append(
                f"- {s['profile']['device']} {run['backend']} {run['precision']} b{run['batch']}: profiled "
                f"{run['items']} items in {run['profile_seconds']} s; latency model over {v['n']} mixed "
                f"assemblies: median |error| {100 * v['median_abs_rel_error']:.2f}%, max "
                f"{100 * v['max_abs_rel_error']:.2f}%"
                + (f"; repeatability: median per-item difference {100 * rep['median_rel_diff']:.2f}%" if rep else "")
            )
        lines.append("")
    if "assemble" in s:
        a = s["assemble"]
        lines += ["## Reassembly", ""]
        for name, rows in a["cpsat"].items():
            if name == "target":
                continue
            for row in rows:
                bf = (
                    f", brute force agrees: {row['same_optimum_as_brute_force']}"
                    if "same_optimum_as_brute_force" in row
                    else ""
                )
                lines.append(
                    f"- CP-SAT {name} at {row['budget_ms']} ms: {row['status']} in {row['seconds_to_optimal']} s, "
                    f"top 10 in {row['seconds_top10']} s{bf}"
                )
        pv = a["proxy_vs_accuracy"]
        lines += [
            f"- Proxy vs accuracy after a short adapter-only training ({len(pv['assemblies'])} assemblies): Kendall tau "
            + ", ".join(f"{k} {v}" for k, v in pv["kendall_tau"].items())
            + f"; LSQ-initialised accuracy before training (median) {pv['lsq_init_accuracy_median']:.2f}%."
        ]
        for row in a["cpsat_vs_optuna"]["budgets"]:
            lines.append(
                f"- {row.get('proxy', 'naswot')} at {row['budget_ms']} ms: CP-SAT+rerank best proxy "
                f"{row['cpsat']['best_proxy']} (accuracy {row['cpsat'].get('adapter_only_accuracy', '-')}%) vs "
                f"Optuna {row['optuna']['best_proxy']} (accuracy {row['optuna'].get('adapter_only_accuracy', '-')}%), "
                "10 proxy evaluations each"
            )
        lines.append("")
    if "finetune" in s:
        lines += [
            "## Accuracy: reassembled vs donors within the same budget (same data, same recipe)",
            "",
            "| seed | budget (ms) | reassembled top-1 | phase-1 only | best donor within budget | difference | ONNX parity | ONNX ms (predicted) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for seed, sd in s["finetune"]["seeds"].items():
            for b in sd["budgets"]:
                if "reassembled_top1" not in b:
                    lines.append(f"| {seed} | {b['budget_ms']} | infeasible | | | | | |")
                    continue
                o = b["exports"].get("onnx", {})
                lines.append(
                    f"| {seed} | {b['budget_ms']} | {b['reassembled_top1']:.2f} | {b['reassembled_phase1_top1']} | "
                    f"{b['best_donor_top1']} | {b['reassembly_minus_best_donor']} | {o.get('max_abs_diff', '-'):.1e} | "
                    f"{o.get('latency_ms', 0):.4f} ({b['predicted_ms']:.4f}) |"
                )
            lines.append("")
            lines.append(f"Seed {seed}: `dery run` took {sd['run_seconds']} s end to end.")
        lines.append("")
    if "quick_run_s" in r:
        lines += [
            f"`dery run --quick` from scratch: {r['quick_run_s']} s; rerun (all stages cached): {r['quick_rerun_s']} s.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
