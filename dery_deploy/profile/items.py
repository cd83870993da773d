"""What gets profiled: the blocks of the current partition, every adapter the assembler may insert
between consecutive sets, the new head after every last-set block, and one near-empty item that
measures the backend's per-call overhead (the latency model subtracts it once per extra item).

Records are keyed by structure, not weights (latency does not depend on weights): a block by its
donor's architecture + kwargs + unit range + input shape, an adapter by its in/out specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from dery_deploy.artifacts import sha256_json
from dery_deploy.assemble.adapters import Adapter, Head, adapter_kind
from dery_deploy.dissect.spec import TensorSpec


@dataclass
class Item:
    key: str
    kind: str  # block | adapter | head | overhead
    in_spec: TensorSpec
    build: Callable[[], nn.Module]
    info: dict


def arch_id(zoo, donor: str) -> str:
    d = zoo.donor(donor)
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(d.kwargs.items())}
    return f"{d.arch}:{sha256_json([kw, zoo.input.channels, d.num_classes])[:8]}"


def block_key(zoo, donor: str, start: int, end: int, in_spec: TensorSpec) -> str:
    return f"block|{arch_id(zoo, donor)}|{start}-{end}|{in_spec.short()}"


def adapter_key(src: TensorSpec, dst: TensorSpec) -> str:
    return f"adapter|{src.short()}|{dst.short()}"


def head_key(src: TensorSpec, num_classes: int) -> str:
    return f"head|{src.short()}|{num_classes}"


class _Overhead(nn.Module):
    def forward(self, x):
        return x * 1.0


def overhead_item(spec: TensorSpec) -> Item:
    return Item(f"overhead|{spec.short()}", "overhead", spec, _Overhead, {})


def structure_hash(zoo) -> str:
    """What a profile depends on: architectures, kwargs and input, not weights."""
    return sha256_json([zoo.raw.get("input"), [arch_id(zoo, d) for d in zoo.donor_names]])[:16]


def partition_items(zoo, partition: dict, dissections: dict, num_classes: int) -> list[Item]:
    items: dict[str, Item] = {}
    sets = partition["sets"]
    inp = zoo.input.tensor_spec()
    items[overhead_item(inp).key] = overhead_item(inp)
    for s in sets:
        for b in s["blocks"]:
            d = dissections[b["donor"]]
            spec = d.boundary_spec(b["start"])
            key = block_key(zoo, b["donor"], b["start"], b["end"], spec)
            items.setdefault(key, Item(key, "block", spec, (lambda d=d, b=b: d.block(b["start"], b["end"])),
                                       {"donor": b["donor"], "arch": zoo.donor(b["donor"]).arch, "start": b["start"],
                                        "end": b["end"], "set": s["index"]}))
    for k in range(len(sets) - 1):
        for a in sets[k]["blocks"]:
            for b in sets[k + 1]["blocks"]:
                if a["donor"] == b["donor"]:
                    continue
                src = dissections[a["donor"]].boundary_spec(a["end"])
                dst = dissections[b["donor"]].boundary_spec(b["start"])
                key = adapter_key(src, dst)
                items.setdefault(key, Item(key, "adapter", src, (lambda s=src, t=dst: Adapter(s, t)),
                                           {"adapter_kind": adapter_kind(src, dst), "in": src.to_dict(), "out": dst.to_dict()}))
    for b in sets[-1]["blocks"]:
        src = dissections[b["donor"]].boundary_spec(b["end"])
        key = head_key(src, num_classes)
        items.setdefault(key, Item(key, "head", src, (lambda s=src: Head(s, num_classes)),
                                   {"in": src.to_dict(), "num_classes": num_classes}))
    return list(items.values())


def donor_key(zoo, donor: str, num_classes: int) -> str:
    return f"donor|{arch_id(zoo, donor)}|{zoo.input.tensor_spec().short()}|{num_classes}"


def donor_items(zoo, num_classes: int) -> list[Item]:
    """Every whole donor with a new `num_classes` head: the baselines a plan is compared with, and
    the latencies `dery run` picks its budgets from."""
    from dery_deploy.zoo.load import load_donor

    def build(name):
        m = load_donor(zoo, name)
        m.reset_classifier(num_classes)
        return m

    items = {}
    for name in zoo.donor_names:
        key = donor_key(zoo, name, num_classes)
        items.setdefault(key, Item(key, "donor", zoo.input.tensor_spec(), (lambda n=name: build(n)),
                                   {"donor": name, "arch": zoo.donor(name).arch}))
    return list(items.values())


def example_input(spec: TensorSpec, batch: int) -> torch.Tensor:
    return torch.randn(batch, *spec.shape, generator=torch.Generator().manual_seed(0))
