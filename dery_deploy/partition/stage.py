"""The partition stage: similarity -> partition.json (K equivalence sets, one block of every donor
in each), as a typed artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import numpy as np

from dery_deploy.artifacts import JsonArtifact, cache_root, sha256_json
from dery_deploy.dissect import Dissection
from dery_deploy.dissect.spec import TensorSpec
from dery_deploy.errors import DeryError
from dery_deploy.partition.cover_set import PartitionProblem, PartitionResult
from dery_deploy.similarity.compute import Similarity
from dery_deploy.zoo.spec import ZooSpec


@dataclass
class PartitionBlock:
    donor: str
    start: int
    end: int
    units: list[str]
    in_spec: TensorSpec
    out_spec: TensorSpec
    similarity_to_centre: float

    def to_dict(self) -> dict:
        return {
            "donor": self.donor,
            "start": self.start,
            "end": self.end,
            "units": self.units,
            "in": self.in_spec.to_dict(),
            "out": self.out_spec.to_dict(),
            "similarity_to_centre": self.similarity_to_centre,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PartitionBlock:
        return cls(
            d["donor"],
            d["start"],
            d["end"],
            d["units"],
            TensorSpec.from_dict(d["in"]),
            TensorSpec.from_dict(d["out"]),
            d["similarity_to_centre"],
        )


@dataclass
class EquivalenceSet:
    index: int
    centre: str
    blocks: list[PartitionBlock]

    def block_of(self, donor: str) -> PartitionBlock:
        return next(b for b in self.blocks if b.donor == donor)


@dataclass
class Partition(JsonArtifact):
    KIND = "partition"
    SCHEMA = 2
    STAGE = "partition"

    zoo: str
    zoo_hash: str
    similarity_key: str
    probe_hash: str
    K: int
    eps: float
    restarts: int
    seed: int
    method: str
    objective: float
    seconds: float
    max_block_units: dict[str, int]
    cuts: dict[str, list[int]]
    sets: list[EquivalenceSet]
    baseline: dict | None = None  # the paper's optimiser on the same problem, for comparison
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Identity of the cut (what later caches depend on): the zoo and every donor's cut points."""
        return sha256_json([self.zoo_hash, self.cuts])[:16]

    def to_dict(self) -> dict:
        return {
            "zoo": self.zoo,
            "zoo_hash": self.zoo_hash,
            "similarity_key": self.similarity_key,
            "probe_hash": self.probe_hash,
            "K": self.K,
            "eps": self.eps,
            "restarts": self.restarts,
            "seed": self.seed,
            "method": self.method,
            "objective": self.objective,
            "seconds": self.seconds,
            "key": self.key,
            "max_block_units": self.max_block_units,
            "cuts": self.cuts,
            "baseline": self.baseline,
            "notes": self.notes,
            "sets": [
                {"index": s.index, "centre": s.centre, "blocks": [b.to_dict() for b in s.blocks]} for s in self.sets
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Partition:
        sets = [
            EquivalenceSet(s["index"], s["centre"], [PartitionBlock.from_dict(b) for b in s["blocks"]])
            for s in d["sets"]
        ]
        return cls(
            d["zoo"],
            d["zoo_hash"],
            d["similarity_key"],
            d["probe_hash"],
            d["K"],
            d["eps"],
            d["restarts"],
            d["seed"],
            d["method"],
            d["objective"],
            d["seconds"],
            d["max_block_units"],
            d["cuts"],
            sets,
            d.get("baseline"),
            d.get("notes", []),
        )

    def check_zoo(self, zoo: ZooSpec, path) -> Partition:
        if self.zoo != zoo.name or self.zoo_hash != zoo.hash():
            raise DeryError(
                f"{path} is a partition of zoo {self.zoo!r} ({self.zoo_hash}), not of {zoo.name!r} "
                f"({zoo.hash()}); rerun `dery partition --zoo {zoo.ref}`",
                "partition",
            )
        return self


def problem_from(zoo: ZooSpec, sim: Similarity, K: int, eps: float, dis: dict[str, Dissection]) -> PartitionProblem:
    if sim.zoo_hash != zoo.hash():
        raise DeryError(
            f"the similarity was computed for another version of zoo {zoo.name!r}; rerun `dery similarity "
            f"--zoo {zoo.ref}`",
            "partition",
        )
    units = {n: dis[n].num_body_units for n in zoo.donor_names}
    mats = {(a, b): sim.matrix(a, b).numpy().astype(np.float64) for a in zoo.donor_names for b in zoo.donor_names}
    return PartitionProblem(zoo.donor_names, units, mats, K, eps)


def make_partition(
    zoo: ZooSpec,
    sim: Similarity,
    problem: PartitionProblem,
    result: PartitionResult,
    dis: dict[str, Dissection],
    seed: int,
    baseline: PartitionResult | None = None,
) -> Partition:
    sets = []
    for k in range(problem.K):
        c = result.centres[k]
        blocks = []
        for d in problem.donors:
            s, e = result.cuts[d][k], result.cuts[d][k + 1]
            m = problem.sim[(d, c)]
            blocks.append(
                PartitionBlock(
                    d,
                    s,
                    e,
                    [u.name for u in dis[d].body[s:e]],
                    dis[d].boundary_spec(s),
                    dis[d].boundary_spec(e),
                    round(float(m[s, result.cuts[c][k]] + m[e, result.cuts[c][k + 1]]), 4),
                )
            )
        sets.append(EquivalenceSet(k, c, blocks))
    return Partition(
        zoo.name,
        zoo.hash(),
        sim.key,
        sim.probe_hash,
        problem.K,
        problem.eps,
        result.restarts,
        seed,
        result.method,
        round(result.objective, 6),
        round(result.seconds, 3),
        {d: problem.max_len(d) for d in problem.donors},
        {d: list(c) for d, c in result.cuts.items()},
        sets,
        None
        if baseline is None
        else {
            "method": baseline.method,
            "objective": round(baseline.objective, 6),
            "seconds": round(baseline.seconds, 3),
        },
        list(sim.notes),
    )


def default_partition_path(zoo: ZooSpec, cache: Path | None = None) -> Path:
    return Path(cache or cache_root()) / zoo.name / "partition.json"


def load_partition(path: str | Path, zoo: ZooSpec) -> Partition:
    return Partition.read(path).check_zoo(zoo, path)


@overload
def current_partition(
    zoo: ZooSpec, path: Path | None, cache: Path | None, stage: str, required: Literal[True] = True
) -> Partition: ...


@overload
def current_partition(
    zoo: ZooSpec, path: Path | None, cache: Path | None, stage: str, required: bool
) -> Partition | None: ...


def current_partition(
    zoo: ZooSpec, path: Path | None, cache: Path | None, stage: str, required: bool = True
) -> Partition | None:
    """The partition a later stage works on: `path`, or the zoo's current one in the cache."""
    ppath = Path(path or default_partition_path(zoo, cache))
    if not ppath.is_file():
        if path is not None:
            raise DeryError(f"no partition at {ppath}; check the path, or run `dery partition --zoo {zoo.ref}`", stage)
        if required:
            raise DeryError(
                f"no partition of zoo {zoo.name} at {ppath}; run `dery partition --zoo {zoo.ref}` first, or pass "
                "--partition FILE for one written elsewhere with -o",
                stage,
            )
        return None
    return load_partition(ppath, zoo)
