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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench_common import ROOT, machine, read_run

if TYPE_CHECKING:
    from dery_deploy.pipeline.manifest import RunManifest


@dataclass
class RunDone:
    """A finished `dery run`: its typed run.json and how the command went."""

    manifest: RunManifest
    seconds: float
    rc: int
    error: list[str]


def dery_run(out: Path, batch: int, *extra: str) -> RunDone:
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "dery_deploy.cli.main", "run", "-o", str(out), "--batch", str(batch), "--no-aoti"]
        + ["--allow-over-budget", *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    error = p.stderr.strip().splitlines()[-1:] if p.returncode else []
    return RunDone(read_run(out), round(time.time() - t0, 1), p.returncode, error)


def shipped(run: RunManifest) -> list[dict]:
    """Per budget: the network, runtime and precision that ship, their measured latency and test top-1."""
    rows = []
    for r in run.results:
        if r.plan is None:
            rows.append({"budget_ms": r.budget_ms, "infeasible": r.infeasible})
            continue
        pick, export = r.pick_triple, r.export
        rows.append(
            {
                "budget_ms": r.budget_ms,
                "network": pick.network if pick else None,
                "kind": r.pick_kind,
                "target": pick.target if pick else None,
                "measured_ms": r.measured_ms,
                "uncertainty": r.measured_uncertainty,
                "within_budget": export.budget.within_budget if export and export.budget else None,
                "test_top1": r.top1,
                "fp32_top1": r.top1 if r.fp32_top1 is None else r.fp32_top1,
                "int8_test_change": export.int8.int8_top1_change if export and export.int8 else None,
            }
        )
    return rows


def profile_seconds(run: RunManifest) -> dict[str, float]:
    return {s.stage.removeprefix("profile "): s.seconds for s in run.stages if s.stage.startswith("profile ")}


def donor_int8(run: RunManifest) -> dict:
    """Every fine-tuned donor's test top-1 change as int8 on each int8 runtime searched (run on the CPU here)."""
    from dery_deploy.data.task import load_task
    from dery_deploy.pipeline.stages import int8_on
    from dery_deploy.zoo import get_zoo

    zoo = get_zoo(run.zoo)
    task = load_task(run.options.data, zoo.input, run.options.seed)
    out: dict = {}
    for n, d in run.donors.items():
        for t in run.targets:
            if t.endswith("/int8"):
                acc = int8_on(Path(d.run), task, t, run.options.threads or 1, "test")
                kept = ("top1", "fp32_top1", "top1_change", "change_se")
                out.setdefault(n, {})[t] = {k: getattr(acc, k) for k in kept}
    return out


def donor_latency(run: RunManifest) -> dict:
    """Each donor's final-pass latency on every target (ms and its uncertainty)."""
    return {n: {t: asdict(f) for t, f in d.latency_by_target.items()} for n, d in run.donors.items()}


def noise_index(run: RunManifest) -> float | None:
    return run.final_pass.noise_index if run.final_pass else None


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
    result: dict = {"machine": machine(), "commit": commit.stdout.strip(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
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
        budgets = ",".join(f"{b:g}" for b in every.manifest.budgets)
        fp32 = dery_run(out, batch, "--targets", "onnxruntime/fp32", "--budgets", budgets)
        before = result["batches"].get(str(batch), {})
        first = before.get("first_run") if reused else first_run(every, fp32, result["when"], result["commit"])
        result["batches"][str(batch)] = {
            "commit": result["commit"],
            "when": result["when"],
            **({"first_run": first} if first else {}),
            **compared(every, fp32),
            "all_targets_run_reused_a_folder": reused,
            "donor_int8_test_change": donor_int8(every.manifest),
        }
        print(json.dumps(result["batches"][str(batch)]["rows"], indent=1), flush=True)
        atomic_write_json(args.out, result)


def compared(every: RunDone, fp32: RunDone) -> dict:
    """Per budget what ships searching every target against searching ONNX Runtime fp32 alone, and what
    each run took and measured."""
    rows = []
    for a, f in zip(shipped(every.manifest), shipped(fp32.manifest)):
        both = a.get("test_top1") is not None and f.get("test_top1") is not None
        gain = round(a["test_top1"] - f["test_top1"], 2) if both else None
        rows.append({"budget_ms": a["budget_ms"], "all_targets": a, "onnxruntime_fp32_only": f, "top1_gain": gain})
    return {
        "targets": every.manifest.targets,
        "budgets": every.manifest.budgets,
        "rows": rows,
        "run_seconds": {"all_targets": every.seconds, "onnxruntime_fp32_only": fp32.seconds},
        "errors": {"all_targets": every.error, "onnxruntime_fp32_only": fp32.error},
        "profile_seconds": profile_seconds(every.manifest),
        "final_pass_noise_index": {
            "all_targets": noise_index(every.manifest),
            "onnxruntime_fp32_only": noise_index(fp32.manifest),
        },
        "donor_latency_ms": donor_latency(every.manifest),
    }


def first_run(every: RunDone, fp32: RunDone, when: str, commit: str) -> dict:
    """A batch's from-scratch times, kept while later reruns reuse its folder."""
    return {
        "note": f"this run, from an empty folder ({when}, commit {commit})",
        "run_seconds": {"all_targets": every.seconds, "onnxruntime_fp32_only": fp32.seconds},
        "profile_seconds": profile_seconds(every.manifest),
        "budgets": every.manifest.budgets,
    }


if __name__ == "__main__":
    main()
