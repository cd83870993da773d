#!/usr/bin/env python3
"""How close is `dery run`'s up-front time estimate to the time the run then took? Writes bench/estimate.json.

    python scripts/bench_estimate.py [--runs quick,default] [--seed 0] [-o FILE]

Each run is a fresh `dery run` (the embedded Fashion-MNIST zoo, this machine, a new folder), alone on the
machine. From its run.json: when the estimate was made (after the profiles), the seconds it gave the
rest of the run, the seconds the rest took, and per group (training, selection, evaluation,
measurement) the estimate of the stages it expected against what they took. Target (issue 30): the
whole run within 25% of the estimate (after_s + the rest), for the quick and the default run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from bench_common import ROOT, machine, read_run

from dery_deploy.pipeline.records import RunEstimate

if TYPE_CHECKING:
    from dery_deploy.pipeline.manifest import RunManifest, StageRecord


def per_part(est: RunEstimate, stages: list[StageRecord]) -> list[dict]:
    """Each estimated part beside the stage that did it, matched as the run's own ETA matches them."""
    from dery_deploy.pipeline.estimate import Eta

    eta = Eta(RunEstimate(0.0, list(est.parts), {}, 0.0))
    rows = []
    for s in stages:
        left = {id(p) for p in eta.todo}
        if eta.finished(s.stage, s.seconds, s.status != "computed"):
            [part] = [p for p in eta.est.parts if id(p) in left and all(p is not q for q in eta.todo)]
            rows.append(
                {"stage": s.stage, "group": part.group, "estimated_s": round(part.seconds, 1), "actual_s": s.seconds}
            )
    return rows


def estimate_row(m: RunManifest) -> dict:
    """What a finished run says of its estimate: when it was made, the rest it gave and the rest it took,
    the errors, per group and per part (a run without an estimate, e.g. an older one, reads as none made)."""
    est = m.estimate or RunEstimate(0.0, [], {}, 0.0)
    rest, made = est.seconds, est.after_s
    total = made + rest
    return {
        "run_s": m.seconds,
        "estimate_made_after_s": made,
        "estimated_rest_s": round(rest, 1),
        "actual_rest_s": round(m.seconds - made, 1),
        "estimated_total_s": round(total, 1),
        "total_error_pct": round(100 * (m.seconds / total - 1), 1) if total else None,
        "rest_error_pct": round(100 * ((m.seconds - made) / rest - 1), 1) if rest else None,
        # donors the estimate expected the short recipe to leave out (held out of its total in advance)
        "expected_left_out": list(est.expected_left_out),
        # budgets where selection was expected to rule the mix out (their heal held out of the total in advance)
        "expected_unhealed": list(est.expected_unhealed),
        # less the parts the run dropped once its short recipe found their donors dominated, plus those it put
        # back because the short recipe kept a donor the estimate expected it to leave out, or because the run
        # healed a mix where it expected selection to rule it out
        "left_out_s": round(est.left_out_s, 1),
        "put_back_s": round(est.put_back_s, 1),
        "revised_total_error_pct": round(100 * (m.seconds / revised - 1), 1)
        if (revised := total - est.left_out_s + est.put_back_s)
        else None,
        "groups": {g: asdict(t) for g, t in est.actual.items()},
        "parts": per_part(est, m.stages),
        "estimate_line": next((s.note for s in m.stages if s.stage == "time estimate"), ""),
    }


def one_run(kind: str, seed: int, tmp: Path) -> dict:
    out = tmp / kind
    cmd = [sys.executable, "-m", "dery_deploy.cli.main", "run", "--seed", str(seed), "-o", str(out)]
    cmd += ["--quick"] if kind == "quick" else []
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    row = {
        "command": " ".join(["dery", *cmd[3:]]).replace(f" -o {out}", ""),
        "exit": p.returncode,
        "wall_s": round(wall, 1),
        **estimate_row(read_run(out)),
    }
    print(f"{kind}: {json.dumps(row)}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="quick,default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "estimate.json"))
    ap.add_argument("--keep", help="run in this folder and keep the runs (default: a temporary one)")
    args = ap.parse_args()
    from dery_deploy.artifacts import atomic_write_json

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result: dict = {
        "machine": machine(),
        "commit": commit.stdout.strip(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": f"python scripts/bench_estimate.py --runs {args.runs} --seed {args.seed}",
        "target": "the whole run within 25% of its up-front estimate, quick and default (issue 30)",
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep or tmp)
        for kind in args.runs.split(","):
            result["runs"][kind] = one_run(kind, args.seed, where)
            atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
