"""The per-epoch records a fine-tune keeps, shared by its checkpoint's meta and its metrics.json: one epoch of
training (history.json) and one epoch of seam matching. Each writes itself as its JSON has always read and
reads back what older run folders hold."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EpochRecord:
    """One epoch of history.json. The optional fields are written only when set: `distill_loss` when
    the recipe distils, `plateau` when phase 1 ended here early, `val_acc` (and with `eval_phase1`
    `test_acc`) on the epoch that ended phase 1."""

    epoch: int
    phase: int
    loss: float
    train_acc: float
    seconds: float
    distill_loss: float | None = None
    plateau: bool = False
    val_acc: float | None = None
    test_acc: float | None = None
    # (mean loss, train accuracy %) before rounding, for the log line; not written
    exact: tuple[float, float] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("epoch", "phase", "loss", "train_acc", "seconds")}
        optional = {
            "distill_loss": self.distill_loss,
            "plateau": True if self.plateau else None,
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
        }
        return d | {k: v for k, v in optional.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> EpochRecord:
        return cls(**d)


@dataclass(frozen=True)
class SeamEpoch:
    """One epoch of seam matching (`heal.match_seams`): its mean relative MSE over the seams and how many
    unlabelled images it used (not recorded before 2026-11-28; None and not written for such a record)."""

    epoch: int
    phase: int  # 0: before the two phases of fine-tuning
    seam_rel_mse: float
    images: int | None = None

    def to_dict(self) -> dict:
        d = {"epoch": self.epoch, "phase": self.phase, "seam_rel_mse": self.seam_rel_mse}
        return d if self.images is None else {**d, "images": self.images}

    @classmethod
    def from_dict(cls, d: dict) -> SeamEpoch:
        return cls(**d)
