"""Does this VM's two-speed behaviour follow a core (issue 26)? One ONNX file, one intra-op thread, timed in
rounds pinned to each core in turn and unpinned, interleaved; prints each round's median per placement and a
JSON summary (median, min, max of the round medians).

Usage: python scripts/probe_affinity.py MODEL.onnx [ROUNDS]
"""

import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def main(path: str, rounds: int) -> dict:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape], np.float32)
    every = os.sched_getaffinity(0)
    places = {f"cpu{c}": {c} for c in sorted(every)} | {"unpinned": every}
    for _ in range(300):
        s.run(None, {inp.name: x})
    medians: dict[str, list[float]] = {k: [] for k in places}
    for r in range(rounds):
        for k, cpus in places.items():
            os.sched_setaffinity(0, cpus)
            for _ in range(50):
                s.run(None, {inp.name: x})
            t = []
            for _ in range(400):
                a = time.perf_counter()
                s.run(None, {inp.name: x})
                t.append(time.perf_counter() - a)
            medians[k].append(statistics.median(t) * 1e3)
        print(r, {k: round(v[-1], 4) for k, v in medians.items()}, flush=True)
    os.sched_setaffinity(0, every)
    return {k: {"median": round(statistics.median(v), 4), "min": round(min(v), 4), "max": round(max(v), 4)}
            for k, v in medians.items()}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12)))
