"""`dery run --family --family-training joint` (issue 28, option (b)): the family's paths trained together,
every path at every step, their shared blocks one module (`train.joint`), instead of the largest path first
and the smaller ones on its frozen blocks (option (a), `pipeline.family`).

Each path starts as a pick does (its plan built, its adapters fitted by least squares) and gets its own run
folder (RUN/family-paths/<budget>ms/joint), with config.json, checkpoint.safetensors and metrics.json as a
fine-tune writes them, so that evaluation, export and the family's writer read it as any other run. The whole
joint training is reused while RUN/family-paths/joint.json names the same plans, recipe, teacher and task.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.network.plan import AssembledNet, Plan, build_net, load_plan, save_plan_with_weights
from dery_deploy.pipeline.context import Context
from dery_deploy.pipeline.runner import Run
from dery_deploy.train.checkpoint import CheckpointMeta, save_checkpoint
from dery_deploy.train.joint import JointPaths, JointResult, prepare, tie_shared, train_jointly
from dery_deploy.train.run_folder import FinetuneMetrics, RunConfig
from dery_deploy.train.source import FinetuneSource

KEY_FILE = "joint.json"
# what the joint training does, in the key: a folder trained before a change to it is trained again
METHOD = "every path every step; BatchNorm statistics held as the donors'"


def joint_key(ctx: Context, plans: list[Plan], budgets: list[float]) -> str:
    """What makes another joint training: the paths (plan and budget), the recipe, the teacher and the task."""
    teacher = ctx.teacher.describe() if (ctx.teacher and ctx.recipes.final.distill) else None
    what = {
        "paths": [[p.describe(), b] for p, b in zip(plans, budgets)],
        "recipe": asdict(ctx.recipes.final),
        "teacher": asdict(teacher) if teacher is not None else None,
        "task": ctx.task.hash(),
        "zoo": ctx.zoo.hash(),
        "method": METHOD,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:20]


def start_path(ctx: Context, plan: Plan, path: Path) -> tuple[AssembledNet, FinetuneSource]:
    """A path as a pick starts: its network built, its adapters fitted by least squares, saved to `path` with its
    weights beside it; and the fine-tune source that starts from them."""
    net = build_net(plan, ctx.zoo, ctx.dis)
    assert isinstance(net, AssembledNet)  # a family path always has a new head
    ctx.fitter.init(net, plan)
    saved = save_plan_with_weights(plan, net, path)
    return net, FinetuneSource.of_plan(load_plan(saved), str(saved.with_suffix(".safetensors").resolve()))


def train_joint_paths(r: Run, ctx: Context, plans: list[Plan], budgets: list[float], root: Path) -> list[Path]:
    """Every path trained together (module docstring); returns each path's run folder, in the order given."""
    order = sorted(range(len(plans)), key=lambda i: -budgets[i])  # the largest first: it matches shared seams
    folders = [root / f"{budgets[i]:g}ms" / "joint" for i in range(len(plans))]
    key = joint_key(ctx, plans, budgets)

    def reuse():
        f = root / KEY_FILE
        done = f.is_file() and json.loads(f.read_text()).get("key") == key
        return folders if done and all((d / "metrics.json").is_file() for d in folders) else None

    def compute():
        return _train(r, ctx, [plans[i] for i in order], [budgets[i] for i in order], [folders[i] for i in order],
                      root, key)  # fmt: skip

    r.stage(
        f"family: train {len(plans)} paths jointly (every path every step)",
        reuse,
        compute,
        lambda _: f"{len(plans)} paths, {ctx.recipes.final.epochs_adapter}+{ctx.recipes.final.epochs_full} epochs",
    )
    return folders


def _train(r: Run, ctx: Context, plans, budgets, folders, root: Path, key: str) -> list[Path]:
    torch.manual_seed(ctx.recipes.final.seed)
    nets: list[AssembledNet] = []
    sources = []
    for plan, folder in zip(plans, folders):
        net, source = start_path(ctx, plan, folder.parent / "joint-plan.json")
        sources.append(source)
        nets.append(net)
    tied = tie_shared(nets, plans)
    recipe = ctx.recipes.final
    starts = prepare(nets, plans, tied, ctx.dis, ctx.task, recipe)
    joint = JointPaths(nets)
    with r.progress() as prog:
        steps = -(-len(ctx.task.train) // recipe.batch)
        bar = prog.add_task("joint", total=(recipe.epochs_adapter + recipe.epochs_full) * steps) if prog else None

        def tick(text: str) -> None:
            if prog is not None:
                prog.update(bar, advance=1, description=f"joint {text}")

        result = train_jointly(joint, ctx.task, recipe, ctx.teacher, starts, tick)
    for i, (net, folder) in enumerate(zip(nets, folders)):
        _write_run(folder, net, sources[i], ctx, result, i)
    atomic_write_json(root / KEY_FILE, {"key": key, "paths": [str(f) for f in folders],
                                        "seconds": result.seconds})  # fmt: skip
    r.say(
        f"  trained jointly in {result.seconds:.0f} s; validation top-1 per path (largest first): "
        + ", ".join(f"{v}%" for v in result.val)
    )
    return folders


def _write_run(folder: Path, net: AssembledNet, source: FinetuneSource, ctx: Context, res: JointResult, i: int):
    """A path's run folder as a fine-tune writes it: config.json, checkpoint.safetensors, metrics.json."""
    from dery_deploy.artifacts import make_output_dir

    recipe, teacher = ctx.recipes.final, ctx.teacher if ctx.recipes.final.distill else None
    cfg = RunConfig.of(source, ctx.zoo, ctx.task, recipe, 1, teacher)
    make_output_dir(folder, "run folder", "family")
    atomic_write_json(folder / "config.json", cfg.to_dict())
    start = res.starts[i]
    last = res.history[-1]
    meta = CheckpointMeta(last.epoch, last.phase, res.history, cfg.to_dict(), True, start.probe_acc,
                          start.seam_matching)  # fmt: skip
    save_checkpoint(folder, net, None, meta)
    phase1 = sum(1 for h in res.history if h.phase == 1)
    metrics = FinetuneMetrics(
        val_accuracy=res.val[i],
        kept="end to end (trained jointly with the family's other paths)",
        test_accuracy=None,
        phase1_val_accuracy=res.phase1_val[i],
        phase1_test_accuracy=None,
        phase1_epochs=phase1,
        probe_train_accuracy=start.probe_acc,
        seam_matching=start.seam_matching,
        epochs=len(res.history),
        history=res.history,
        device="cpu",
        params_m=round(sum(p.numel() for p in net.parameters()) / 1e6, 4),
        world_size=1,
        train_seconds=res.seconds,
    )
    atomic_write_json(folder / "metrics.json", metrics.to_dict())
