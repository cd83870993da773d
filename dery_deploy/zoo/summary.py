"""One row per donor: family, params, units, source, source accuracy (latency comes from a profile
or a measurement with a named backend, never from here)."""

from __future__ import annotations

from dery_deploy.dissect import dissect
from dery_deploy.zoo.load import load_donor
from dery_deploy.zoo.spec import ZooSpec, manifest


def zoo_rows(zoo: ZooSpec) -> list[dict]:
    man = manifest(zoo).get("donors", {})
    rows = []
    for d in zoo.donors:
        model = load_donor(zoo, d.name)
        dis = dissect(model, d.arch, zoo.input_tensor_spec)
        entry = man.get(d.name, {})
        row = {
            "donor": d.name,
            "arch": d.arch,
            "family": dis.family,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "units": len(dis.units),
            "source": d.source,
            "source_accuracy": entry.get("source_test_accuracy"),
        }
        rows.append(row)
    return rows
