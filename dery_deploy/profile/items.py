"""What gets profiled, as buildable items: every whole donor with the task's head, every unit of
every donor (before a partition exists), the blocks of the current partition, every adapter the
assembler may insert between consecutive sets, the new head after every last-set block, each
donor's prefixes up to every block end (blocks in context), and one
near-empty item that measures the backend's per-call overhead (the latency model subtracts it once
per extra item). Keys come from `network.items` and name structure, not weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, cast

import torch
from torch import nn

from dery_deploy.dissect import Dissection
from dery_deploy.dissect.spec import TensorSpec
from dery_deploy.errors import DeryError
from dery_deploy.network.adapters import Adapter, Head, adapter_kind
from dery_deploy.network.items import adapter_key, block_key, donor_key, head_key, overhead_key, prefix_key
from dery_deploy.partition.stage import Partition
from dery_deploy.zoo.load import load_donor


@dataclass
class Item:
    key: str
    kind: str  # block | unit | prefix | adapter | head | donor | overhead
    in_spec: TensorSpec
    build: Callable[[], nn.Module]
    info: dict


class _Overhead(nn.Module):
    def forward(self, x):
        return x * 1.0


def overhead_item(spec: TensorSpec) -> Item:
    return Item(overhead_key(spec), "overhead", spec, _Overhead, {})


def donor_items(zoo, num_classes: int) -> list[Item]:
    """Every whole donor with a new `num_classes` head: the baselines a plan is compared with, and
    the latencies a user picks a budget from."""

    def build(name: str) -> nn.Module:
        m = load_donor(zoo, name)
        cast(Any, m).reset_classifier(num_classes)  # a timm model's method, which nn.Module does not declare
        return m

    return [
        Item(
            donor_key(zoo, n, num_classes),
            "donor",
            zoo.input_tensor_spec,
            partial(build, n),
            {"donor": n, "arch": zoo.donor(n).arch, "num_classes": num_classes},
        )
        for n in zoo.donor_names
    ]


def unit_items(zoo, dissections: dict[str, Dissection]) -> list[Item]:
    """Every body unit of every donor as a one-unit block (what a later partition's blocks are cut from)."""
    items: dict[str, Item] = {}
    for name in zoo.donor_names:
        d = dissections[name]
        for i in range(d.num_body_units):
            spec = d.boundary_spec(i)
            key = block_key(zoo, name, i, i + 1, spec)
            items.setdefault(
                key,
                Item(
                    key,
                    "unit",
                    spec,
                    partial(d.block, i, i + 1),
                    {"donor": name, "arch": zoo.donor(name).arch, "start": i, "end": i + 1, "unit": d.units[i].name},
                ),
            )
    return list(items.values())


def partition_items(zoo, partition: Partition, dissections: dict[str, Dissection], num_classes: int) -> list[Item]:
    """Blocks of the partition, adapters between consecutive sets, heads after the last set."""
    items: dict[str, Item] = {}
    for s in partition.sets:
        for b in s.blocks:
            d = dissections[b.donor]
            spec = d.boundary_spec(b.start)
            key = block_key(zoo, b.donor, b.start, b.end, spec)
            items.setdefault(
                key,
                Item(
                    key,
                    "block",
                    spec,
                    partial(d.block, b.start, b.end),
                    {"donor": b.donor, "arch": zoo.donor(b.donor).arch, "start": b.start, "end": b.end, "set": s.index},
                ),
            )
    for k in range(len(partition.sets) - 1):
        for a in partition.sets[k].blocks:
            for b in partition.sets[k + 1].blocks:
                if a.donor == b.donor:
                    continue
                src = dissections[a.donor].boundary_spec(a.end)
                dst = dissections[b.donor].boundary_spec(b.start)
                key = adapter_key(src, dst)
                items.setdefault(
                    key,
                    Item(
                        key,
                        "adapter",
                        src,
                        partial(Adapter, src, dst),
                        {"adapter_kind": adapter_kind(src, dst), "in": src.to_dict(), "out": dst.to_dict()},
                    ),
                )
    for b in partition.sets[-1].blocks:
        src = dissections[b.donor].boundary_spec(b.end)
        key = head_key(src, num_classes)
        items.setdefault(
            key,
            Item(
                key,
                "head",
                src,
                partial(Head, src, num_classes),
                {"in": src.to_dict(), "num_classes": num_classes},
            ),
        )
    return list(items.values())


def prefix_items(zoo, partition: Partition, dissections: dict[str, Dissection]) -> list[Item]:
    """Each donor's units from the input up to every block end of the partition: a block's latency in
    context is the difference of the prefixes ending after and before it (the latency model's
    `context` variant), which carries what a block alone does not: the caches and memory traffic of
    the network around it."""
    items: dict[str, Item] = {}
    for s in partition.sets:
        for b in s.blocks:
            d = dissections[b.donor]
            spec = d.boundary_spec(0)
            key = prefix_key(zoo, b.donor, b.end, spec)
            info = {"donor": b.donor, "arch": zoo.donor(b.donor).arch, "start": 0, "end": b.end}
            items.setdefault(key, Item(key, "prefix", spec, partial(d.block, 0, b.end), info))
    return list(items.values())


def profile_items(
    zoo, partition: Partition | None, dissections: dict[str, Dissection], num_classes: int, donors=None
) -> list[Item]:
    """Everything a profile holds: the overhead item and whole donors, then the partition's items,
    or every unit while there is no partition yet. `donors` (names) keeps only what assemblies of those
    donors need: a quick partial profile where every item costs a cold compile."""
    items = [overhead_item(zoo.input_tensor_spec)] + donor_items(zoo, num_classes)
    if donors:
        unknown = sorted(set(donors) - set(zoo.donor_names))
        if unknown:
            raise DeryError(f"Unknown donor {unknown[0]!r} in --donors. Run `dery zoo list`.", "profile")
        items = [it for it in items if it.kind == "overhead" or it.info["donor"] in donors]
        if partition:
            sets = [replace(s, blocks=[b for b in s.blocks if b.donor in donors]) for s in partition.sets]
            partition = replace(partition, sets=sets)
    if partition:
        return (
            items
            + partition_items(zoo, partition, dissections, num_classes)
            + prefix_items(zoo, partition, dissections)
        )
    return items + [it for it in unit_items(zoo, dissections) if not donors or it.info["donor"] in donors]


def example_input(spec: TensorSpec, batch: int) -> torch.Tensor:
    return torch.randn(batch, *spec.shape, generator=torch.Generator().manual_seed(0))
