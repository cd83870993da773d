"""Fine-tuning as a recipe with fixed phases (torchtune's shape): `setup()` builds the network or resumes it,
heals its seams and probes its head; `train()` runs the epochs of both phases, a checkpoint after each;
`finish()` keeps the better of end-to-end and phase 1 and writes the metrics; `cleanup()` leaves the process group.

Every random draw happens in a fixed order, so a resumed or distributed run reproduces a single
uninterrupted one: the seed before the network is built, then per epoch one generator seeded by the
epoch, drawing the labelled images' order, then the teacher pool's order, then each step's augmentation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dery_deploy.artifacts import atomic_write_json, make_output_dir
from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.network.plan import AssembledNet, Plan, build_net, load_stitch_weights
from dery_deploy.train.checkpoint import (
    Checkpoint,
    CheckpointMeta,
    load_weights,
    restore_optimizer,
    save_checkpoint,
    save_weights,
)
from dery_deploy.train.distill import DistillBatches, kd_loss
from dery_deploy.train.distributed import DistContext, dist_info, unwrap
from dery_deploy.train.head_init import fit_head
from dery_deploy.train.heal import match_seams
from dery_deploy.train.phases import fast_forward, make_optimizer, next_phase, phase_steps, plateaued, set_phase
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.results import EpochRecord, SeamEpoch
from dery_deploy.train.run_folder import (
    PHASE1_WEIGHTS,
    Conflict,
    FinetuneMetrics,
    Finished,
    Fresh,
    Resume,
    RunConfig,
    RunFolder,
)
from dery_deploy.train.source import FinetuneSource
from dery_deploy.train.teacher import Teacher
from dery_deploy.zoo.load import dissect_zoo, load_donor


def build_model(source: FinetuneSource, zoo, dissections=None, num_classes: int = 10) -> nn.Module:
    """The network a run trains: an AssembledNet from a plan, or a donor with a new head."""
    if source.plan is not None:
        # on a copy: build_net fills the plan's adapter/head records, and config.json keeps the plan as asked
        plan = Plan.from_dict(source.plan.to_dict())
        return build_net(plan, zoo, dissections or dissect_zoo(zoo, plan.donors))
    assert source.donor is not None  # a source is a plan or a donor
    model = load_donor(zoo, source.donor)
    model.reset_classifier(num_classes)  # type: ignore[operator]  # timm's, behind nn.Module.__getattr__
    return model


def start_model(source: FinetuneSource, zoo, dissections=None, num_classes: int = 10) -> nn.Module:
    """The network training starts from: built from `source`, with its fitted adapters and head
    (`adapter_weights`) and, where given, a whole start state (`start_weights`: selection's seam-matched
    start, shared by its folds, or a family path's with its largest path's trained blocks) and the blocks
    that training holds as they start (`frozen_blocks`: indices into the plan's blocks)."""
    from safetensors.torch import load_file

    model = build_model(source, zoo, dissections, num_classes=num_classes)
    if source.adapter_weights:
        load_stitch_weights(model, load_file(source.adapter_weights))
    if source.start_weights:
        model.load_state_dict(load_file(source.start_weights))
    if source.frozen_blocks:
        if not isinstance(model, AssembledNet):
            raise DeryError("frozen_blocks needs a reassembled plan, not a whole donor", "finetune")
        model.freeze_blocks(source.frozen_blocks)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> tuple[float, torch.Tensor]:
    """Top-1 (%) and the predictions, eval mode."""
    model.eval()
    dev = next(model.parameters()).device
    preds = torch.cat([model(x[i : i + batch].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch)])
    return 100.0 * float((preds == y).float().mean()), preds


def augment(images: torch.Tensor, g: torch.Generator, flip: bool = True, shift: int = 2) -> torch.Tensor:
    """Light augmentation for small images, on uint8 (N, C, H, W): random translation by up to
    `shift` px (zero padding) and horizontal flip."""
    n, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift))
    ox, oy = torch.randint(0, 2 * shift + 1, (2,), generator=g).tolist()
    out = padded[:, :, oy : oy + h, ox : ox + w]
    if flip:
        m = torch.rand(n, generator=g) < 0.5
        out = torch.where(m[:, None, None, None], out.flip(-1), out)
    return out


