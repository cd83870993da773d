"""Fine-tuning in two phases: adapters and head only (blocks frozen) until their loss plateaus, then
end to end, the adapters and head learning faster than the borrowed blocks. The head starts as a
linear probe on the labels (LP-FT); with a teacher, each step also distils it on unlabelled images.
AdamW, label smoothing, light augmentation. Checkpoints (safetensors, plan embedded) after every
epoch; a run resumes from its last one.

The same entry point runs single-process or under `torchrun --nproc_per_node N` (DDP, gloo on CPU,
nccl on CUDA): every rank walks the same seeded permutation and takes its slice of each global
batch, so the global batch, and hence the result, is the same as a single process's.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dery_deploy.artifacts import atomic_write_json, make_output_dir, read_json_artifact
from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.network.plan import Plan, build_net, load_stitch_weights
from dery_deploy.train.checkpoint import load_checkpoint, load_weights, restore_optimizer, save_checkpoint, save_weights
from dery_deploy.train.head_init import fit_head
from dery_deploy.train.heal import match_seams
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.teacher import Teacher
from dery_deploy.zoo.load import dissect_zoo, get_zoo, load_donor

SCHEMA = 3
KIND = "finetune-run"

__all__ = ["Recipe", "finetune", "load_run_model", "load_checkpoint", "accuracy", "build_model", "train_device"]


def dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def train_device(requested: str | None = None) -> torch.device:
    """Where this process trains: `requested` (cpu | cuda), else $DERY_DEVICE, else the GPU of this
    process's rank under torchrun (LOCAL_RANK) when there is one, else the CPU."""
    want = requested or os.environ.get("DERY_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if want not in ("cpu", "cuda"):
        raise DeryError(f"--device must be cpu or cuda, got {want!r}", "finetune")
    if want == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeryError("--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu", "finetune")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local >= torch.cuda.device_count():
        raise DeryError(
            f"process {local} of torchrun has no GPU of its own ({torch.cuda.device_count()} visible): run "
            f"--nproc_per_node {torch.cuda.device_count()} or fewer, or train on the CPU (--device cpu)",
            "finetune",
        )
    return torch.device("cuda", local)


def init_distributed(device: torch.device) -> bool:
    """One process group for torchrun: NCCL with one GPU per process, else gloo (CPU processes).
    Returns whether this call created it (and so must destroy it); a caller's own group is left alone."""
    if torch.distributed.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the NCCL init, so every collective uses this rank's GPU
        torch.distributed.init_process_group("nccl", device_id=device)
    else:
        torch.distributed.init_process_group("gloo")
    return True


def global_sums(values: list[float], world: int, device: torch.device) -> list[float]:
    """Sums over all processes of per-process sums (loss, correct, seen, ...). Every rank must take a
    decision on the same numbers: a plateau judged on each rank's own shard made ranks disagree, and one
    rebuilt its DDP wrapper while the others were still all-reducing gradients (a hang)."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def start_model(source: dict, zoo, dissections=None, num_classes: int = 10) -> nn.Module:
    """The network training starts from: built from `source`, with its fitted adapters and head
    (`adapter_weights`) and, where given, a whole start state (`start_weights`: selection's seam-matched
    start, shared by its folds)."""
    from safetensors.torch import load_file

    model = build_model(source, zoo, dissections, num_classes=num_classes)
    if "plan" in source and source.get("adapter_weights"):
        load_stitch_weights(model, load_file(source["adapter_weights"]))
    if source.get("start_weights"):
        model.load_state_dict(load_file(source["start_weights"]))
    return model


def build_model(source: dict, zoo, dissections=None, num_classes: int = 10) -> nn.Module:
    """The network a run trains: an AssembledNet from a plan, or a donor with a new head."""
    if "plan" in source:
        return build_net(Plan.from_dict(source["plan"]), zoo, dissections or dissect_zoo(zoo))
    model = load_donor(zoo, source["donor"])
    model.reset_classifier(num_classes)
    return model


def stitch_params(model: nn.Module) -> list[nn.Parameter]:
    """What phase 1 trains: adapters + head of an AssembledNet, or a donor's classifier."""
    if hasattr(model, "stitch_parameters"):
        return model.stitch_parameters()
    return list(model.get_classifier().parameters())


def _set_phase(model: nn.Module, phase: int) -> list[nn.Parameter]:
    """Phase 1 trains the stitch (adapters + head) only; phase 2 everything. Returns what trains."""
    train = set(map(id, stitch_params(model))) if phase == 1 else None
    params = []
    for p in model.parameters():
        p.requires_grad_(train is None or id(p) in train)
        if p.requires_grad:
            params.append(p)
    model.train()
    if phase == 1:  # frozen blocks keep their BN statistics
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
    return params


def _optimizer(model: nn.Module, phase: int, recipe: Recipe, steps: int):
    """AdamW for the phase. Phase 1: linear warm-up, then constant (it ends at a plateau, not at a
    step count). Phase 2: warm-up, then cosine; the stitch learns `stitch_lr_scale` times faster."""
    params = _set_phase(model, phase)
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


def run_config(source: dict, zoo, task: Task, recipe: Recipe, world: int, teacher: Teacher | None = None) -> dict:
    return {
        "schema": SCHEMA,
        "kind": KIND,
        "source": source,
        "zoo": zoo.name,
        "zoo_ref": zoo.ref,
        "zoo_hash": zoo.hash(),
        "data": task.spec,
        "task_hash": task.hash(),
        "num_classes": task.num_classes,
        "classes": task.classes,
        "recipe": asdict(recipe),
        "teacher": teacher.describe() if teacher else None,
        "world_size": world,
    }


def _same_run(old: dict | None, new: dict) -> bool:
    drop = ("world_size",)
    return old is not None and {k: v for k, v in old.items() if k not in drop} == {
        k: v for k, v in new.items() if k not in drop
    }


def finetune(
    source: dict,
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
) -> dict:
    """Train and write run/: config.json, checkpoint.safetensors, history.json, metrics.json.

    A run folder holding the same configuration is resumed from its last checkpoint (or returned
    when finished); one holding another configuration is refused unless `force`.
    """
    recipe.check()
    if recipe.distill and teacher is None:
        raise DeryError("the recipe distils (distill > 0) but no teacher was given", "finetune")
    rank, world = dist_info()
    if recipe.batch % world:
        raise DeryError(f"batch {recipe.batch} is not divisible by the {world} processes", "finetune")
    cfg = run_config(source, zoo, task, recipe, world, teacher if recipe.distill else None)
    run = Path(run)
    history: list[dict] = []
    resume_from = None
    if run.exists() and not run.is_dir():
        raise DeryError(f"{run} is a file, not a run folder: choose another -o", "finetune")
    if run.exists() and any(run.iterdir()):
        cfg_path = run / "config.json"
        try:
            old = read_json_artifact(cfg_path, KIND, SCHEMA, "finetune") if cfg_path.is_file() else None
        except DeryError:
            old = None
        same = _same_run(old, cfg)
        if force and not same:
            for f in ("checkpoint.safetensors", PHASE1_WEIGHTS, "metrics.json", "history.json", "evaluation.json"):
                (run / f).unlink(missing_ok=True)
        elif same and (run / "metrics.json").is_file():
            return json.loads((run / "metrics.json").read_text())
        elif same and resume and (run / "checkpoint.safetensors").is_file():
            resume_from = load_checkpoint(run)
        elif not same:
            raise DeryError(
                f"output directory {run} exists and holds another run; pass --force to overwrite it or choose a new -o",
                "finetune",
            )
    dev = train_device(device)
    owns_group = init_distributed(dev) if world > 1 else False
    torch.manual_seed(recipe.seed)
    dissections = dissect_zoo(zoo) if "plan" in source else None
    model = start_model(source, zoo, dissections, task.num_classes)
    probe_acc, seam_matching = None, []
    phase1_done = recipe.epochs_adapter == 0
    if resume_from is not None:
        msd, osd, meta = resume_from
        model.load_state_dict(msd)
        history, phase1_done, probe_acc = meta["history"], meta["phase1_done"], meta.get("probe_acc")
        seam_matching = meta.get("seam_matching", [])
    model.to(dev)  # before healing and the probe, so that both run where training does
    if resume_from is None:
        if recipe.match_epochs and "plan" in source:
            seam_matching = match_seams(
                model,
                Plan.from_dict(source["plan"]),
                dissections,
                task,
                recipe.match_epochs,
                recipe.match_images,
                seed=recipe.seed,
                device=dev,
            )
        if recipe.head_init == "probe":
            probe_acc = fit_head(model, task.x("train"), task.y("train"), task.num_classes)
    if rank == 0:
        make_output_dir(run, "run folder", "finetune")
        atomic_write_json(run / "config.json", cfg)
    n = len(task.train)
    steps = max(1, math.ceil(n / recipe.batch))
    per_step_u = math.ceil(recipe.distill_images / steps) if recipe.distill else 0
    t0 = time.time()
    unwrap = lambda m: m.module if hasattr(m, "module") else m  # noqa: E731
    opt = sched = None
    phase_now = None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
        disable=not (progress and rank == 0),
        transient=True,
    )
    total_epochs = recipe.epochs_adapter + recipe.epochs_full

    def checkpoint_meta(epoch: int, phase: int, p1_done: bool) -> dict:
        return {
            "epoch": epoch,
            "phase": phase,
            "history": history,
            "config": cfg,
            "phase1_done": p1_done,
            "probe_acc": probe_acc,
            "seam_matching": seam_matching,
        }

    with bar:
        bar_task = bar.add_task("finetune", total=total_epochs * steps, completed=len(history) * steps, stats="")
        while True:
            p1 = sum(1 for h in history if h["phase"] == 1)
            p2 = len(history) - p1
            if not phase1_done and p1 >= recipe.epochs_adapter:
                phase1_done = True
            if phase1_done and p2 >= recipe.epochs_full:
                break
            phase = 2 if phase1_done else 1
            epoch = len(history)
            if phase != phase_now:
                if world > 1 and hasattr(model, "module"):
                    model = unwrap(model)
                opt, sched = _optimizer(model, phase, recipe, (recipe.epochs_full if phase == 2 else 1) * steps)
                if resume_from is not None and resume_from[2]["phase"] == phase:
                    restore_optimizer(opt, resume_from[1], resume_from[2]["optimizer"])
                    for _ in range((p2 if phase == 2 else p1) * steps):
                        sched.step()
                resume_from = None
                if world > 1:
                    model = torch.nn.parallel.DistributedDataParallel(
                        model, device_ids=[dev] if dev.type == "cuda" else None
                    )
                phase_now = phase
            else:
                _set_phase(unwrap(model), phase)
            g = torch.Generator().manual_seed(recipe.seed * 100003 + epoch)
            perm = torch.randperm(n, generator=g)
            u_perm = torch.randperm(len(teacher.images), generator=g) if per_step_u else None
            loss_sum, kd_sum, correct, seen = 0.0, 0.0, 0, 0
            for s in range(steps):
                idx = perm[s * recipe.batch : (s + 1) * recipe.batch]
                xb = task.normalize(augment(task.train.images[idx], g))[rank::world].to(dev)
                yb = task.train.targets[idx][rank::world].to(dev)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=recipe.label_smoothing)
                if per_step_u:
                    u = u_perm[(s * per_step_u) % len(u_perm) :][:per_step_u]
                    xu = task.normalize(teacher.images[u])[rank::world].to(dev)
                    tu = teacher.logits[u][rank::world].to(dev)
                    T = recipe.temperature
                    kd = F.kl_div(F.log_softmax(model(xu) / T, 1), F.softmax(tu / T, 1), reduction="batchmean") * T * T
                    loss = (1 - recipe.distill) * loss + recipe.distill * kd
                    kd_sum += kd.item() * len(yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(yb)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
                bar.update(
                    bar_task,
                    advance=1,
                    description=f"phase {phase} epoch {epoch + 1}/{total_epochs}",
                    stats=f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}%",
                )
            loss_sum, kd_sum, correct, seen = global_sums([loss_sum, kd_sum, correct, seen], world, dev)
            rec = {
                "epoch": epoch,
                "phase": phase,
                "loss": round(loss_sum / seen, 5),
                "train_acc": round(100 * correct / seen, 3),
                "seconds": round(time.time() - t0, 2),
            }
            if per_step_u:
                rec["distill_loss"] = round(kd_sum / seen, 5)
            history.append(rec)
            if phase == 1:
                prev = [h["loss"] for h in history if h["phase"] == 1]
                if recipe.plateau and len(prev) >= 2 and (prev[-2] - prev[-1]) < recipe.plateau * prev[-2]:
                    phase1_done, rec["plateau"] = True, True
                ends = phase1_done or len(prev) >= recipe.epochs_adapter
                if rank == 0 and ends and len(task.val):
                    # adapters + head only: DeRy's "stitching layers trained" setting, before end-to-end tuning;
                    # kept on disk in case end-to-end tuning ends worse on validation
                    rec["val_acc"] = round(accuracy(unwrap(model), task.x("val"), task.y("val"))[0], 3)
                    save_weights(run / PHASE1_WEIGHTS, model)
                    if eval_phase1:
                        rec["test_acc"] = round(accuracy(unwrap(model), task.x("test"), task.y("test"))[0], 3)
            if rank == 0:
                save_checkpoint(run, model, opt, checkpoint_meta(epoch, phase, phase1_done))
            if log and rank == 0:
                log(
                    f"epoch {epoch + 1} phase {phase}: loss {loss_sum / seen:.4f}, "
                    f"train acc {100 * correct / seen:.1f}%" + (" (phase 1 plateaued)" if rec.get("plateau") else "")
                )
    base = unwrap(model)
    metrics: dict = {}
    if rank == 0:
        phase1 = [h for h in history if "val_acc" in h]
        val = task.x("val")
        val_acc = round(accuracy(base, val, task.y("val"))[0], 3) if len(val) else None
        kept = "end to end"
        if val_acc is not None and phase1 and val_acc < phase1[-1]["val_acc"] and (run / PHASE1_WEIGHTS).is_file():
            # end-to-end tuning lowered validation accuracy: ship the network as phase 1 left it
            kept = f"phase 1 (end to end lowered validation {phase1[-1]['val_acc']:.2f}% -> {val_acc:.2f}%)"
            base.load_state_dict(load_weights(run / PHASE1_WEIGHTS))
            save_checkpoint(run, base, opt, checkpoint_meta(len(history) - 1, history[-1]["phase"], True))
            val_acc = phase1[-1]["val_acc"]
            if log:
                log(f"kept the {kept}")
        metrics = {
            "val_accuracy": val_acc,
            "kept": kept,
            "test_accuracy": round(accuracy(base, task.x("test"), task.y("test"))[0], 3) if test else None,
            "phase1_val_accuracy": phase1[-1]["val_acc"] if phase1 else None,
            "phase1_test_accuracy": phase1[-1].get("test_acc") if phase1 else None,
            "phase1_epochs": sum(1 for h in history if h["phase"] == 1),
            "probe_train_accuracy": probe_acc,
            "seam_matching": seam_matching,
            "epochs": len(history),
            "history": history,
            "device": str(dev),
            "params_m": round(sum(p.numel() for p in base.parameters()) / 1e6, 4),
            "world_size": world,
            "train_seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(run / "metrics.json", metrics)
        atomic_write_json(run / "history.json", history)
    if world > 1:
        torch.distributed.barrier()
        if owns_group:
            torch.distributed.destroy_process_group()
    return metrics


PHASE1_WEIGHTS = "phase1.safetensors"


def load_run_model(run: Path, zoo=None) -> tuple[nn.Module, dict]:
    """The trained network of a run directory (on the CPU, eval mode), with its config."""
    run = Path(run)
    if run.is_file():
        raise DeryError(
            f"{run} is a file, not a run folder"
            + (f": fine-tune it first (dery finetune {run} -o RUN/)" if run.suffix == ".json" else ""),
            "finetune",
        )
    cfg = read_json_artifact(run / "config.json", KIND, SCHEMA, "finetune")
    if not (run / "checkpoint.safetensors").is_file():
        raise DeryError(f"{run} has no checkpoint.safetensors; run `dery finetune` into it first", "finetune")
    zoo = zoo or get_zoo(cfg.get("zoo_ref", cfg["zoo"]))
    if zoo.hash() != cfg["zoo_hash"]:
        raise DeryError(
            f"run {run} was trained on zoo {cfg['zoo']!r} {cfg['zoo_hash']}, but the zoo is now {zoo.hash()} "
            f"(weights or spec changed): restore {cfg.get('zoo_ref', cfg['zoo'])} as it was, or fine-tune again",
            "finetune",
        )
    try:
        model = build_model(cfg["source"], zoo, num_classes=cfg["num_classes"])
        msd, _, _ = load_checkpoint(run)
        model.load_state_dict(msd)
    except DeryError as e:
        raise DeryError(f"the checkpoint's plan in {run} fails to rebuild: {e}", "export") from None
    except RuntimeError as e:
        raise DeryError(f"the checkpoint in {run} does not fit its plan ({str(e).splitlines()[0]})", "export") from None
    return model.eval(), cfg
