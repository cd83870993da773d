#!/usr/bin/env python3
"""Is the latency a run records the latency its shipped file has alone? Writes bench/reproduce.json.

    python scripts/bench_reproduce.py [--quick] [--targets T,...] [--batches 1,32] [--calls 3000]
                                      [--runs-dir bench-runs/reproduce] [-o bench/reproduce.json]

1. Per target (one `dery run --targets T --batch B` each, at every batch; `--quick` for the quick
   recipe): the run's recorded latency of every shipped artifact (the figure its verdict read: its
   package looked at alone as `dery bench` measures it where the run did so, else its final pass;
   per-call p50 and p90 over all calls, with that measurement's reference workload), then, right after the run, the same
   files measured in a fresh measurement worker with the recorded settings (at least `--calls`
   calls each, interleaved with the reference workload). Both raw and related to the machine's
   speed (latency / reference latency in the same pass): targets 3% at p50, 5% at p90.
   Each package is also measured by `dery bench` (its own process, as a user runs it) and loaded with
   `dery_deploy.load` to score the 10k test images against the run's reported top-1.
2. The context effects, each as the shipped file's p50 in that context against the file alone in a
   worker: timed inside this process right after torch trained on every core; inside this process
   with nothing trained; in a worker pass that also holds OpenVINO items; in a worker pass of 30
   items. Each effect is what the run's own measurement would carry had it been taken that way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench_common import ROOT, machine, read_final_pass, read_run

if TYPE_CHECKING:
    from dery_deploy.pipeline.final_pass_file import FinalPassFile
    from dery_deploy.pipeline.manifest import RunManifest


def run_once(target: str, batch: int, out: Path, quick: bool) -> dict:
    """`dery run` for one target and batch (reused when its folder finished before)."""
    args = ["run", "--targets", target, "--batch", str(batch), "-o", str(out), "--allow-over-budget"]
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "dery_deploy.cli.main", *args, *(["--quick"] if quick else [])],
                       capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    return {"rc": p.returncode, "seconds": round(time.time() - t0, 1), "error": p.stderr.strip().splitlines()[-1:]}


def shipped(out: Path) -> list[dict]:
    """Every shipped artifact of a run folder with its recorded final-pass measurement and settings."""
    run = read_run(out)
    return shipped_rows(run, read_final_pass(out), run_input_shape(run))


def shipped_rows(run: RunManifest, fp: FinalPassFile, input_shape: list[int]) -> list[dict]:
    """Each budget's shipped file (its plan read as the package's Plan) and the figures its verdict read and
    its package records (`verdict_measurement`: its looks alone where it had them, else the final pass's)."""
    from dery_deploy.pipeline.second_look import compared_key, verdict_measurement
    from dery_deploy.runtime.target import Target

    rows = []
    for res in run.results:
        if res.plan is None or res.export is None or not res.export.artifact or res.pick_triple is None:
            continue
        plan = res.plan
        threads = plan.threads or 1
        # the final pass names the target with its count where the run searched more than one (`.../t1`)
        key = next(
            (k for k in fp.measurements if k.startswith(compared_key(f"ship:{res.budget_ms:g}", ""))),
            compared_key(f"ship:{res.budget_ms:g}", str(Target(plan.backend, plan.precision))),
        )
        m, summary, history = verdict_measurement(fp, key, 50)
        target = key.split("|", 1)[1]
        rows.append(
            {
                "budget_ms": res.budget_ms,
                "target": target,
                "network": res.pick_triple.network,
                "file": str(Path(str(res.export_dir)) / res.export.artifact),
                "runtime": plan.backend,
                "threads": threads,
                "shape": [plan.batch, *input_shape],
                "report_top1": res.top1,
                "recorded": {
                    "p50": m.all_calls_ms["p50"],
                    "p90": m.all_calls_ms["p90"],
                    "reference": summary.references_ms.get(f"{plan.backend}/t{threads}"),
                },
                "final_pass_p50": fp.measurements[key].all_calls_ms["p50"],  # among every compared network
                "history_p50": history,
                "recorded_se": m.all_calls_uncertainties,
                "pass_load_cores": fp.summary.other_load_cores,
                "pass_spell_rounds": [fp.summary.spell_rounds, fp.summary.rounds],  # left out / all (disturbance.py)
            }
        )
    return rows


def run_input_shape(run: RunManifest) -> list[int]:
    from dery_deploy.zoo import get_zoo

    return list(get_zoo(run.zoo).input_tensor_spec.shape)


def fresh(rows: list[dict], calls: int, tmp: Path) -> dict:
    """The shipped files of one run in a fresh measurement worker, with the reference workload."""
    from dery_deploy.runtime.calibration import REFERENCE_KEY, reference_item
    from dery_deploy.runtime.harness import WINDOW_WARM_S, TimingOptions
    from dery_deploy.runtime.worker import FileItem, measure_files

    items = [FileItem(str(i), r["file"], r["runtime"], r["threads"], r["shape"]) for i, r in enumerate(rows)]
    items.append(reference_item(tmp, rows[0]["runtime"], rows[0]["threads"]))
    # 60 windows of at least calls/60 calls each: every file gets `calls` calls, however slow it is
    per_call_s = max(r["recorded"]["p50"] for r in rows) / 1e3
    window_s = max(0.05, per_call_s * calls / 60)
    # each window warmed as a back-to-back run is (`harness.WINDOW_WARM_S`)
    opts = TimingOptions(window_s=window_s, min_windows=60, max_s=0, statistic="all", warm_s=WINDOW_WARM_S)
    res = measure_files(items, opts)
    ref = res.measurements.pop(REFERENCE_KEY).promise_at(50)
    for i, r in enumerate(rows):
        m = res.measurements[str(i)]
        r["fresh"] = {"p50": m.promise_at(50), "p90": m.promise_at(90), "reference": ref, "calls": m.runs,
                      "spell_windows": [m.spell_windows, m.windows]}  # fmt: skip
        r["fresh_se"] = m.all_calls_uncertainties
        rec, new = r["recorded"], r["fresh"]
        r["raw_ratio"] = {q: round(new[q] / rec[q], 4) for q in ("p50", "p90")}
        if rec["reference"]:
            speed = new["reference"] / rec["reference"]  # how much slower the machine ran for the fresh pass
            r["machine_speed_ratio"] = round(speed, 4)
            r["relative_ratio"] = {q: round(new[q] / rec[q] / speed, 4) for q in ("p50", "p90")}
    return {"load_cores": res.summary.other_load_cores, "seconds": res.summary.seconds}


def loaded_top1(rows: list[dict]) -> None:
    """Each package loaded as a user loads it (`dery_deploy.load`, the runtime alone) on the 10k test
    images: its top-1 against the one the run reports (issue 27: to 0.1 point)."""
    import dery_deploy
    from dery_deploy.data import fashion_mnist

    test = fashion_mnist.load_split("test")
    for r in rows:
        try:
            model = dery_deploy.load(Path(r["file"]).parent)
        except dery_deploy.DeryError as e:
            r["load_error"] = str(e)
            continue
        pred = model.logits(test.images.numpy()).argmax(1)
        r["load_top1"] = round(100 * float((pred == test.labels.numpy()).mean()), 3)
        r["load_top1_diff"] = round(r["load_top1"] - r["report_top1"], 3)


def dery_bench(rows: list[dict], calls: int) -> None:
    """`dery bench PACKAGE --json` for each package: its own fresh process, as a user measures it."""
    for r in rows:
        p = subprocess.run(
            [sys.executable, "-m", "dery_deploy.cli.main", "bench", str(Path(r["file"]).parent), "--json"]
            + ["--calls", str(calls)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        try:
            out = json.loads(p.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            r["dery_bench"] = {"rc": p.returncode, "error": p.stderr.strip().splitlines()[-1:]}
            continue
        r["dery_bench"] = {
            k: out.get(k)
            for k in ("p50_ms", "p90_ms", "calls", "reference_ms", "machine_speed_change", "relative_p50_change")
        }
        r["dery_bench"].update(rc=p.returncode, verdict=out.get("verdict"))


def train_burst(seconds: float) -> None:
    """What a run's own process did before its measurements: torch training on every core."""
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(32, 3, 32, 32)
    end = time.time() + seconds
    while time.time() < end:
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()


def in_process(row: dict, opts) -> float:
    """The file timed inside this process (the way passes were timed before the worker)."""
    from dery_deploy.runtime.harness import measure_interleaved
    from dery_deploy.runtime.worker import FileItem, file_runner

    fn = file_runner(FileItem("x", row["file"], row["runtime"], row["threads"], row["shape"]))
    return measure_interleaved({"x": (fn, False, None)}, opts)[0]["x"].promise_at(50)


def context_effects(row: dict, tmp: Path) -> dict:
    """The shipped file's p50 in each context, against the file alone in a worker (in one sitting)."""
    from dery_deploy.runtime.harness import TimingOptions
    from dery_deploy.runtime.onnx import onnx_from_module
    from dery_deploy.runtime.worker import FileItem, measure_files
    from dery_deploy.zoo import get_zoo
    from dery_deploy.zoo.load import load_donor

    opts = TimingOptions(min_windows=60, max_s=0, statistic="all")
    me = FileItem("me", row["file"], row["runtime"], row["threads"], row["shape"])
    zoo = get_zoo("fashion")
    import torch

    x = torch.randn(*row["shape"])
    others = []
    for i, name in enumerate(zoo.donor_names):
        p = tmp / f"donor{i}.onnx"
        p.write_bytes(onnx_from_module(load_donor(zoo, name), x))
        others.append(p)

    def alone() -> float:
        return measure_files([me], opts).measurements["me"].promise_at(50)

    out: dict = {"alone_worker_ms": []}
    out["alone_worker_ms"].append(alone())
    out["in_process_ms"] = in_process(row, opts)
    train_burst(10)
    out["in_process_after_training_ms"] = in_process(row, opts)
    out["alone_worker_ms"].append(alone())
    mixed = [me] + [FileItem(f"ov{i}", str(p), "openvino", row["threads"], row["shape"]) for i, p in enumerate(others)]
    out["with_openvino_items_ms"] = measure_files(mixed, opts).measurements["me"].promise_at(50)
    thirty = [me] + [
        FileItem(f"o{i}", str(others[i % len(others)]), row["runtime"], row["threads"], row["shape"]) for i in range(29)
    ]
    out["thirty_items_ms"] = (
        measure_files(thirty, TimingOptions(min_windows=30, max_s=0, statistic="all")).measurements["me"].promise_at(50)
    )
    out["alone_worker_ms"].append(alone())
    base = sorted(out["alone_worker_ms"])[1]
    out["effect"] = {
        k.removesuffix("_ms"): round(v / base - 1, 4)
        for k, v in out.items()
        if k.endswith("_ms") and k != "alone_worker_ms"
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the quick recipe (one budget per run)")
    ap.add_argument("--targets", default="onnxruntime/fp32,openvino/fp32,openvino/int8")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--runs-dir", default=str(ROOT / "bench-runs" / "reproduce"))
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "reproduce.json"))
    args = ap.parse_args()
    from dery_deploy.artifacts import atomic_write_json

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result: dict = {"machine": machine(), "commit": commit.stdout.strip(), "quick": args.quick, "runs": []}
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in [int(b) for b in args.batches.split(",")]:
            for target in args.targets.split(","):
                out = Path(args.runs_dir) / f"{target.replace('/', '-')}-b{batch}"
                entry = {"target": target, "batch": batch, "run": run_once(target, batch, out, args.quick)}
                if (out / "final_pass.json").is_file():
                    entry["shipped"] = shipped(out)
                    if entry["shipped"]:
                        entry["fresh_pass"] = fresh(entry["shipped"], args.calls, Path(tmp))
                        dery_bench(entry["shipped"], args.calls)
                        loaded_top1(entry["shipped"])
                result["runs"].append(entry)
                atomic_write_json(args.out, result)
                print(json.dumps({k: entry[k] for k in ("target", "batch", "run")}), flush=True)
        first = next((e["shipped"][0] for e in result["runs"] if e.get("shipped")), None)
        if first is not None:
            result["context"] = context_effects(first, Path(tmp))
    result["summary"] = summarise(result)
    atomic_write_json(args.out, result)
    print(json.dumps(result["summary"], indent=2))


def summarise(result: dict) -> dict:
    rows = [r for e in result["runs"] for r in e.get("shipped", []) if "fresh" in r]
    if not rows:
        return {}

    def worst(key: str, q: str) -> float | None:
        return max((abs(r[key][q] - 1) for r in rows if key in r), default=None)

    benched = [r["dery_bench"] for r in rows if (r.get("dery_bench") or {}).get("relative_p50_change") is not None]
    return {
        "artifacts": len(rows),
        "load_top1_max_abs_diff": max((abs(r["load_top1_diff"]) for r in rows if "load_top1_diff" in r), default=None),
        "dery_bench_relative_p50_max_dev": max((abs(b["relative_p50_change"]) for b in benched), default=None),
        "relative_max_dev_p50": worst("relative_ratio", "p50"),
        "relative_max_dev_p90": worst("relative_ratio", "p90"),
        "raw_max_dev_p50": worst("raw_ratio", "p50"),
        "raw_max_dev_p90": worst("raw_ratio", "p90"),
        "machine_speed_ratio_range": [
            min(r.get("machine_speed_ratio", 1) for r in rows),
            max(r.get("machine_speed_ratio", 1) for r in rows),
        ],
        "context_effect": (result.get("context") or {}).get("effect"),
    }


if __name__ == "__main__":
    main()
