"""Fine-tuning in two phases: adapters and head only (blocks frozen) until their loss plateaus, then
end to end, the adapters and head learning faster than the borrowed blocks. The head starts as a
linear probe on the labels (LP-FT); with a teacher, each step also distils it on unlabelled images.
AdamW, label smoothing, light augmentation. Checkpoints (safetensors, plan embedded) after every
epoch; a run resumes from its last one.

The same entry point runs single-process or under `torchrun --nproc_per_node N` (DDP, gloo on CPU,
nccl on CUDA): every rank walks the same seeded permutation and takes its slice of each global
batch, so the global batch, and hence the result, is the same as a single process's.

The recipe itself is `trainer.FinetuneRun`; its pieces are `distributed` (DDP), `run_folder` (what a
run folder holds), `phases` (what each phase trains, its optimizer, the plateau) and `distill`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.train.checkpoint import load_checkpoint
from dery_deploy.train.distributed import dist_info, global_sums, init_distributed, train_device
from dery_deploy.train.phases import stitch_params
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.run_folder import KIND, PHASE1_WEIGHTS, SCHEMA, FinetuneMetrics, Finished, RunConfig
from dery_deploy.train.source import FinetuneSource
from dery_deploy.train.teacher import Teacher
from dery_deploy.train.trainer import FinetuneRun, RunOptions, accuracy, augment, build_model, start_model
from dery_deploy.zoo.load import get_zoo

__all__ = [
    "KIND",
    "PHASE1_WEIGHTS",
    "SCHEMA",
    "FinetuneMetrics",
    "FinetuneSource",
    "Recipe",
    "RunConfig",
    "accuracy",
    "augment",
    "build_model",
    "dist_info",
    "finetune",
    "global_sums",
    "init_distributed",
    "load_checkpoint",
    "load_run_model",
    "start_model",
    "stitch_params",
    "train_device",
]


def finetune(
    source: FinetuneSource,
    zoo,
    task: Task,
    recipe: Recipe,
    run: Path,
    force: bool = False,
    resume: bool = True,
    progress: bool = True,
    log=print,
    test: bool = True,
    eval_phase1: bool = False,
    device: str | None = None,
    teacher: Teacher | None = None,
) -> FinetuneMetrics | None:
    """Train and write run/: config.json, checkpoint.safetensors, history.json, metrics.json.

    A run folder holding the same configuration is resumed from its last checkpoint (or returned
    when finished); one holding another configuration is refused unless `force`.
    Returns metrics.json's content (None on the ranks other than 0).
    """
    options = RunOptions(force, resume, progress, log, test, eval_phase1, device)
    job = FinetuneRun(source, zoo, task, recipe, Path(run), teacher, options)
    state = job.folder_state()
    if isinstance(state, Finished):
        return state.metrics
    job.setup(state)
    job.train()
    metrics = job.finish()
    job.cleanup()
    return metrics


def load_run_model(run: Path, zoo=None) -> tuple[nn.Module, RunConfig]:
    """The trained network of a run directory (on the CPU, eval mode), with its config."""
    run = Path(run)
    if not run.exists():
        raise DeryError(f"run folder not found: {run}; give a folder that `dery finetune -o DIR` wrote", "finetune")
    if run.is_file():
        raise DeryError(
            f"{run} is a file, not a run folder"
            + (f": fine-tune it first (dery finetune {run} -o RUN/)" if run.suffix == ".json" else ""),
            "finetune",
        )
    cfg = RunConfig.read(run)
    if not (run / "checkpoint.safetensors").is_file():
        raise DeryError(f"{run} has no checkpoint.safetensors; run `dery finetune` into it first", "finetune")
    zoo = zoo or get_zoo(cfg.zoo_ref)
    if zoo.hash() != cfg.zoo_hash:
        raise DeryError(
            f"run {run} was trained on zoo {cfg.zoo!r} {cfg.zoo_hash}, but the zoo is now {zoo.hash()} "
            f"(weights or spec changed): restore {cfg.zoo_ref} as it was, or fine-tune again",
            "finetune",
        )
    try:
        model = build_model(cfg.source, zoo, num_classes=cfg.num_classes)
        model.load_state_dict(load_checkpoint(run).model_state)
    except DeryError as e:
        raise DeryError(f"the checkpoint's plan in {run} fails to rebuild: {e}", "export") from None
    except RuntimeError as e:
        raise DeryError(f"the checkpoint in {run} does not fit its plan ({str(e).splitlines()[0]})", "export") from None
    return model.eval(), cfg
