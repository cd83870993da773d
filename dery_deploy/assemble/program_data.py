"""The program's data: the partition's blocks, adapters and heads indexed with their profiled cost
(latency, peak memory, parameters) and their task-aware quality (`quality.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from dery_deploy.assemble.candidates import AdapterFitter
from dery_deploy.assemble.program import UNAVAILABLE_US, ProgramData, quality_int
from dery_deploy.assemble.quality import SEAM_POINTS, seam_errors, transferability
from dery_deploy.data.task import Task
from dery_deploy.dissect import Dissection
from dery_deploy.network.adapters import Adapter
from dery_deploy.network.items import adapter_key, block_key, head_key
from dery_deploy.partition.stage import Partition
from dery_deploy.profile.latency_model import LatencyModel


@dataclass
class Scores:
    """Task-aware quality terms, computed once per (task, partition): transferability of every
    (donor, boundary) and the stitch error of every seam the partition allows."""

    transfer: dict[tuple[str, int], float]
    seams: dict[tuple[str, int, str, int], float]

    @classmethod
    def compute(
        cls, dissections: dict[str, Dissection], task: Task, partition: Partition, fitter: AdapterFitter
    ) -> Scores:
        return cls(transferability(dissections, task), seam_errors(dissections, partition, fitter.features))


# an item the backend could not build or run (the profile's `failed`) is unavailable: a latency no budget
# admits, and no memory known, so a memory budget excludes it as well
def _peak_mb(model: LatencyModel, key: str) -> float | None:
    if key in model.profile.failed:
        return None
    model.require([key])
    return model.profile.records[key].peak_memory_mb


def _cost_us(model: LatencyModel, key: str) -> int:
    return UNAVAILABLE_US if key in model.profile.failed else model.cost_us(key)


def _block_terms(zoo, partition: Partition, dissections: dict[str, Dissection], model: LatencyModel):
    """Per set, per block: (latency in us, parameters, peak memory)."""
    block_us, block_params, block_mem = [], [], []
    for s in partition.sets:
        keys = [block_key(zoo, b.donor, b.start, b.end, dissections[b.donor].boundary_spec(b.start)) for b in s.blocks]
        block_us.append([_cost_us(model, k) for k in keys])
        block_mem.append([_peak_mb(model, k) for k in keys])
        block_params.append(
            [sum(p.numel() for p in dissections[b.donor].block(b.start, b.end).parameters()) for b in s.blocks]
        )
    return block_us, block_params, block_mem


def _adapter_terms(partition: Partition, dissections: dict[str, Dissection], model: LatencyModel, scores: Scores):
    """Per seam between set k and k + 1, per pair of blocks of different donors: (latency in us,
    parameters, peak memory, stitch quality); a pair of one donor continues natively and has none."""
    sets = partition.sets
    adapter_us, adapter_params, adapter_mem, stitch_q = [], [], [], []
    for k in range(len(sets) - 1):
        lat, ps, mm, q = {}, {}, {}, {}
        for ia, a in enumerate(sets[k].blocks):
            for ib, b in enumerate(sets[k + 1].blocks):
                if a.donor == b.donor:
                    continue
                src, dst = dissections[a.donor].boundary_spec(a.end), dissections[b.donor].boundary_spec(b.start)
                key = adapter_key(src, dst)
                lat[(ia, ib)], mm[(ia, ib)] = _cost_us(model, key), _peak_mb(model, key)
                ps[(ia, ib)] = sum(p.numel() for p in Adapter(src, dst).parameters())
                q[(ia, ib)] = quality_int(-SEAM_POINTS * scores.seams[(a.donor, a.end, b.donor, b.start)])
        adapter_us.append(lat)
        adapter_params.append(ps)
        adapter_mem.append(mm)
        stitch_q.append(q)
    return adapter_us, adapter_params, adapter_mem, stitch_q


def _head_terms(
    partition: Partition, dissections: dict[str, Dissection], model: LatencyModel, num_classes: int, scores: Scores
):
    """Per block of the last set: the head's (latency in us, parameters) and the end quality of its features."""
    head_us, head_params, end_q = [], [], []
    for b in partition.sets[-1].blocks:
        src = dissections[b.donor].boundary_spec(b.end)
        head_us.append(_cost_us(model, head_key(src, num_classes)))
        head_params.append(src.channels * (num_classes + 2) + num_classes)
        end_q.append(quality_int(scores.transfer[(b.donor, b.end)]))
    return head_us, head_params, end_q


def program_data(
    zoo, partition: Partition, dissections: dict[str, Dissection], model: LatencyModel, num_classes: int, scores: Scores
) -> ProgramData:
    """Index the partition's blocks and adapters with their profiled cost and their quality."""
    options = [[b.donor for b in s.blocks] for s in partition.sets]
    # blocks, then adapters, then heads: a profile that lacks an item names the first one in this order
    block_us, block_params, block_mem = _block_terms(zoo, partition, dissections, model)
    adapter_us, adapter_params, adapter_mem, stitch_q = _adapter_terms(partition, dissections, model, scores)
    head_us, head_params, end_q = _head_terms(partition, dissections, model, num_classes, scores)
    return ProgramData(
        options,
        block_us,
        block_params,
        block_mem,
        adapter_us,
        adapter_params,
        adapter_mem,
        head_us,
        head_params,
        base_us=model.base_us(),
        block_q=[[0] * len(o) for o in options],  # a block's quality is in the seams and the end, not the block
        stitch_q=stitch_q,
        native_q=0,  # a donor continuing natively neither gains nor loses: only seams cost quality
        end_q=end_q,
    )
