"""`dery finetune`: train a plan (adapters and head, then end to end) or a single donor with the
same recipe. Runs under `torchrun --nproc_per_node N` unchanged (DDP).

Examples:
    dery finetune plan.json --data fashion-mnist:labels_per_class=100 -o run/
    dery finetune plan.json --data ~/images/task -o run/ --epochs-full 10
    dery finetune --donor vit_tops --zoo fashion -o run_vit/
    dery finetune plan.json -o run2/ --teacher run_vit/   # dery run's final recipe (distilled from run_vit)
    dery finetune plan.json -o run3/ --match-epochs 0 --plateau 0   # no seam healing, fixed phase 1
    torchrun --nproc_per_node 2 -m dery_deploy.cli.main finetune plan.json -o run_ddp/ --device cpu
"""

from __future__ import annotations

from pathlib import Path

import typer

from dery_deploy.cli.common import console, show_notes
from dery_deploy.data.task import DEFAULT_DATA, Task, load_task
from dery_deploy.errors import DeryError
from dery_deploy.network.plan import Plan, load_plan
from dery_deploy.train.finetune import Recipe, dist_info, load_run_model
from dery_deploy.train.finetune import finetune as run_finetune
from dery_deploy.train.source import FinetuneSource
from dery_deploy.train.teacher import make_teacher
from dery_deploy.zoo.load import get_zoo
from dery_deploy.zoo.spec import ZooSpec


def finetune(
    plan: Path | None = typer.Argument(None, help="plan.json (adapter weights beside it are used)"),
    data: str | None = typer.Option(
        None,
        "--data",
        help="your task: a folder with train/ and test/, or fashion-mnist[:options] (default: the plan's, "
        f"else {DEFAULT_DATA})",
    ),
    out: Path = typer.Option(..., "-o", "--out", help="run directory"),
    donor: str | None = typer.Option(None, "--donor", help="fine-tune this zoo donor instead of a plan"),
    zoo: str | None = typer.Option(None, "--zoo", help="zoo of --donor (default: fashion); a plan names its own"),
    epochs_adapter: int = typer.Option(4, "--epochs-adapter", help="phase 1: adapters + head"),
    epochs_full: int = typer.Option(6, "--epochs-full", help="phase 2: end to end"),
    lr: float = typer.Option(3e-3, "--lr"),
    lr_full: float = typer.Option(5e-4, "--lr-full"),
    batch: int = typer.Option(64, "--batch", help="global batch (split across DDP processes)"),
    head_init: str = typer.Option("probe", "--head-init", help="probe (a linear probe fitted first, LP-FT) or random"),
    match_epochs: int = typer.Option(
        4,
        "--match-epochs",
        help="heal seams first: epochs of block-wise distillation on unlabelled images (0: off; a donor has none)",
    ),
    teacher: list[Path] = typer.Option(
        [],
        "--teacher",
        help="run folder of a fine-tuned network to distil from "
        "(repeat for an ensemble); the teacher may be slower than the budget",
    ),
    distill: float = typer.Option(0.5, "--distill", help="weight of distillation when a --teacher is given"),
    distill_images: int = typer.Option(
        4096, "--distill-images", help="unlabelled images distilled per epoch (dery run: 4096, --quick 1024)"
    ),
    stitch_lr_scale: float = typer.Option(
        Recipe().stitch_lr_scale,
        "--stitch-lr-scale",
        help="phase 2: adapters and head learn this many times faster than the borrowed blocks",
    ),
    plateau: float = typer.Option(
        0.02,
        "--plateau",
        help="end phase 1 early once an epoch lowers its loss by less than this fraction (0: never)",
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: a GPU where there is one)"),
    force: bool = typer.Option(False, "--force", help="overwrite a run directory that holds another run"),
    no_resume: bool = typer.Option(False, "--no-resume", help="do not resume from the last checkpoint"),
) -> None:
    """Fine-tune in two phases and report validation and test accuracy."""
    if (plan is None) == (donor is None):
        raise DeryError("give either a plan.json or --donor NAME", "finetune")
    if out.exists() and not out.is_dir():
        raise DeryError(f"{out} is a file, not a run folder: choose another -o", "finetune")
    if not 0 <= distill <= 1:  # (ignored without a teacher, but never silently wrong)
        raise DeryError(f"--distill must be in [0, 1], got {distill}", "finetune")
    for t in teacher:  # checked before any training: a teacher is a fine-tuned run's folder
        if not (t / "checkpoint.safetensors").is_file():
            raise DeryError(
                f"--teacher {t} is not a run folder of `dery finetune` (no checkpoint.safetensors); pass a folder "
                "that `dery finetune ... -o DIR` wrote",
                "finetune",
            )
    p: Plan | None = None
    if plan is not None:
        source, z, p = _plan_source(plan, zoo)
    elif donor is not None:  # always, where there is no plan: exactly one of the two is given (checked above)
        z = get_zoo(zoo or "fashion")
        z.donor(donor)
        source = FinetuneSource.of_donor(donor, z.ref)
    task = _plan_task(plan, p, data, z, seed)
    rank, _ = dist_info()
    if rank == 0:
        show_notes(task.notes)
    recipe = Recipe(
        epochs_adapter=epochs_adapter,
        epochs_full=epochs_full,
        lr=lr,
        lr_full=lr_full,
        batch=batch,
        head_init=head_init,
        match_epochs=match_epochs,
        plateau=plateau,
        distill=distill if teacher else 0.0,
        distill_images=distill_images,
        stitch_lr_scale=stitch_lr_scale,
        seed=seed,
    )
    from_teacher = make_teacher(list(teacher), task, load=load_run_model) if teacher else None
    metrics = run_finetune(
        source,
        z,
        task,
        recipe,
        out,
        force=force,
        resume=not no_resume,
        log=console.print,
        device=device,
        teacher=from_teacher,
    )
    if metrics is not None:  # rank 0 (the other ranks get None)
        console.print(
            f"validation accuracy {metrics.val_accuracy:.2f}%, test accuracy {metrics.test_accuracy:.2f}% "
            f"({metrics.params_m:.3f} M params) -> {out}"
        )


