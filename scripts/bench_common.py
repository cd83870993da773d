"""Helpers shared by the benchmark scripts: machine description, a run folder's typed records, a fresh
workspace of the similarity + partition of a zoo, Kendall's tau."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from dery_deploy.pipeline.final_pass_file import FinalPassFile
    from dery_deploy.pipeline.manifest import RunManifest


def machine() -> dict:
    import torch

    from dery_deploy.runtime.devices import cpu_model, gpu_fingerprint

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": (gpu_fingerprint() or {}).get("gpu_name"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def between_markers(text: str, begin: str, end: str, body: str) -> str | None:
    """`text` with what stands between its `begin` and `end` markers replaced by `body` (the markers kept, each
    on its own line); None where either marker is missing. The README's generated blocks are written so."""
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"


def read_run(folder: Path) -> RunManifest:
    """A run folder's run.json as the package's typed manifest. Read through `RunManifest.from_dict`, not
    `RunManifest.read`: the latter refuses other schemas, and a benchmark reads the runs it made before
    (an older run.json is migrated on the way in)."""
    from dery_deploy.pipeline.manifest import RunManifest

    return RunManifest.from_dict(json.loads((Path(folder) / "run.json").read_text()))


def read_final_pass(folder: Path) -> FinalPassFile:
    """A run folder's final_pass.json (the interleaved pass and its second looks), typed."""
    from dery_deploy.pipeline.final_pass_file import FinalPassFile

    return FinalPassFile.from_dict(json.loads((Path(folder) / "final_pass.json").read_text()))


def workspace(zoo_name: str, cache: Path, K: int = 4, probe: int = 512, restarts: int = 50, seed: int = 0):
    """(zoo, similarity, partition, dissections) computed into `cache`."""
    from dery_deploy.partition.cover_set import optimise
    from dery_deploy.partition.stage import make_partition, problem_from
    from dery_deploy.similarity.compute import compute_similarity
    from dery_deploy.zoo import get_zoo
    from dery_deploy.zoo.load import dissect_zoo

    zoo = get_zoo(zoo_name)
    sim, _ = compute_similarity(zoo, probe, cache=cache)
    dis = dissect_zoo(zoo)
    problem = problem_from(zoo, sim, K, 0.2, dis)
    part = make_partition(zoo, sim, problem, optimise(problem, restarts, seed), dis, seed)
    part.write(cache / zoo.name / "partition.json")
    return zoo, sim, part, dis


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties counted in neither pair class, denominators corrected)."""
    n = len(x)
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = x[i] - x[j], y[i] - y[j]
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif (a > 0) == (b > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return (conc - disc) / denom if denom else 0.0
