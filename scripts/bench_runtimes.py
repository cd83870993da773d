#!/usr/bin/env python3
"""Runtime and precision as part of the answer: what ships per budget when `dery run` searches only
ONNX Runtime fp32 and when it searches every combination the device lists; writes JSON.

    python scripts/bench_runtimes.py [--batches 1,32] [--budgets 32=1.13,2.5] [--work runs/bench-runtimes]
                                     [-o bench/runtimes.json]

Per batch size, one `dery run` over the device's searchable combinations (its default budgets, in the
gaps between the donors' latencies on their fastest combination), then one with `--targets
onnxruntime/fp32` at the same budgets in the same run folder (so donors, teacher, similarity,
partition and profiles are shared, and only the search differs). Batches not asked for keep their
rows in the output file, each with its own commit; a rerun in a used folder keeps the batch's
from-scratch times (`first_run`). Per budget: what ships under each
(network, runtime, precision, measured latency, test top-1), and the difference. Also: the INT8
test-accuracy change of every fine-tuned donor on each INT8 runtime, and each profile's time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_common import ROOT, machine


def dery_run(out: Path, batch: int, *extra: str) -> dict:
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "dery_deploy.cli.main", "run", "-o", str(out), "--batch", str(batch), "--no-aoti"]
        + ["--allow-over-budget", *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    run = json.loads((out / "run.json").read_text())
    run["_seconds"] = round(time.time() - t0, 1)
    run["_rc"] = p.returncode
    run["_error"] = p.stderr.strip().splitlines()[-1:] if p.returncode else []
    return run


def shipped(run: dict) -> list[dict]:
    rows = []
    for r in run["results"]:
        if "plan" not in r:
            rows.append({"budget_ms": r["budget_ms"], "infeasible": r.get("infeasible")})
            continue
        pick = r.get("pick_triple") or {}
        rows.append(
            {
                "budget_ms": r["budget_ms"],
                "network": pick.get("network"),
                "kind": r.get("pick_kind"),
                "target": pick.get("target"),
                "measured_ms": r.get("measured_ms"),
                "uncertainty": r.get("measured_uncertainty"),
                "within_budget": ((r.get("export") or {}).get("budget") or {}).get("within_budget"),
                "test_top1": r.get("top1"),
                "fp32_top1": r.get("fp32_top1", r.get("top1")),
                "int8_test_change": ((r.get("export") or {}).get("int8") or {}).get("int8_top1_change"),
            }
        )
    return rows


def profile_seconds(run: dict) -> dict:
    return {
        s["stage"].removeprefix("profile "): s["seconds"] for s in run["stages"] if s["stage"].startswith("profile ")
    }


def donor_int8(run: dict, out: Path) -> dict:
    """Every fine-tuned donor's test top-1 change as int8 on each int8 runtime searched (run on the CPU here)."""
    from dery_deploy.data.task import load_task
    from dery_deploy.pipeline.stages import int8_on
    from dery_deploy.zoo import get_zoo

    zoo = get_zoo(run["zoo"])
    task = load_task(run["options"]["data"], zoo.input, run["options"]["seed"])
    out_ = {}
    for n, d in run["donors"].items():
        for t in run["targets"]:
            if t.endswith("/int8"):
                acc = int8_on(Path(d["run"]), task, t, run["options"].get("threads") or 1, "test")
                kept = ("top1", "fp32_top1", "top1_change", "change_se")
                out_.setdefault(n, {})[t] = {k: getattr(acc, k) for k in kept}
    return out_


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,32")
    ap.add_argument(
        "--budgets",
        action="append",
        default=[],
        metavar="BATCH=MS,MS",
        help="a batch size's budgets (default: the run's own, in the gaps between the donors' fastest latencies)",
    )
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-runtimes"))
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "runtimes.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from dery_deploy.artifacts import atomic_write_json

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result = {"machine": machine(), "commit": commit.stdout.strip(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    prev = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    # batches not rerun keep their rows, each with the commit and time it was measured at
    result["batches"] = {
        b: {"commit": prev.get("commit"), "when": prev.get("when"), **res} for b, res in prev.get("batches", {}).items()
    }
    for batch in [int(b) for b in args.batches.split(",")]:
        out = Path(args.work) / f"b{batch}"
        reused = (out / "run.json").is_file()  # a rerun in the same folder reuses the training: its time is not a run's
        asked = [b.split("=", 1)[1] for b in args.budgets if b.split("=", 1)[0] == str(batch)]
        every = dery_run(out, batch, *(["--budgets", asked[0]] if asked else []))
        budgets = ",".join(f"{b:g}" for b in every["budgets"])
        every_rows = shipped(every)
        fp32 = dery_run(out, batch, "--targets", "onnxruntime/fp32", "--budgets", budgets)
        fp32_rows = shipped(fp32)
        rows = []
        for a, f in zip(every_rows, fp32_rows):
            gain = (
                round(a["test_top1"] - f["test_top1"], 2)
                if a.get("test_top1") is not None and f.get("test_top1") is not None
                else None
            )
            rows.append({"budget_ms": a["budget_ms"], "all_targets": a, "onnxruntime_fp32_only": f, "top1_gain": gain})
        before = result["batches"].get(str(batch), {})
        first = (
            before.get("first_run")
            if reused
            else {
                "note": f"this run, from an empty folder ({result['when']}, commit {result['commit']})",
                "run_seconds": {"all_targets": every["_seconds"], "onnxruntime_fp32_only": fp32["_seconds"]},
                "profile_seconds": profile_seconds(every),
                "budgets": every["budgets"],
            }
        )
        result["batches"][str(batch)] = {
            "commit": result["commit"],
            "when": result["when"],
            **({"first_run": first} if first else {}),
            "targets": every["targets"],
            "budgets": every["budgets"],
            "rows": rows,
            "run_seconds": {"all_targets": every["_seconds"], "onnxruntime_fp32_only": fp32["_seconds"]},
            "all_targets_run_reused_a_folder": reused,
            "errors": {"all_targets": every["_error"], "onnxruntime_fp32_only": fp32["_error"]},
            "profile_seconds": profile_seconds(every),
            "final_pass_noise_index": {
                "all_targets": every.get("final_pass", {}).get("noise_index"),
                "onnxruntime_fp32_only": fp32.get("final_pass", {}).get("noise_index"),
            },
            "donor_int8_test_change": donor_int8(every, out),
            "donor_latency_ms": {n: d.get("latency_by_target") for n, d in every["donors"].items()},
        }
        print(json.dumps(result["batches"][str(batch)]["rows"], indent=1), flush=True)
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