def _plan_source(plan: Path, zoo: str | None) -> tuple[FinetuneSource, ZooSpec, Plan]:
    """What a plan.json trains (the adapter weights beside it, where there are), on its own zoo as it was."""
    p = load_plan(plan)
    if zoo is not None:
        raise DeryError(f"--zoo {zoo!r} is for --donor; plan {plan} names its own zoo ({p.zoo_ref})", "finetune")
    z = get_zoo(p.zoo_ref)
    if z.hash() != p.zoo_hash:
        raise DeryError(
            f"plan {plan} was made for zoo {p.zoo!r} {p.zoo_hash}; its weights or spec changed "
            f"(now {z.hash()}): re-assemble",
            "finetune",
        )
    weights = Path(plan).with_suffix(".safetensors")
    return FinetuneSource.of_plan(p, str(weights.resolve()) if weights.is_file() else None), z, p


def _plan_task(plan: Path | None, p: Plan | None, data: str | None, z: ZooSpec, seed: int) -> Task:
    """The task trained on: --data, else the plan's own, else the default; a plan's classes must be its."""
    planned_on = p.task.spec if p is not None and p.task else None
    data = data or planned_on or DEFAULT_DATA
    task = load_task(data, z.input, seed)
    if p is not None:
        classes = p.task.classes if p.task else None
        task.require_classes(classes, f"plan {plan}", "assemble the plan with this --data", "finetune")
    if p is not None and p.num_classes != task.num_classes:
        raise DeryError(
            f"plan {plan} has a {p.num_classes}-class head, but --data {data!r} has {task.num_classes} "
            "classes; assemble the plan with this --data",
            "finetune",
        )
    return task


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
