"""Training checkpoints: model and optimizer state in one safetensors file, the run's meta (epoch,
phase, history, config) in its metadata; written atomically after every epoch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dery_deploy.artifacts import atomic_write_with
from dery_deploy.schema import load_dataclass
from dery_deploy.train.results import EpochRecord, SeamEpoch


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint carries besides the weights: where the run stands, to resume it."""

    epoch: int
    phase: int
    history: list[EpochRecord]
    config: dict  # config.json as written (`RunConfig.to_dict()`): it names the run, nothing reads it back
    phase1_done: bool
    probe_acc: float | None
    seam_matching: list[SeamEpoch]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["history"] = [h.to_dict() for h in self.history]
        d["seam_matching"] = [s.to_dict() for s in self.seam_matching]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointMeta:
        return load_dataclass(cls, d)


@dataclass(frozen=True)
class OptimizerGroups:
    """The optimizer's state dict less its tensors: torch's own `param_groups` (hyper-parameters and
    parameter indices per group), kept in torch's format and handed back to `load_state_dict` as it is.
    Written into the checkpoint's metadata as `{"param_groups": [...]}`."""

    param_groups: list[dict[str, Any]]

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {"param_groups": self.param_groups}

    @classmethod
    def from_dict(cls, d: dict) -> OptimizerGroups:
        return cls(d["param_groups"])


@dataclass(frozen=True)
class Checkpoint:
    """A run's last checkpoint as read back: the model's state, the optimizer's tensors (flat,
    `optim.<param>.<name>`) and the rest of its state dict, and where the run stood."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor]
    optimizer_groups: OptimizerGroups
    meta: CheckpointMeta


def _flat_optimizer(opt) -> tuple[dict[str, torch.Tensor], OptimizerGroups]:
    """The optimizer's tensors, flat (`optim.<param>.<name>`), and the rest of its state dict."""
    if opt is None:  # a finished run re-saved without training (no optimizer to resume)
        return {}, OptimizerGroups([])
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{idx}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    return tensors, OptimizerGroups(sd["param_groups"])


def restore_optimizer(opt, tensors: dict[str, torch.Tensor], groups: OptimizerGroups) -> None:
    """Load a checkpoint's optimizer state (`Checkpoint.optimizer_state`, `.optimizer_groups`) into `opt`."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups.param_groups})


def save_checkpoint(run: Path, model: nn.Module, opt, meta: CheckpointMeta) -> None:
    from safetensors.torch import save_file

    base: nn.Module = getattr(model, "module", model)  # a (Distributed)DataParallel wraps it in .module
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in base.state_dict().items()}
    otensors, ometa = _flat_optimizer(opt)
    tensors.update(otensors)
    metadata = {"meta": json.dumps({**meta.to_dict(), "optimizer": ometa.to_dict()})}
    atomic_write_with(run / "checkpoint.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_weights(path: Path, model: nn.Module) -> None:
    """The model's weights alone (e.g. the end of phase 1, kept in case end-to-end tuning does worse)."""
    from safetensors.torch import save_file

    base: nn.Module = getattr(model, "module", model)  # a (Distributed)DataParallel wraps it in .module
    tensors = {k: v.detach().cpu().contiguous() for k, v in base.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def load_checkpoint(run: Path) -> Checkpoint:
    """A run's last checkpoint."""
    from safetensors import safe_open

    model, optim = {}, {}
    with safe_open(str(Path(run) / "checkpoint.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        for k in f.keys():
            if k.startswith("model."):
                model[k.split(".", 1)[1]] = f.get_tensor(k)
            else:
                optim[k] = f.get_tensor(k)
    groups = OptimizerGroups.from_dict(meta.pop("optimizer"))
    return Checkpoint(model, optim, groups, CheckpointMeta.from_dict(meta))
