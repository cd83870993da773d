"""A family's paths trained together (issue 28, option (b)): every block that two paths hold (same donor, same
block range) is one module, and every optimizer step updates every path.

- Before training, each path in turn (the largest first) matches its seams and probes its head as a fine-tune
  does (`FinetuneRun._heal_and_probe`); a path's blocks already matched by an earlier path are held while it
  matches its own, so a shared block is matched once, by the first path that holds it.
- Each step draws one augmented batch of labelled images (and one of the teacher's pool) and sums every
  path's loss on it, (1 - distill) * cross-entropy + distill * distillation, as `FinetuneRun._step` has it
  for one network; one AdamW over every distinct parameter, with the recipe's two phases (phase 1: adapters
  and heads on frozen blocks, until the loss plateaus; phase 2: end to end, adapters and heads at
  `stitch_lr_scale` times the blocks' rate). The better of the two phases is not kept per path, as a
  fine-tune keeps it: the paths share their blocks, so one path cannot go back to phase 1 alone.
- BatchNorm in the borrowed blocks keeps the statistics the donors (and seam matching) gave it, in both
  phases; its scale and shift train. A shared block sees other inputs in each path, but seam matching and the
  adapters are trained to give it its donor's representation, so the donor's statistics fit every path, and
  the paths stay one set of tensors, BatchNorm folded into its convolution at export as for any network.
  Measured on the fashion zoo (`scripts/bench_family_run.py --family-training joint`, seed 0, test top-1 of
  the three paths): statistics re-estimated as one average over the paths, 53.9 / 77.3 / 73.3%; each path's
  own statistics (slimmable networks' switchable BatchNorm, Yu et al., ICLR 2019; OFA, Cai et al., ICLR 2020,
  re-estimates them per subnetwork), 79.3 / 82.4 / 85.6%, but BatchNorm then cannot be folded into the
  shared convolutions, and OpenVINO held 91 MB for the three paths against 78 MB for separate files; the
  donors' statistics held, 79.6 / 82.7 / 85.6%, with the family's memory below the separate files'.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dery_deploy.data.task import Task
from dery_deploy.network.plan import AssembledNet, Plan
from dery_deploy.train.distill import DistillBatches, kd_loss
from dery_deploy.train.head_init import fit_head
from dery_deploy.train.heal import match_seams
from dery_deploy.train.phases import make_optimizer, next_phase, phase_steps, plateaued, set_phase
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.results import EpochRecord, SeamEpoch
from dery_deploy.train.teacher import Teacher
from dery_deploy.train.trainer import accuracy, augment


class JointPaths(nn.Module):
    """The paths of a family, with their shared blocks as one module: `parameters()` yields each tensor once."""

    def __init__(self, nets: Sequence[AssembledNet]):
        super().__init__()
        self.paths = nn.ModuleList(nets)

    def stitch_parameters(self) -> list[nn.Parameter]:
        """Every path's adapters and head, each tensor once (what phase 1 trains)."""
        seen: set[int] = set()
        out = []
        for net in self.paths:
            for p in net.stitch_parameters():  # type: ignore[operator]  # AssembledNet's
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out


def tie_shared(nets: Sequence[AssembledNet], plans: Sequence[Plan]) -> list[list[int]]:
    """Make every block that several paths hold (same donor, same block range) the first such path's module.
    Returns, per path, the indices of its blocks now held by an earlier path."""
    owner: dict[tuple[str, int, int], nn.Module] = {}
    tied: list[list[int]] = []
    for net, plan in zip(nets, plans):
        mine = []
        for i, b in enumerate(plan.blocks):
            key = (b.donor, b.start, b.end)
            if key in owner:
                net.blocks[i] = owner[key]
                mine.append(i)
            else:
                owner[key] = net.blocks[i]
        tied.append(mine)
    return tied


@dataclass
class PathStart:
    """What a path's preparation gave: its seam-matching history and its head probe's training accuracy."""

    seam_matching: list[SeamEpoch]
    probe_acc: float | None


@dataclass
class JointResult:
    """The joint training's epochs (loss and train accuracy averaged over the paths), each path's preparation,
    validation top-1 at the end of phase 1 and at the end, and the seconds it took."""

    history: list[EpochRecord]
    starts: list[PathStart]
    phase1_val: list[float | None]
    val: list[float | None]
    seconds: float


