"""The two phases of fine-tuning. Phase 1 trains the stitch (adapters and head, or a donor's new
classifier) on frozen blocks until its loss plateaus; phase 2 trains end to end, the stitch learning
faster than the borrowed blocks. Each phase has its own AdamW and learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from dery_deploy.network.plan import hold_frozen
from dery_deploy.train.recipe import Recipe


def stitch_params(model: nn.Module) -> list[nn.Parameter]:
    """What phase 1 trains: adapters + head of an AssembledNet, or a donor's classifier."""
    # methods of AssembledNet and timm models, which mypy sees through nn.Module.__getattr__ as tensors
    if hasattr(model, "stitch_parameters"):
        return model.stitch_parameters()  # type: ignore[operator]
    return list(model.get_classifier().parameters())  # type: ignore[operator]


def set_phase(model: nn.Module, phase: int) -> list[nn.Parameter]:
    """Phase 1 trains the stitch (adapters + head) only; phase 2 everything. Returns what trains."""
    train = set(map(id, stitch_params(model))) if phase == 1 else None
    for p in model.parameters():
        p.requires_grad_(train is None or id(p) in train)
    model.train()
    hold_frozen(model)  # a family path's shared blocks train in neither phase
    params = [p for p in model.parameters() if p.requires_grad]
    if phase == 1:  # frozen blocks keep their BN statistics
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
    return params


def phase_steps(recipe: Recipe, phase: int, steps_per_epoch: int) -> int:
    """The steps a phase's schedule spans: phase 1 ends at a plateau, not at a step count, so its
    schedule (warm-up, then constant) is laid out over one epoch."""
    return (recipe.epochs_full if phase == 2 else 1) * steps_per_epoch


def make_optimizer(
    model: nn.Module, phase: int, recipe: Recipe, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW for the phase. Phase 1: linear warm-up, then constant (it ends at a plateau, not at a
    step count). Phase 2: warm-up, then cosine; the stitch learns `stitch_lr_scale` times faster."""
    params = set_phase(model, phase)
    if phase == 1:
        groups = [{"params": params, "lr": recipe.lr}]
    else:
        stitch = set(map(id, stitch_params(model)))
        groups = [
            {"params": [p for p in params if id(p) not in stitch], "lr": recipe.lr_full},
            {"params": [p for p in params if id(p) in stitch], "lr": recipe.lr_full * recipe.stitch_lr_scale},
        ]
    opt = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    w = max(1, int(recipe.warmup_frac * steps))

    def factor(s: int) -> float:
        if s < w:
            return (s + 1) / w
        return 1.0 if phase == 1 else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - w) / max(1, steps - w))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fast_forward(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Step a resumed phase's schedule past the steps its checkpoint had already taken."""
    for _ in range(steps):
        sched.step()


def plateaued(losses: list[float], plateau: float) -> bool:
    """Whether phase 1's last epoch lowered its loss by less than `plateau` (a fraction) of the one
    before; never with `plateau` 0."""
    return bool(plateau) and len(losses) >= 2 and (losses[-2] - losses[-1]) < plateau * losses[-2]


def next_phase(phases_done: list[int], phase1_done: bool, recipe: Recipe) -> tuple[int | None, bool]:
    """The phase of the next epoch (None: the run is over), given the phases of the epochs done, and
    whether phase 1 is over (it ends at its epoch count, or earlier at a plateau)."""
    p1 = sum(1 for p in phases_done if p == 1)
    p2 = len(phases_done) - p1
    if not phase1_done and p1 >= recipe.epochs_adapter:
        phase1_done = True
    if phase1_done and p2 >= recipe.epochs_full:
        return None, phase1_done
    return (2 if phase1_done else 1), phase1_done
