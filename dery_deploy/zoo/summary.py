"""One row per donor: family, params, units, source, source accuracy, optional CPU latency."""

from __future__ import annotations

import torch

from dery_deploy.dissect import dissect
from dery_deploy.zoo.load import load_donor, manifest
from dery_deploy.zoo.spec import ZooSpec


def cpu_latency_ms(model: torch.nn.Module, x: torch.Tensor, min_run_time: float = 0.3) -> float:
    """Median batch latency in ms with torch.utils.benchmark (eager, no grad)."""
    from torch.utils import benchmark

    with torch.no_grad():
        t = benchmark.Timer("m(x)", globals={"m": model, "x": x}, num_threads=torch.get_num_threads())
        return t.blocked_autorange(min_run_time=min_run_time).median * 1e3


def zoo_rows(zoo: ZooSpec, latency: bool = False) -> list[dict]:
    man = manifest(zoo).get("donors", {})
    rows = []
    for d in zoo.donors:
        model = load_donor(zoo, d.name)
        dis = dissect(model, d.arch, zoo.input.tensor_spec())
        entry = man.get(d.name, {})
        row = {
            "donor": d.name, "arch": d.arch, "family": dis.family,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "units": len(dis.units), "source": d.source,
            "source_accuracy": entry.get("source_test_accuracy"),
        }
        if latency:
            row["cpu_latency_ms_b1"] = cpu_latency_ms(model, torch.zeros(1, *zoo.input.tensor_spec().shape))
        rows.append(row)
    return rows
