"""The partition stage: similarity -> partition.json (blocks per equivalence set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dery_deploy.artifacts import atomic_write_json, read_json_artifact
from dery_deploy.dissect import dissect
from dery_deploy.errors import DeryError
from dery_deploy.partition.cover_set import PartitionProblem, PartitionResult
from dery_deploy.zoo.load import load_donor
from dery_deploy.zoo.spec import ZooSpec

SCHEMA = 1
KIND = "partition"


def dissect_zoo(zoo: ZooSpec) -> dict:
    """Dissection of every donor (weights loaded; blocks built from it share the donor's modules)."""
    out = {}
    for d in zoo.donors:
        out[d.name] = dissect(load_donor(zoo, d.name), d.arch, zoo.input.tensor_spec())
    return out


def problem_from(zoo: ZooSpec, sim, K: int, eps: float, dissections: dict | None = None) -> tuple[PartitionProblem, dict]:
    if sim.zoo_hash != zoo.hash():
        raise DeryError(f"the similarity was computed for another version of zoo {zoo.name!r}; rerun `dery similarity "
                        f"--zoo {zoo.name}`", "partition")
    dis = dissections or dissect_zoo(zoo)
    units = {n: dis[n].num_body_units for n in zoo.donor_names}
    mats = {}
    for a in zoo.donor_names:
        for b in zoo.donor_names:
            mats[(a, b)] = sim.matrix(a, b).numpy().astype(np.float64)
    return PartitionProblem(zoo.donor_names, units, mats, K, eps), dis


def partition_record(zoo: ZooSpec, sim, problem: PartitionProblem, result: PartitionResult, dis: dict,
                     seed: int, baseline: PartitionResult | None = None) -> dict:
    sets = []
    for k in range(problem.K):
        blocks = []
        for d in problem.donors:
            s, e = result.cuts[d][k], result.cuts[d][k + 1]
            dd = dis[d]
            blocks.append({"donor": d, "start": s, "end": e, "units": [u.name for u in dd.body[s:e]],
                           "in": dd.boundary_spec(s).to_dict(), "out": dd.boundary_spec(e).to_dict(),
                           "similarity_to_centre": round(problem.sim[(d, result.centres[k])][s, result.cuts[result.centres[k]][k]]
                                                         + problem.sim[(d, result.centres[k])][e, result.cuts[result.centres[k]][k + 1]], 4)})
        sets.append({"index": k, "centre": result.centres[k], "blocks": blocks})
    rec = {
        "schema": SCHEMA, "kind": KIND, "zoo": zoo.name, "zoo_hash": zoo.hash(), "similarity_key": sim.key,
        "probe_hash": sim.probe_hash, "K": problem.K, "eps": problem.eps, "restarts": result.restarts, "seed": seed,
        "method": result.method, "objective": round(result.objective, 6), "seconds": round(result.seconds, 3),
        "max_block_units": {d: problem.max_len(d) for d in problem.donors},
        "cuts": {d: list(c) for d, c in result.cuts.items()}, "sets": sets,
    }
    if baseline is not None:
        rec["baseline"] = {"method": baseline.method, "objective": round(baseline.objective, 6),
                           "seconds": round(baseline.seconds, 3)}
    return rec


def load_partition(path: str | Path, zoo: ZooSpec) -> dict:
    data = read_json_artifact(path, KIND, SCHEMA, "partition")
    if data["zoo"] != zoo.name or data["zoo_hash"] != zoo.hash():
        raise DeryError(f"{path} is a partition of zoo {data['zoo']!r} ({data['zoo_hash']}), not of {zoo.name!r} "
                        f"({zoo.hash()}); rerun `dery partition --zoo {zoo.name}`", "partition")
    return data


def write_partition(path: str | Path, record: dict) -> Path:
    return atomic_write_json(path, record)
