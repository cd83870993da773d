"""Where a fine-tune runs: one process, or one of `torchrun --nproc_per_node N` (DDP, gloo on CPU, nccl
on CUDA). Every rank walks the same seeded permutation and takes its slice of each global batch, so the
global batch, and hence the result, is the same as a single process's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from dery_deploy.errors import DeryError


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun; (0, 1) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def train_device(requested: str | None = None) -> torch.device:
    """Where this process trains: `requested` (cpu | cuda), else $DERY_DEVICE, else the GPU of this
    process's rank under torchrun (LOCAL_RANK) when there is one, else the CPU."""
    want = requested or os.environ.get("DERY_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if want not in ("cpu", "cuda"):
        raise DeryError(f"--device must be cpu or cuda, got {want!r}", "finetune")
    if want == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeryError("--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu", "finetune")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local >= torch.cuda.device_count():
        raise DeryError(
            f"process {local} of torchrun has no GPU of its own ({torch.cuda.device_count()} visible): run "
            f"--nproc_per_node {torch.cuda.device_count()} or fewer, or train on the CPU (--device cpu)",
            "finetune",
        )
    return torch.device("cuda", local)


def init_distributed(device: torch.device) -> bool:
    """One process group for torchrun: NCCL with one GPU per process, else gloo (CPU processes).
    Returns whether this call created it (and so must destroy it); a caller's own group is left alone."""
    if torch.distributed.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the NCCL init, so every collective uses this rank's GPU
        torch.distributed.init_process_group("nccl", device_id=device)
    else:
        torch.distributed.init_process_group("gloo")
    return True


def global_sums(values: list[float], world: int, device: torch.device) -> list[float]:
    """Sums over all processes of per-process sums (loss, correct, seen, ...). Every rank must take a
    decision on the same numbers: a plateau judged on each rank's own shard made ranks disagree, and one
    rebuilt its DDP wrapper while the others were still all-reducing gradients (a hang)."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def unwrap(model: nn.Module) -> nn.Module:
    """The network itself, without its DDP wrapper."""
    return cast(nn.Module, model.module) if hasattr(model, "module") else model


@dataclass
class DistContext:
    """This process's place in a run: its rank, the number of processes, its device, and whether it
    created the process group (and so destroys it)."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool = False

    @classmethod
    def start(cls, rank: int, world: int, requested: str | None = None) -> DistContext:
        """Pick the training device and, under torchrun, join (or create) the process group."""
        device = train_device(requested)
        owns = init_distributed(device) if world > 1 else False
        return cls(rank, world, device, owns)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder and logs."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch, on its device."""
        return batch[self.rank :: self.world].to(self.device)

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the network when there are several processes; the network itself alone."""
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device] if self.device.type == "cuda" else None
        )

    def unwrap_for_rewrap(self, model: nn.Module) -> nn.Module:
        """The network to build a new phase's optimizer on: DDP registers the parameters that require
        a gradient when it wraps, so a phase that changes them wraps the network anew."""
        return unwrap(model) if self.world > 1 else model

    def sums(self, values: list[float]) -> list[float]:
        return global_sums(values, self.world, self.device)

    def close(self) -> None:
        """Wait for every rank, then destroy the process group where this run created it."""
        if self.world > 1:
            torch.distributed.barrier()
            if self.owns_group:
                torch.distributed.destroy_process_group()
