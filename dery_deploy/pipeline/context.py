"""What every budget of a run shares: the recipes and the context built once per run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from dery_deploy.assemble.candidates import AdapterFitter
from dery_deploy.assemble.program_data import Scores
from dery_deploy.data.task import Task
from dery_deploy.partition.stage import Partition
from dery_deploy.pipeline.options import RunOptions
from dery_deploy.pipeline.records import RecipeRecord
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.runtime.backends import Backend
from dery_deploy.runtime.devices import DeviceSpec
from dery_deploy.train.finetune import Recipe
from dery_deploy.train.teacher import Teacher
from dery_deploy.zoo.spec import ZooSpec


@dataclass
class Recipes:
    """The recipes of one run: `ce` trains teacher candidates and is the base of the selection's short
    rungs; `final` is the one recipe every compared network gets (donors and the picks alike)."""

    ce: Recipe
    final: Recipe
    rungs: tuple[int, ...]
    teacher_pool: int
    finalists: int  # mixed (non-donor) finalists per budget
    folds: int | None = None  # selection's cross-validation folds (None: the task's default; 1: validation)
    test_fifth: bool = False  # test accuracy on a stratified fifth of the test split (--time-limit)

    @classmethod
    def of(cls, opts: RunOptions) -> Recipes:
        ce = Recipe(epochs_adapter=opts.epochs_adapter, epochs_full=opts.epochs_full, plateau=0.02, seed=opts.seed)
        final = Recipe(
            match_epochs=1 if opts.quick else 4,
            match_images=4096 if opts.quick else 8192,
            epochs_adapter=opts.epochs_adapter,
            epochs_full=opts.epochs_full,
            plateau=0.02,
            distill=0.5,
            distill_images=1024 if opts.quick else 4096,
            seed=opts.seed,
        )
        return cls(ce, final, (1,) if opts.quick else (1, 2), 4096 if opts.quick else 8192, 2 if opts.quick else 4)

    @classmethod
    def of_plan(cls, plan, teacher_pool: int) -> Recipes:
        """The recipes an estimate's plan (`estimate.Plan`, as --time-limit cut it) runs with."""
        return cls(plan.ce, plan.final, plan.rungs, teacher_pool, plan.finalists, plan.folds, plan.test_fifth)

    def describe(self) -> RecipeRecord:
        f = self.final

        def ep(n: int) -> str:
            return f"{n} epoch" + ("" if n == 1 else "s")

        distil = (
            f"distillation on up to {f.distill_images} unlabelled images per epoch" if f.distill else "no distillation"
        )
        return RecipeRecord(
            final=replace(f),
            selection_rungs_epochs=list(self.rungs),
            mixed_finalists=self.finalists,
            teacher_images=self.teacher_pool,
            cut_to_fit=(
                f"scaled to fit this run's time on a small CPU (DeRy and SN-Net train 50-300 epochs): seam "
                f"matching {ep(f.match_epochs)} x up to {f.match_images} unlabelled images, phase 1 at most "
                f"{ep(f.epochs_adapter)} (until its loss plateaus), phase 2 {ep(f.epochs_full)}, "
                + distil
                + ", selection rungs of "
                f"{'/'.join(str(x) for x in self.rungs)} epochs over {self.finalists} mixed finalists and every "
                f"fitting donor"
            ),
        )


@dataclass
class Context:
    """What every budget of a run shares: the zoo and device, the partition and latency model, the
    task, the recipes, the adapter fitter, the task-aware scores (computed on first use), the teacher."""

    zoo: ZooSpec
    spec: DeviceSpec
    backend: Backend
    precision: str
    part: Partition
    dis: dict
    model: LatencyModel
    task: Task
    recipes: Recipes
    fitter: AdapterFitter
    scores: Callable[[], Scores]
    teacher: Teacher | None  # None where the final recipe does not distil (--time-limit cut it)
    models: list[LatencyModel] = field(default_factory=list)  # one per target searched, the first is `model`'s
    carried: list[str] = field(default_factory=list)  # mixed finalists of the smaller budgets so far
    # the targets carried into assembly and selection (`pipeline/target_stage.py`); empty: every one of `models`
    selected: list[LatencyModel] = field(default_factory=list)

    @property
    def searched(self) -> list[LatencyModel]:
        """The latency models a budget's assembly and selection search: the selected targets, else all."""
        return self.selected or self.models

    @property
    def latency(self) -> tuple:
        """(backend, precision, device) of evaluations measured here."""
        return self.backend, self.precision, "cuda" if self.spec.kind == "cuda" else "cpu"
