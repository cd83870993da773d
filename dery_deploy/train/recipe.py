"""The training recipe every network of a comparison shares: reassembled plans and donor baselines
are trained the same way, so the comparison is fair."""

from __future__ import annotations

from dataclasses import dataclass

from dery_deploy.errors import DeryError


@dataclass(kw_only=True)
class Recipe:
    match_epochs: int = 0  # phase 0: block-wise distillation at every seam on unlabelled images (train/heal.py)
    match_images: int = 8192  # unlabelled images per phase-0 epoch
    epochs_adapter: int = 4  # phase 1, adapters + head (blocks frozen): at most this many epochs
    epochs_full: int = 6  # phase 2, end to end
    lr: float = 3e-3  # phase 1
    lr_full: float = 5e-4  # phase 2, the borrowed blocks
    # phase 2: adapters and head learn this many times faster than the borrowed blocks (SN-Net's stitch
    # layers get a higher rate); 10 had the best validation accuracy of 1/3/10 (scripts/bench_stitch_lr.py,
    # within noise: test means moved by +0.0..+0.2 points)
    stitch_lr_scale: float = 10.0
    batch: int = 64
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_frac: float = 0.1
    head_init: str = "probe"  # probe: the head starts as a linear probe fitted on the labels (LP-FT); random
    plateau: float = 0.0  # phase 1 ends early once an epoch lowers its loss by less than this fraction (0: never)
    distill: float = 0.0  # weight of distillation from a teacher on unlabelled images (0: labels only)
    distill_images: int = 2048  # unlabelled images per epoch
    temperature: float = 2.0
    seed: int = 0

    def check(self) -> None:
        """Every bad field at once."""
        bad = []
        if self.match_epochs < 0 or (self.match_epochs and self.match_images <= 0):
            bad.append(f"--match-epochs must be >= 0 (with seam-matching images > 0), got {self.match_epochs}")
        if self.epochs_adapter < 0 or self.epochs_full < 0 or self.epochs_adapter + self.epochs_full == 0:
            bad.append(
                f"--epochs-adapter and --epochs-full must be >= 0 and not both 0, got {self.epochs_adapter} and "
                f"{self.epochs_full}"
            )
        if self.batch <= 0:
            bad.append(f"--batch must be > 0, got {self.batch}")
        if not (self.lr > 0 and self.lr_full > 0 and self.stitch_lr_scale > 0):
            bad.append(
                f"--lr, --lr-full and --stitch-lr-scale must be > 0, got {self.lr}, {self.lr_full} and "
                f"{self.stitch_lr_scale}"
            )
        if self.head_init not in ("probe", "random"):
            bad.append(f"--head-init must be probe or random, got {self.head_init!r}")
        if not 0 <= self.distill <= 1:
            bad.append(f"--distill must be in [0, 1], got {self.distill}")
        if self.distill and self.distill_images <= 0:
            bad.append(f"--distill-images must be > 0, got {self.distill_images}")
        if not self.temperature > 0:
            bad.append(f"temperature must be > 0, got {self.temperature}")
        if bad:
            raise DeryError("; ".join(bad), "finetune")
