"""Plans (plan.json) and the AssembledNet they describe.

A plan is enough to rebuild the network: the zoo (name + hash), the ordered blocks (set, donor,
unit range), the adapters between them (kind, in/out spec) and the new head. Adapter and head
weights live beside the plan in safetensors; blocks come from the zoo's donor weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from dery_deploy.artifacts import JsonArtifact, atomic_write_with
from dery_deploy.dissect.spec import TensorSpec
from dery_deploy.errors import DeryError
from dery_deploy.network.adapters import Adapter, Head
from dery_deploy.network.plan_records import (
    NOT_SET,
    AdapterRecord,
    FinalistMeasurement,
    HeadRecord,
    PlanBudget,
    PlanSolver,
    PlanTask,
    Prediction,
    ProxyScore,
    Selection,
    plan_as_written_now,
)
from dery_deploy.schema import load_dataclass


@dataclass(frozen=True)
class BlockRef:
    set: int
    donor: str
    start: int
    end: int


WHOLE_DONOR = " (whole donor)"  # how `Plan.describe` names a whole donor after its name


def whole_donor_of(description: str) -> str | None:
    """The donor a description (`Plan.describe`) names whole; None for a mix."""
    return description.removesuffix(WHOLE_DONOR) if description.endswith(WHOLE_DONOR) else None


@dataclass
class Plan(JsonArtifact):
    """One reassembled network: enough, with the zoo, to rebuild it (adapter weights beside it)."""

    KIND = "plan"
    SCHEMA = 2
    STAGE = "assemble"

    zoo: str
    zoo_hash: str
    blocks: list[BlockRef]
    num_classes: int
    device: str = ""
    backend: str = ""
    precision: str = "fp32"
    batch: int = 1
    budget: PlanBudget | None = field(default=None, metadata=NOT_SET)
    predicted: Prediction | None = field(default=None, metadata=NOT_SET)
    proxy: ProxyScore | None = field(default=None, metadata=NOT_SET)
    solver: PlanSolver | None = field(default=None, metadata=NOT_SET)
    adapters: list[AdapterRecord] = field(default_factory=list)  # filled from specs when built
    head: HeadRecord | None = field(default=None, metadata=NOT_SET)
    zoo_ref: str = ""  # embedded zoo name or YAML path (see ZooSpec.ref)
    measured: FinalistMeasurement | None = field(default=None, metadata=NOT_SET)  # end to end on the plan's device
    task: PlanTask | None = field(default=None, metadata=NOT_SET)  # the task it was selected for
    head_kind: str = "new"  # new: pool + LayerNorm + linear; donor: the donor's own head (whole-donor plans)
    selection: Selection | None = field(default=None, metadata=NOT_SET)  # how it was picked
    threads: int | None = None  # CPU threads the runtime computes with (measured with, shipped with)

    def to_dict(self) -> dict:
        def record(r: Any) -> dict:  # a record not set is written as {}
            return {} if r is None else r.to_dict() if hasattr(r, "to_dict") else asdict(r)

        return {
            "zoo": self.zoo,
            "zoo_ref": self.zoo_ref or self.zoo,
            "zoo_hash": self.zoo_hash,
            "device": self.device,
            "backend": self.backend,
            "precision": self.precision,
            "batch": self.batch,
            "threads": self.threads,
            "budget": record(self.budget),
            "num_classes": self.num_classes,
            "task": record(self.task),
            "blocks": [{"set": b.set, "donor": b.donor, "start": b.start, "end": b.end} for b in self.blocks],
            "adapters": [a.to_dict() for a in self.adapters],
            "head": record(self.head),
            "predicted": record(self.predicted),
            "measured": record(self.measured),
            "proxy": record(self.proxy),
            "solver": record(self.solver),
            "head_kind": self.head_kind,
            "selection": record(self.selection),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """A plan from any plan.json of this schema (older ones too: see `plan_as_written_now`)."""
        names = {f.name for f in fields(cls)}
        return load_dataclass(cls, {k: v for k, v in plan_as_written_now(d).items() if k in names})

    @property
    def donors(self) -> list[str]:
        """The distinct donors the plan borrows from, in order."""
        return list(dict.fromkeys(b.donor for b in self.blocks))

    @property
    def seams(self) -> int:
        """How many places two different donors meet (0 for a single donor's own blocks)."""
        return sum(1 for a, b in zip(self.blocks, self.blocks[1:]) if not (a.donor == b.donor and a.end == b.start))

    def signature(self) -> tuple:
        return tuple((b.donor, b.start, b.end) for b in self.blocks)

    def describe(self) -> str:
        if self.head_kind == "donor" and len(self.donors) == 1:
            return f"{self.blocks[0].donor}{WHOLE_DONOR}"
        return " > ".join(f"{b.donor}[{b.start}:{b.end}]" for b in self.blocks)

    def is_whole_donor(self, dissections: dict) -> bool:
        """One donor's blocks end to end, with its own head: the donor itself."""
        d = self.blocks[0].donor
        return (
            self.head_kind == "donor"
            and self.seams == 0
            and all(b.donor == d for b in self.blocks)
            and self.blocks[-1].end == dissections[d].num_body_units
        )


def save_plan(path: str | Path, plan: Plan) -> Path:
    return plan.write(path)


def load_plan(path: str | Path) -> Plan:
    return Plan.read(path)


def save_plan_with_weights(plan: Plan, net: nn.Module, path: str | Path) -> Path:
    """plan.json plus its adapter and head weights in plan.safetensors beside it (a whole donor: its new
    classifier, as `stitch_state_dict` writes it)."""
    from safetensors.torch import save_file

    path = Path(path)
    weights = path.with_suffix(".safetensors")
    atomic_write_with(weights, lambda tmp: save_file(stitch_state_dict(net), str(tmp)))
    plan.solver = plan.solver or PlanSolver()
    plan.solver.adapter_weights = weights.name
    return plan.write(path)


def stitch_specs(plan: Plan, dissections: dict) -> list[tuple[TensorSpec, TensorSpec] | None]:
    """For each boundary between consecutive blocks: (out spec, in spec) if an adapter is needed,
    None where two blocks of one donor meet at their native boundary."""
    out: list[tuple[TensorSpec, TensorSpec] | None] = []
    for a, b in zip(plan.blocks, plan.blocks[1:]):
        if a.donor == b.donor and a.end == b.start:
            out.append(None)
        else:
            out.append((dissections[a.donor].boundary_spec(a.end), dissections[b.donor].boundary_spec(b.start)))
    return out


class AssembledNet(nn.Module):
    """Blocks of several donors, adapters between them, a new head."""

    def __init__(self, blocks: Sequence[nn.Module], adapters: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        if len(adapters) != len(blocks) - 1:
            raise ValueError("need one adapter (or Identity) between each pair of blocks")
        self.blocks = nn.ModuleList(blocks)
        self.adapters = nn.ModuleList(adapters)
        self.head = head
        self.frozen: tuple[int, ...] = ()  # blocks shared with a family's larger path: never trained here

    def freeze_blocks(self, indices: Sequence[int]) -> None:
        """Hold these blocks as they are through training (a family path's blocks shared with its largest
        path, issue 28 option (a)): `hold_frozen` keeps them out of every optimizer and their BatchNorm in eval."""
        bad = [i for i in indices if not 0 <= i < len(self.blocks)]
        if bad:
            raise DeryError(f"frozen blocks {bad} are not blocks of this {len(self.blocks)}-block network", "finetune")
        self.frozen = tuple(sorted(set(indices)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](x)
        for adapter, block in zip(self.adapters, self.blocks[1:]):
            x = block(adapter(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def stitch_parameters(self):
        """Parameters of the adapters and the head (what phase 1 of fine-tuning trains)."""
        return [p for m in (*self.adapters, self.head) for p in m.parameters()]


def hold_frozen(net: nn.Module) -> set[int]:
    """Keep an AssembledNet's frozen blocks (`freeze_blocks`) frozen: requires_grad off and BatchNorm in eval,
    so neither a step nor a batch's statistics change a byte of them. Returns the ids of their parameters,
    for the caller to leave out of its optimizer. Call it after `train()`, which would put BatchNorm back."""
    if not isinstance(net, AssembledNet) or not net.frozen:
        return set()
    ids = set()
    for i in net.frozen:
        for m in net.blocks[i].modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        for p in net.blocks[i].parameters():
            p.requires_grad_(False)
            ids.add(id(p))
    return ids


def validate_plan(plan: Plan, zoo, dissections: dict) -> None:
    if plan.zoo != zoo.name or plan.zoo_hash != zoo.hash():
        raise DeryError(
            f"plan is for zoo {plan.zoo!r} ({plan.zoo_hash}), but zoo {zoo.name!r} is now {zoo.hash()}: "
            "its weights or spec changed; re-assemble the plan",
            "assemble",
        )
    if not plan.blocks:
        raise DeryError("plan has no blocks", "assemble")
    for i, b in enumerate(plan.blocks):
        if b.donor not in dissections:
            raise DeryError(f"plan block {i} uses donor {b.donor!r}, which zoo {zoo.name!r} lacks", "assemble")
        n = dissections[b.donor].num_body_units
        if not 0 <= b.start < b.end <= n:
            raise DeryError(
                f"plan block {i} ({b.donor}) has unit range [{b.start}, {b.end}) outside 0..{n}", "assemble"
            )
    if plan.blocks[0].start != 0:
        raise DeryError("the first block of a plan must start at unit 0 (it carries its donor's stem)", "assemble")
    if plan.head_kind not in ("new", "donor"):
        raise DeryError(f"plan head_kind must be new or donor, got {plan.head_kind!r}", "assemble")
    if plan.head_kind == "donor" and not plan.is_whole_donor(dissections):
        raise DeryError("a plan keeps its donor's own head only when it is that whole donor", "assemble")


def pre_logits(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
    """What the final classifier of a plan's network sees, and that classifier: pool + LayerNorm of an
    AssembledNet, or a timm donor's pre-logit features."""
    if isinstance(net, AssembledNet):
        head: Any = net.head
        return head.norm(head.pool(net.forward_features(x))), head.fc
    donor: Any = net  # a timm model: forward_head / get_classifier are its API
    return donor.forward_head(donor.forward_features(x), pre_logits=True).flatten(1), donor.get_classifier()


def whole_donor(plan: Plan, zoo) -> nn.Module:
    """A whole-donor plan's network: the donor itself with its classifier reset to the task's classes."""
    from dery_deploy.zoo.load import load_donor

    model: Any = load_donor(zoo, plan.blocks[0].donor)
    model.reset_classifier(plan.num_classes)
    return model.eval()


def build_net(
    plan: Plan, zoo, dissections: dict, weights: dict[str, torch.Tensor] | None = None, copy_blocks: bool = True
) -> nn.Module:
    """The network a plan describes: an AssembledNet whose blocks are deep copies of the donors' units
    (unless `copy_blocks=False`, for read-only use), adapters and head taking `weights` when given;
    or, for a whole-donor plan, the donor with a new classifier."""
    validate_plan(plan, zoo, dissections)
    if plan.head_kind == "donor":
        model = whole_donor(plan, zoo)
        if weights is not None:
            load_stitch_weights(model, weights)
        return model
    blocks = []
    for b in plan.blocks:
        blk = dissections[b.donor].block(b.start, b.end)
        blocks.append(copy.deepcopy(blk) if copy_blocks else blk)
    adapters = [nn.Identity() if s is None else Adapter(*s) for s in stitch_specs(plan, dissections)]
    last = plan.blocks[-1]
    head = Head(dissections[last.donor].boundary_spec(last.end), plan.num_classes)
    net = AssembledNet(blocks, adapters, head).eval()
    plan.adapters = [a.record(i) for i, a in enumerate(adapters) if isinstance(a, Adapter)]
    plan.head = HeadRecord(head.src, plan.num_classes)
    if weights is not None:
        load_stitch_weights(net, weights)
    return net


def stitch_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """What a plan adds to its donors' weights: adapters and head (a whole donor: its new classifier)."""
    if not isinstance(net, AssembledNet):
        clf = cast(Any, net).get_classifier()
        return {f"classifier.{k}": v.detach().contiguous() for k, v in clf.state_dict().items()}
    sd = {}
    for i, a in enumerate(net.adapters):
        for k, v in a.state_dict().items():
            sd[f"adapters.{i}.{k}"] = v.detach().contiguous()
    for k, v in net.head.state_dict().items():
        sd[f"head.{k}"] = v.detach().contiguous()
    return sd


def load_stitch_weights(net: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = stitch_state_dict(net)
    if set(own) != set(sd) or any(own[k].shape != sd[k].shape for k in own):
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        raise DeryError(
            f"adapter weights do not fit this plan (missing {missing[:4]}, unexpected {unexpected[:4]}); "
            "they belong to another plan",
            "assemble",
        )
    if not isinstance(net, AssembledNet):
        cast(Any, net).get_classifier().load_state_dict({k.split(".", 1)[1]: v for k, v in sd.items()})
        return
    full = net.state_dict()
    full.update(sd)
    net.load_state_dict(full)