@dataclass
class RunOptions:
    """How a call runs, as opposed to what it trains (config.json): none of it makes another run."""

    force: bool = False  # replace a folder holding another run
    resume: bool = True  # resume from the folder's checkpoint of the same run
    progress: bool = True  # a progress bar on rank 0
    log: Callable[[str], Any] | None = print
    test: bool = True  # report test accuracy
    eval_phase1: bool = False  # ... and phase 1's
    device: str | None = None  # cpu | cuda (see distributed.train_device)


@dataclass
class EpochSums:
    """What an epoch adds up over its steps (summed over the processes once it ends)."""

    loss: float = 0.0
    distill: float = 0.0
    correct: float = 0
    seen: float = 0

    def add(self, loss: float, distill: float, correct: int, seen: int) -> None:
        self.loss += loss * seen
        self.distill += distill * seen
        self.correct += correct
        self.seen += seen

    def stats(self) -> str:
        return f"loss {self.loss / self.seen:.3f} acc {100 * self.correct / self.seen:.1f}%"


class FinetuneRun:
    """One fine-tune into a run folder (see the module's docstring for its phases)."""

    def __init__(
        self,
        source: FinetuneSource,
        zoo,
        task: Task,
        recipe: Recipe,
        run: Path,
        teacher: Teacher | None = None,
        options: RunOptions | None = None,
    ) -> None:
        recipe.check()
        if recipe.distill and teacher is None:
            raise DeryError("the recipe distils (distill > 0) but no teacher was given", "finetune")
        self.rank, self.world = dist_info()
        if recipe.batch % self.world:
            raise DeryError(f"batch {recipe.batch} is not divisible by the {self.world} processes", "finetune")
        self.source, self.zoo, self.task, self.recipe, self.teacher = source, zoo, task, recipe, teacher
        self.options = options or RunOptions()
        self.cfg = RunConfig.of(source, zoo, task, recipe, self.world, teacher if recipe.distill else None)
        self.folder = RunFolder(Path(run))
        self.history: list[EpochRecord] = []
        self.phase1_done = recipe.epochs_adapter == 0
        self.probe_acc: float | None = None
        self.seam_matching: list[SeamEpoch] = []
        self.phase_now: int | None = None
        self.opt: torch.optim.Optimizer | None = None
        self._resume_from: Checkpoint | None = None

    def folder_state(self) -> Fresh | Finished | Resume:
        """What the run folder holds for this run; another run is refused, or removed with `force`."""
        state = self.folder.state(self.cfg, self.options.resume)
        if isinstance(state, Conflict):
            if not self.options.force:
                raise self.folder.refuse()
            self.folder.clear()
            return Fresh()
        return state

    def setup(self, state: Fresh | Resume) -> None:
        """Build the network (or resume it), heal its seams and probe its head, write config.json."""
        self.dist = DistContext.start(self.rank, self.world, self.options.device)
        torch.manual_seed(self.recipe.seed)
        dissections = None if (plan := self.source.plan) is None else dissect_zoo(self.zoo, plan.donors)
        self.model = start_model(self.source, self.zoo, dissections, self.task.num_classes)
        if isinstance(state, Resume):
            self._resume(state)
        self.model.to(self.dist.device)  # before healing and the probe, so that both run where training does
        if not isinstance(state, Resume):
            self._heal_and_probe(dissections)
        if self.dist.is_main:
            make_output_dir(self.folder.path, "run folder", "finetune")
            atomic_write_json(self.folder.path / "config.json", self.cfg.to_dict())
        self.steps = max(1, math.ceil(len(self.task.train) / self.recipe.batch))
        self.distill = DistillBatches.of(self.recipe, self.teacher, self.steps)
        self.t0 = time.time()

    def _resume(self, state: Resume) -> None:
        ckpt = state.checkpoint
        self.model.load_state_dict(ckpt.model_state)
        self.history, self.phase1_done = list(ckpt.meta.history), ckpt.meta.phase1_done
        self.probe_acc, self.seam_matching = ckpt.meta.probe_acc, list(ckpt.meta.seam_matching)
        self._resume_from = ckpt

    def _heal_and_probe(self, dissections) -> None:
        r = self.recipe
        if r.match_epochs and self.source.plan is not None:
            self.seam_matching = match_seams(
                self.model,
                self.source.plan,
                dissections,
                self.task,
                r.match_epochs,
                r.match_images,
                seed=r.seed,
                device=self.dist.device,
            )
        if r.head_init == "probe":
            self.probe_acc = fit_head(self.model, self.task.x("train"), self.task.y("train"), self.task.num_classes)

    def train(self) -> None:
        """Epochs of phase 1, then of phase 2, until both are done; a checkpoint after each."""
        with self._progress_bar():
            while True:
                phase, self.phase1_done = next_phase([h.phase for h in self.history], self.phase1_done, self.recipe)
                if phase is None:
                    break
                if phase != self.phase_now:
                    self._start_phase(phase)
                else:  # evaluation left it in eval mode
                    set_phase(unwrap(self.model), phase)
                self.history.append(self._train_epoch(phase))
                self._end_epoch()

    @contextmanager
    def _progress_bar(self) -> Iterator[None]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            disable=not (self.options.progress and self.dist.is_main),
            transient=True,
        )
        with self._bar:
            total = (self.recipe.epochs_adapter + self.recipe.epochs_full) * self.steps
            self._bar_task = self._bar.add_task(
                "finetune", total=total, completed=len(self.history) * self.steps, stats=""
            )
            yield

    def _start_phase(self, phase: int) -> None:
        """A new optimizer and schedule; on resume, the checkpoint's, fast-forwarded to where it stopped."""
        model = self.dist.unwrap_for_rewrap(self.model)
        self.opt, sched = make_optimizer(model, phase, self.recipe, phase_steps(self.recipe, phase, self.steps))
        resumed = self._resume_from
        if resumed is not None and resumed.meta.phase == phase:
            restore_optimizer(self.opt, resumed.optimizer_state, resumed.optimizer_groups)
            fast_forward(sched, sum(1 for h in self.history if h.phase == phase) * self.steps)
        self._resume_from = None
        self.sched = sched
        self.model = self.dist.wrap(model)
        self.phase_now = phase

    def _train_epoch(self, phase: int) -> EpochRecord:
        """One pass over the labelled images (and a share of the teacher's pool), in a seeded order."""
        epoch = len(self.history)
        g = torch.Generator().manual_seed(self.recipe.seed * 100003 + epoch)
        perm = torch.randperm(len(self.task.train), generator=g)
        order = self.distill.order(g) if self.distill else None
        sums = EpochSums()
        total = self.recipe.epochs_adapter + self.recipe.epochs_full
        for s in range(self.steps):
            sums.add(*self._step(perm, order, s, g))
            self._bar.update(
                self._bar_task, advance=1, description=f"phase {phase} epoch {epoch + 1}/{total}", stats=sums.stats()
            )
        sums = EpochSums(*self.dist.sums([sums.loss, sums.distill, sums.correct, sums.seen]))
        return EpochRecord(
            epoch,
            phase,
            loss=round(sums.loss / sums.seen, 5),
            train_acc=round(100 * sums.correct / sums.seen, 3),
            seconds=round(time.time() - self.t0, 2),
            distill_loss=round(sums.distill / sums.seen, 5) if self.distill else None,
            exact=(sums.loss / sums.seen, 100 * sums.correct / sums.seen),
        )

    def _step(
        self, perm: torch.Tensor, order: torch.Tensor | None, s: int, g: torch.Generator
    ) -> tuple[float, float, int, int]:
        """One optimizer step on this rank's slice of global batch `s`: (loss, distillation loss, correct, seen)."""
        r, task, dist = self.recipe, self.task, self.dist
        idx = perm[s * r.batch : (s + 1) * r.batch]
        xb = dist.shard(task.normalize(augment(task.train.images[idx], g)))
        yb = dist.shard(task.train.targets[idx])
        logits = self.model(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=r.label_smoothing)
        kd_value = 0.0
        if self.distill and order is not None:
            images, teacher_logits = self.distill.batch(order, s)
            kd = kd_loss(self.model(dist.shard(task.normalize(images))), dist.shard(teacher_logits), r.temperature)
            loss = (1 - r.distill) * loss + r.distill * kd
            kd_value = kd.item()
        assert self.opt is not None
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss.item(), kd_value, int((logits.argmax(1) == yb).sum()), len(yb)

    def _end_epoch(self) -> None:
        """Phase 1's plateau test and snapshot, the checkpoint, the log line."""
        rec, r = self.history[-1], self.recipe
        if rec.phase == 1:
            losses = [h.loss for h in self.history if h.phase == 1]
            if plateaued(losses, r.plateau):
                self.phase1_done, rec.plateau = True, True
            ends = self.phase1_done or len(losses) >= r.epochs_adapter
            if self.dist.is_main and ends and len(self.task.val):
                self._snapshot_phase1(rec)
        if self.dist.is_main:
            save_checkpoint(self.folder.path, self.model, self.opt, self._meta(rec.epoch, rec.phase, self.phase1_done))
        if self.options.log and self.dist.is_main:
            assert rec.exact is not None  # set by _train_epoch
            loss, acc = rec.exact
            plateau = " (phase 1 plateaued)" if rec.plateau else ""
            self.options.log(f"epoch {rec.epoch + 1} phase {rec.phase}: loss {loss:.4f}, train acc {acc:.1f}%{plateau}")

    def _snapshot_phase1(self, rec: EpochRecord) -> None:
        # adapters + head only: DeRy's "stitching layers trained" setting, before end-to-end tuning;
        # kept on disk in case end-to-end tuning ends worse on validation
        task = self.task
        rec.val_acc = round(accuracy(unwrap(self.model), task.x("val"), task.y("val"))[0], 3)
        save_weights(self.folder.path / PHASE1_WEIGHTS, self.model)
        if self.options.eval_phase1:
            rec.test_acc = round(accuracy(unwrap(self.model), task.x("test"), task.y("test"))[0], 3)

    def _meta(self, epoch: int, phase: int, phase1_done: bool) -> CheckpointMeta:
        return CheckpointMeta(
            epoch, phase, self.history, self.cfg.to_dict(), phase1_done, self.probe_acc, self.seam_matching
        )

    def finish(self) -> FinetuneMetrics | None:
        """Keep the better network, write metrics.json and history.json (rank 0; None elsewhere)."""
        base = unwrap(self.model)
        if not self.dist.is_main:
            return None
        val_acc, kept = self._keep_better(base)
        phase1 = [h for h in self.history if h.val_acc is not None]
        task = self.task
        metrics = FinetuneMetrics(
            val_accuracy=val_acc,
            kept=kept,
            test_accuracy=round(accuracy(base, task.x("test"), task.y("test"))[0], 3) if self.options.test else None,
            phase1_val_accuracy=phase1[-1].val_acc if phase1 else None,
            phase1_test_accuracy=phase1[-1].test_acc if phase1 else None,
            phase1_epochs=sum(1 for h in self.history if h.phase == 1),
            probe_train_accuracy=self.probe_acc,
            seam_matching=self.seam_matching,
            epochs=len(self.history),
            history=self.history,
            device=str(self.dist.device),
            params_m=round(sum(p.numel() for p in base.parameters()) / 1e6, 4),
            world_size=self.world,
            train_seconds=round(time.time() - self.t0, 2),
        )
        atomic_write_json(self.folder.path / "metrics.json", metrics.to_dict())
        atomic_write_json(self.folder.path / "history.json", [h.to_dict() for h in self.history])
        return metrics

    def _keep_better(self, base: nn.Module) -> tuple[float | None, str]:
        """(validation accuracy, what ships): the network as phase 1 left it where end-to-end tuning
        lowered validation accuracy (loaded into `base`, and into the checkpoint), else the last one."""
        phase1 = [h for h in self.history if h.val_acc is not None]
        val = self.task.x("val")
        val_acc = round(accuracy(base, val, self.task.y("val"))[0], 3) if len(val) else None
        snapshot = self.folder.path / PHASE1_WEIGHTS
        p1_acc = phase1[-1].val_acc if phase1 else None
        if val_acc is None or p1_acc is None or not val_acc < p1_acc or not snapshot.is_file():
            return val_acc, "end to end"
        # end-to-end tuning lowered validation accuracy: ship the network as phase 1 left it
        kept = f"phase 1 (end to end lowered validation {p1_acc:.2f}% -> {val_acc:.2f}%)"
        base.load_state_dict(load_weights(snapshot))
        save_checkpoint(
            self.folder.path, base, self.opt, self._meta(len(self.history) - 1, self.history[-1].phase, True)
        )
        if self.options.log:
            self.options.log(f"kept the {kept}")
        return p1_acc, kept

    def cleanup(self) -> None:
        """Wait for every rank and leave the process group this run created."""
        self.dist.close()
