"""The items a network is made of, by key: a block (donor architecture + unit range + input
shape), an adapter (in/out spec), the new head (input spec + class count), a whole donor.

Keys name structure, not weights (latency does not depend on weights), so a profile measured for
one zoo's architectures serves every set of weights of the same architectures.
"""

from __future__ import annotations

from dery_deploy.artifacts import sha256_json
from dery_deploy.dissect import Dissection
from dery_deploy.dissect.spec import TensorSpec
from dery_deploy.network.plan import Plan, stitch_specs


def arch_id(zoo, donor: str) -> str:
    d = zoo.donor(donor)
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(d.kwargs.items())}
    return f"{d.arch}:{sha256_json([kw, zoo.input.channels, d.num_classes])[:8]}"


def block_key(zoo, donor: str, start: int, end: int, in_spec: TensorSpec) -> str:
    return f"block|{arch_id(zoo, donor)}|{start}-{end}|{in_spec.short()}"


def prefix_key(zoo, donor: str, end: int, in_spec: TensorSpec) -> str:
    """A donor's units 0..end from the network input: a block's cost in context is the difference of two."""
    return f"prefix|{arch_id(zoo, donor)}|0-{end}|{in_spec.short()}"


def block_span(key: str) -> tuple[str, int, int] | None:
    """(architecture id, start, end) of a block or prefix key; None for other items."""
    parts = key.split("|")
    if len(parts) < 4 or parts[0] not in ("block", "prefix"):
        return None
    arch, (start, end) = parts[1], parts[2].split("-")
    return arch, int(start), int(end)


def adapter_key(src: TensorSpec, dst: TensorSpec) -> str:
    return f"adapter|{src.short()}|{dst.short()}"


def head_key(src: TensorSpec, num_classes: int) -> str:
    return f"head|{src.short()}|{num_classes}"


def donor_key(zoo, donor: str, num_classes: int) -> str:
    return f"donor|{arch_id(zoo, donor)}|{zoo.input_tensor_spec.short()}|{num_classes}"


def overhead_key(spec: TensorSpec) -> str:
    return f"overhead|{spec.short()}"


def structure_hash(zoo) -> str:
    """What a profile depends on: architectures, kwargs and input, not weights."""
    return sha256_json([zoo.raw.get("input"), [arch_id(zoo, d) for d in zoo.donor_names]])[:16]


def plan_items(plan: Plan, zoo, dissections: dict[str, Dissection]) -> list[str]:
    """The keys of every item the plan's network runs, in order: blocks, adapters, head; a whole
    donor is one item, measured whole."""
    if plan.head_kind == "donor":
        return [donor_key(zoo, plan.blocks[0].donor, plan.num_classes)]
    keys = [block_key(zoo, b.donor, b.start, b.end, dissections[b.donor].boundary_spec(b.start)) for b in plan.blocks]
    keys += [adapter_key(*s) for s in stitch_specs(plan, dissections) if s is not None]
    last = plan.blocks[-1]
    keys.append(head_key(dissections[last.donor].boundary_spec(last.end), plan.num_classes))
    return keys
