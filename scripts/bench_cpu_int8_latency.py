#!/usr/bin/env python3
"""Latency of the CPU runtime/precision combinations on whole donors, all in one interleaved pass.

    python scripts/bench_cpu_int8_latency.py [--donors resnet10t_tops,mnv3_rot] [--batches 1,32] [--threads 1]

Each donor gets a new 10-class head (untrained: latency does not depend on weights) and is run as
ONNX Runtime fp32, ONNX Runtime int8, OpenVINO fp32 and OpenVINO int8; both int8 runners run the
same QDQ ONNX, calibrated on 512 unlabelled Fashion-MNIST images. Every (donor, batch, runtime,
precision) is one item of a single `measure_interleaved` pass, so drift hits them all alike.
Prints a table and the pass's noise index; writes JSON with -o.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_common import machine

COMBOS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="fashion")
    ap.add_argument("--donors", default="resnet10t_tops,mnv3_rot")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args()

    from dery_deploy.data.task import load_task
    from dery_deploy.runtime.backends import get_backend
    from dery_deploy.runtime.harness import TimingOptions, measure_interleaved
    from dery_deploy.runtime.onnx import onnx_from_module
    from dery_deploy.runtime.quantize import CALIBRATION_IMAGES, qdq_from_onnx
    from dery_deploy.zoo import get_zoo
    from dery_deploy.zoo.load import load_donor

    zoo = get_zoo(args.zoo)
    task = load_task("fashion-mnist:labels_per_class=100", zoo.input)
    calibration = task.unlabelled_images(CALIBRATION_IMAGES)
    batches = [int(b) for b in args.batches.split(",")]
    backends = {name: get_backend(name, args.threads) for name in ("onnxruntime", "openvino")}
    runners = {}
    for donor in args.donors.split(","):
        model = load_donor(zoo, donor)
        model.reset_classifier(10)
        fp32 = onnx_from_module(model.eval(), calibration[:1])
        files = {"fp32": fp32, "int8": qdq_from_onnx(fp32, calibration)}
        for b in batches:
            x = task.x("test")[:b]
            for name, precision in COMBOS:
                r = backends[name].runner_from_onnx(files[precision], x)
                runners[(donor, b, name, precision)] = (r.call, False, None)
    timings, summary = measure_interleaved(
        {"|".join(map(str, k)): v for k, v in runners.items()}, TimingOptions(), args.threads
    )
    rows = []
    print(f"{'donor':16s} {'batch':>5s} " + " ".join(f"{n + ' ' + p:>17s}" for n, p in COMBOS))
    for donor in args.donors.split(","):
        for b in batches:
            ms = [timings[f"{donor}|{b}|{n}|{p}"] for n, p in COMBOS]
            print(f"{donor:16s} {b:5d} " + " ".join(f"{m.median_ms:9.3f} ±{100 * m.uncertainty:4.1f}%" for m in ms))
            rows += [
                {"donor": donor, "batch": b, "runtime": n, "precision": p, **m.to_dict()}
                for (n, p), m in zip(COMBOS, ms)
            ]
    print(summary.line())
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine(), "pass": summary.to_dict(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