def prepare(
    nets: Sequence[AssembledNet], plans: Sequence[Plan], tied: list[list[int]], dissections, task: Task, recipe: Recipe
) -> list[PathStart]:
    """Each path's seams matched and head probed, in order (module docstring)."""
    starts = []
    for net, plan, held in zip(nets, plans, tied):
        net.freeze_blocks(held)
        seams = match_seams(
            net, plan, dissections, task, recipe.match_epochs, recipe.match_images, seed=recipe.seed
        ) if recipe.match_epochs else []  # fmt: skip
        net.freeze_blocks(())
        probe = (
            fit_head(net, task.x("train"), task.y("train"), task.num_classes) if recipe.head_init == "probe" else None
        )
        starts.append(PathStart(seams, probe))
    return starts


def train_jointly(
    joint: JointPaths,
    task: Task,
    recipe: Recipe,
    teacher: Teacher | None,
    starts: list[PathStart],
    tick: Callable[[str], None] | None = None,
) -> JointResult:
    """The recipe's two phases over every path at every step, BatchNorm's statistics in the borrowed blocks held
    (module docstring). `tick` is called after every step with the epoch's running figures."""
    t0 = time.time()
    steps = max(1, math.ceil(len(task.train) / recipe.batch))
    distill = DistillBatches.of(recipe, teacher, steps)
    history: list[EpochRecord] = []
    phase1_done, phase_now = recipe.epochs_adapter == 0, None
    opt = sched = None
    phase1_val: list[float | None] = [None] * len(joint.paths)
    while True:
        phase, phase1_done = next_phase([h.phase for h in history], phase1_done, recipe)
        if phase is None:
            break
        if phase != phase_now:
            if phase_now == 1:
                phase1_val = _val(joint, task)
            opt, sched = make_optimizer(joint, phase, recipe, phase_steps(recipe, phase, steps))
            phase_now = phase
        else:
            set_phase(joint, phase)
        hold_statistics(joint)
        history.append(_epoch(joint, task, recipe, distill, len(history), phase, steps, opt, sched, t0, tick))
        if phase == 1 and plateaued([h.loss for h in history if h.phase == 1], recipe.plateau):
            phase1_done = history[-1].plateau = True
    if phase_now == 1:
        phase1_val = _val(joint, task)
    joint.eval()
    return JointResult(history, starts, phase1_val, _val(joint, task), round(time.time() - t0, 2))


def hold_statistics(joint: JointPaths) -> None:
    """Every BatchNorm of every path's borrowed blocks in evaluation mode: it normalises with, and keeps, the
    statistics it has (module docstring); its scale and shift still train. Call it after `train()`."""
    for net in joint.paths:
        for m in net.blocks.modules():  # type: ignore[union-attr]  # an AssembledNet's ModuleList
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _epoch(joint, task, recipe, distill, epoch, phase, steps, opt, sched, t0, tick) -> EpochRecord:
    """One pass over the labelled images in a seeded order, every path on every batch."""
    g = torch.Generator().manual_seed(recipe.seed * 100003 + epoch)
    perm = torch.randperm(len(task.train), generator=g)
    order = distill.order(g) if distill else None
    m = len(joint.paths)
    loss_sum = kd_sum = correct = seen = 0.0
    for s in range(steps):
        idx = perm[s * recipe.batch : (s + 1) * recipe.batch]
        xb = task.normalize(augment(task.train.images[idx], g))
        yb = task.train.targets[idx]
        teach: tuple[torch.Tensor, torch.Tensor] | None = None  # (normalised images, teacher logits)
        if distill and order is not None:
            images, logits_t = distill.batch(order, s)
            teach = (task.normalize(images), logits_t)
        loss = torch.zeros(())
        kd_step = 0.0
        for net in joint.paths:
            logits = net(xb)
            li = F.cross_entropy(logits, yb, label_smoothing=recipe.label_smoothing)
            if teach is not None:
                kd = kd_loss(net(teach[0]), teach[1], recipe.temperature)
                li = (1 - recipe.distill) * li + recipe.distill * kd
                kd_step += kd.item() / m
            loss = loss + li
            correct += int((logits.argmax(1) == yb).sum()) / m
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() / m * len(yb)
        kd_sum += kd_step * len(yb)
        seen += len(yb)
        if tick:
            tick(f"phase {phase} epoch {epoch + 1}: loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}%")
    return EpochRecord(
        epoch,
        phase,
        loss=round(loss_sum / seen, 5),
        train_acc=round(100 * correct / seen, 3),
        seconds=round(time.time() - t0, 2),
        distill_loss=round(kd_sum / seen, 5) if distill else None,
    )


def _val(joint: JointPaths, task: Task) -> list[float | None]:
    """Each path's validation top-1 (None without a validation split)."""
    if not len(task.x("val")):
        return [None] * len(joint.paths)
    return [round(accuracy(net, task.x("val"), task.y("val"))[0], 3) for net in joint.paths]
