#!/usr/bin/env python3
"""What a plain `openvino.Core().compile_model("model.xml", "CPU")` of a shipped OpenVINO package computes,
against `dery_deploy.load` (which sets the recorded INFERENCE_PRECISION_HINT). Writes bench/plain_load.json.

    python scripts/bench_plain_load.py [PACKAGE ...]     # default: every OpenVINO package bench_reproduce shipped

On a CPU with AVX512-BF16 or AMX a plain load computes fp32 networks in bfloat16 (issue 27). Per package, on
the 10k Fashion-MNIST test images with the package's own preprocessing and batch: the precision each load
runs, its top-1, the share of images whose class differs from `load()`'s, and the largest logit difference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench_common import ROOT, machine


def packages(runs: Path) -> list[Path]:
    """The OpenVINO packages that bench_reproduce's runs shipped (their budgets' export folders)."""
    return sorted(p.parent for p in runs.glob("openvino-*/budget-*/export/deploy.json"))


def compare(folder: Path, images, labels) -> dict:
    import numpy as np
    import openvino as ov

    import dery_deploy

    model = dery_deploy.load(folder)
    if model.info.runtime.name != "openvino":
        return {"package": str(folder), "skipped": f"a {model.info.runtime.name} package, not OpenVINO"}
    row: dict = {"package": str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder)}
    row["precision"], row["batch"] = model.info.runtime.precision, model.batch
    z_load = model.logits(images)
    row["load_hint"] = model.session.effective()["INFERENCE_PRECISION_HINT"]
    plain = ov.Core().compile_model(str(folder / model.info.model), "CPU")  # as OpenVINO documents a load
    row["plain_hint"] = plain.get_property("INFERENCE_PRECISION_HINT").to_string()
    model.session.compiled, model.session.request = plain, plain.create_infer_request()  # same inputs, same batch
    z_plain = model.logits(images)
    a, b = z_load.argmax(1), z_plain.argmax(1)
    row["load_top1"] = round(100 * float((a == labels).mean()), 3)
    row["plain_top1"] = round(100 * float((b == labels).mean()), 3)
    row["plain_minus_load"] = round(row["plain_top1"] - row["load_top1"], 3)
    row["class_differs"] = round(100 * float((a != b).mean()), 3)
    row["max_abs_logit_diff"] = round(float(np.abs(z_load - z_plain).max()), 5)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("packages", nargs="*", type=Path)
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "bench-runs" / "reproduce")
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "bench" / "plain_load.json")
    args = ap.parse_args()
    from dery_deploy.artifacts import atomic_write_json
    from dery_deploy.data import fashion_mnist

    folders = args.packages or packages(args.runs_dir)
    if not folders:
        sys.exit(f"error: no OpenVINO package under {args.runs_dir}; run scripts/bench_reproduce.py first")
    test = fashion_mnist.load_split("test")
    images, labels = test.images.numpy(), test.labels.numpy()
    rows = [compare(f.resolve(), images, labels) for f in folders]
    result = {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "packages": rows}
    atomic_write_json(args.out, result)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
