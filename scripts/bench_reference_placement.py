#!/usr/bin/env python3
"""Where should the machine's reference workload be timed to tell the machine's drift from the network's?
Writes bench/reference_placement.json (issue 26, item 1).

    python scripts/bench_reference_placement.py PACKAGE [PACKAGE ...] [--passes 6] [--gap 10]
                                                [-o bench/reference_placement.json]

In one process per package (the package's session and its shipped reference workload, built once, as
`dery bench` builds them), `--passes` passes `--gap` seconds apart, each timing the package twice:
- framed: REFERENCE_S of reference calls, then the package's calls (DEFAULT_CALLS over DEFAULT_SECONDS),
  then REFERENCE_S of reference calls again (what `dery bench` did before this bench);
- interleaved: `deploy.bench.interleaved`, REFERENCE_CHUNK reference calls after every CHUNK of the
  package's over the same seconds (what `dery bench` does now, and what the run's worker pass does).
Per placement: the raw p50's spread over the passes (max/min - 1) and the reference-relative p50's
(package p50 / reference p50). A placement that tracks the machine leaves the relative figure still
where the raw one moved. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import ROOT, machine

REFERENCE_S = 0.5


def spread(values: list[float]) -> float:
    return round(max(values) / min(values) - 1, 4)


def one_package(package: Path, passes: int, gap: float) -> dict:
    import numpy as np

    from dery_deploy.deploy.bench import DEFAULT_CALLS, DEFAULT_SECONDS, PackageBench, back_to_back, interleaved

    bench = PackageBench(package)
    timer, ref = bench.timer, bench.reference
    if ref is None:
        return {"package": str(package), "note": "the package ships no reference workload"}
    back_to_back(timer, 50, 1.0, None)
    back_to_back(ref, 50, 0.5, None)
    rows = []
    for k in range(passes):
        before = back_to_back(ref, 100, REFERENCE_S, None)
        calls = back_to_back(timer, DEFAULT_CALLS, DEFAULT_SECONDS, None)
        after = back_to_back(ref, 100, REFERENCE_S, None)
        framed = float(np.median(calls)), float(np.median(before + after))
        calls, among = interleaved(timer, ref, DEFAULT_CALLS, DEFAULT_SECONDS, None)
        inter = float(np.median(calls)), float(np.median(among))
        rows.append(
            {
                "pass": k,
                "when": time.strftime("%H:%M:%S", time.gmtime()),
                "framed": {"p50_ms": round(framed[0], 5), "reference_ms": round(framed[1], 5)},
                "interleaved": {"p50_ms": round(inter[0], 5), "reference_ms": round(inter[1], 5)},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        if k < passes - 1:
            time.sleep(gap)
    rt = bench.info.runtime
    out: dict = {
        "package": str(package),
        "runtime": f"{rt.name}/{rt.precision}/b{rt.batch}/t{rt.threads}",
        "passes": rows,
    }
    for where in ("framed", "interleaved"):
        raw = [r[where]["p50_ms"] for r in rows]
        rel = [r[where]["p50_ms"] / r[where]["reference_ms"] for r in rows]
        out[where] = {"raw_p50_spread": spread(raw), "relative_p50_spread": spread(rel)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="+", type=Path)
    ap.add_argument("--passes", type=int, default=6)
    ap.add_argument("--gap", type=float, default=10.0, help="seconds between passes")
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "bench" / "reference_placement.json")
    args = ap.parse_args()
    from dery_deploy.artifacts import atomic_write_json

    result = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python scripts/bench_reference_placement.py "
        + " ".join(str(p) for p in args.packages)
        + f" --passes {args.passes} --gap {args.gap:g}",
        "packages": [one_package(p, args.passes, args.gap) for p in args.packages],
    }
    atomic_write_json(args.out, result)
    for p in result["packages"]:
        print(p["package"], {k: p.get(k) for k in ("framed", "interleaved")})


if __name__ == "__main__":
    main()
