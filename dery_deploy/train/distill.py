"""Distillation from a teacher on unlabelled images: each step adds a batch of the teacher's pool,
and the student matches the teacher's softened logits (Hinton et al.) besides learning the labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dery_deploy.train.recipe import Recipe
from dery_deploy.train.teacher import Teacher


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence between the softened distributions, scaled by T² so its gradients keep the size
    of the label loss's whatever the temperature."""
    T = temperature
    return (
        F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1), reduction="batchmean") * T * T
    )


@dataclass
class DistillBatches:
    """The teacher's images and logits, `per_step` of them a step, in a seeded order per epoch."""

    teacher: Teacher
    per_step: int

    @classmethod
    def of(cls, recipe: Recipe, teacher: Teacher | None, steps: int) -> DistillBatches | None:
        """A recipe's `distill_images` an epoch, spread over its steps; None when it does not distil."""
        if not recipe.distill:
            return None
        assert teacher is not None  # FinetuneRun refuses a distilling recipe without one
        return cls(teacher, math.ceil(recipe.distill_images / steps))

    def order(self, g: torch.Generator) -> torch.Tensor:
        """This epoch's order of the pool (drawn after the labelled images' permutation)."""
        return torch.randperm(len(self.teacher.images), generator=g)

    def batch(self, order: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, teacher logits) of a step; the pool wraps around when an epoch needs more."""
        u = order[(step * self.per_step) % len(order) :][: self.per_step]
        return self.teacher.images[u], self.teacher.logits[u]
