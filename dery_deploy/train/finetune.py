"""Fine-tuning in two phases: adapters and head only (blocks frozen), then end to end with a
lower learning rate. AdamW, cosine schedule with warm-up, label smoothing, light augmentation.
Checkpoints (safetensors, plan embedded) after every epoch; a run resumes from its last one.

The same entry point runs single-process or under `torchrun --nproc_per_node N` (DDP, gloo on CPU,
nccl on CUDA): every rank walks the same seeded permutation and takes its slice of each global
batch, so the global batch, and hence the result, is the same as a single process's.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dery_deploy.artifacts import atomic_write_json, atomic_write_with, read_json_artifact
from dery_deploy.data.task import Task
from dery_deploy.errors import DeryError
from dery_deploy.network.plan import Plan, build_net, load_stitch_weights
from dery_deploy.zoo.load import dissect_zoo, get_zoo, load_donor

SCHEMA = 2
KIND = "finetune-run"


@dataclass
class Recipe:
    epochs_adapter: int = 4
    epochs_full: int = 6
    lr: float = 3e-3
    lr_full: float = 5e-4
    batch: int = 64
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_frac: float = 0.1
    seed: int = 0

    def check(self) -> None:
        bad = []
        if self.epochs_adapter < 0 or self.epochs_full < 0 or self.epochs_adapter + self.epochs_full == 0:
            bad.append(f"epochs must be >= 0 and not both 0 (got {self.epochs_adapter}, {self.epochs_full})")
        if self.batch <= 0:
            bad.append(f"batch must be > 0, got {self.batch}")
        if not (self.lr > 0 and self.lr_full > 0):
            bad.append(f"learning rates must be > 0, got {self.lr}, {self.lr_full}")
        if bad:
            raise DeryError("; ".join(bad), "finetune")


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


def init_distributed(device: torch.device) -> None:
    """One process group for torchrun: NCCL with one GPU per process, else gloo (CPU processes)."""
    if torch.distributed.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the NCCL init, so every collective uses this rank's GPU
        torch.distributed.init_process_group("nccl", device_id=device)
    else:
        torch.distributed.init_process_group("gloo")


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


def _optimizer(params, lr: float, wd: float, steps: int, warmup: float):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    w = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / w if s < w else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - w) / max(1, steps - w))))
    )
    return opt, sched


def _flat_optimizer(opt) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{idx}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _unflat_optimizer(opt, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run: Path, model: nn.Module, opt, meta: dict) -> None:
    from safetensors.torch import save_file

    base = model.module if hasattr(model, "module") else model
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in base.state_dict().items()}
    otensors, ometa = _flat_optimizer(opt)
    tensors.update(otensors)
    metadata = {"meta": json.dumps({**meta, "optimizer": ometa})}
    atomic_write_with(run / "checkpoint.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_checkpoint(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    path = run / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        model, optim = {}, {}
        for k in f.keys():
            (model if k.startswith("model.") else optim)[k.split(".", 1)[1] if k.startswith("model.") else k] = (
                f.get_tensor(k)
            )
    return model, optim, meta


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


def run_config(source: dict, zoo, task: Task, recipe: Recipe, world: int) -> dict:
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
) -> dict:
    """Train and write run/: config.json, checkpoint.safetensors, history.json, metrics.json.

    A run folder holding the same configuration is resumed from its last checkpoint (or returned
    when finished); one holding another configuration is refused unless `force`.
    """
    recipe.check()
    rank, world = dist_info()
    if recipe.batch % world:
        raise DeryError(f"batch {recipe.batch} is not divisible by the {world} processes", "finetune")
    cfg = run_config(source, zoo, task, recipe, world)
    run = Path(run)
    start_epoch, history = 0, []
    if run.exists() and any(run.iterdir()):
        cfg_path = run / "config.json"
        try:
            old = read_json_artifact(cfg_path, KIND, SCHEMA, "finetune") if cfg_path.is_file() else None
        except DeryError:
            old = None
        same = _same_run(old, cfg)
        if force and not same:
            for f in ("checkpoint.safetensors", "metrics.json", "history.json", "evaluation.json"):
                (run / f).unlink(missing_ok=True)
        elif same and (run / "metrics.json").is_file():
            return json.loads((run / "metrics.json").read_text())
        elif same and resume and (run / "checkpoint.safetensors").is_file():
            start_epoch = -1  # resume below
        elif not same:
            raise DeryError(
                f"output directory {run} exists and holds another run; pass --force to overwrite it or choose a new -o",
                "finetune",
            )
    dev = train_device(device)
    if world > 1:
        init_distributed(dev)
    torch.manual_seed(recipe.seed)
    model = build_model(source, zoo, num_classes=task.num_classes)
    if "plan" in source and source.get("adapter_weights"):
        from safetensors.torch import load_file

        load_stitch_weights(model, load_file(source["adapter_weights"]))
    ckpt = None
    if start_epoch == -1:
        msd, osd, meta = load_checkpoint(run)
        model.load_state_dict(msd)
        start_epoch, history, ckpt = meta["epoch"] + 1, meta["history"], (osd, meta)
    model.to(dev)
    if rank == 0:
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DeryError(
                f"cannot create the run folder {run} ({e.strerror}); choose a writable -o", "finetune"
            ) from None
        atomic_write_json(run / "config.json", cfg)
    n = len(task.train)
    steps_per_epoch = max(1, math.ceil(n / recipe.batch))
    total_epochs = recipe.epochs_adapter + recipe.epochs_full
    t0 = time.time()
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
    unwrap = lambda m: m.module if hasattr(m, "module") else m  # noqa: E731
    with bar:
        bar_task = bar.add_task(
            "finetune", total=total_epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch, stats=""
        )
        for epoch in range(start_epoch, total_epochs):
            phase = 1 if epoch < recipe.epochs_adapter else 2
            if phase != phase_now:
                params = _set_phase(unwrap(model), phase)
                e0, e1 = (0, recipe.epochs_adapter) if phase == 1 else (recipe.epochs_adapter, total_epochs)
                opt, sched = _optimizer(
                    params,
                    recipe.lr if phase == 1 else recipe.lr_full,
                    recipe.weight_decay,
                    (e1 - e0) * steps_per_epoch,
                    recipe.warmup_frac,
                )
                if ckpt is not None and ckpt[1]["phase"] == phase:
                    _unflat_optimizer(opt, ckpt[0], ckpt[1]["optimizer"])
                for _ in range((epoch - e0) * steps_per_epoch):
                    sched.step()
                ckpt = None
                if world > 1:
                    model = torch.nn.parallel.DistributedDataParallel(
                        unwrap(model), device_ids=[dev] if dev.type == "cuda" else None
                    )
                phase_now = phase
            else:
                _set_phase(unwrap(model), phase)
            g = torch.Generator().manual_seed(recipe.seed * 100003 + epoch)
            perm = torch.randperm(n, generator=g)
            loss_sum, correct, seen = 0.0, 0, 0
            for s in range(steps_per_epoch):
                idx = perm[s * recipe.batch : (s + 1) * recipe.batch]
                xb = task.normalize(augment(task.train.images[idx], g))
                yb = task.train.labels[idx]
                xb, yb = xb[rank::world].to(dev), yb[rank::world].to(dev)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=recipe.label_smoothing)
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
            history.append(
                {
                    "epoch": epoch,
                    "phase": phase,
                    "loss": round(loss_sum / seen, 5),
                    "train_acc": round(100 * correct / seen, 3),
                    "seconds": round(time.time() - t0, 2),
                }
            )
            if eval_phase1 and rank == 0 and epoch == recipe.epochs_adapter - 1:
                # adapters + head only: DeRy's "stitching layers trained" setting, before end-to-end tuning
                history[-1]["val_acc"] = round(accuracy(unwrap(model), task.x("val"), task.y("val"))[0], 3)
                history[-1]["test_acc"] = round(accuracy(unwrap(model), task.x("test"), task.y("test"))[0], 3)
                _set_phase(unwrap(model), phase)
            if rank == 0:
                save_checkpoint(run, model, opt, {"epoch": epoch, "phase": phase, "history": history, "config": cfg})
            if log and rank == 0:
                log(
                    f"epoch {epoch + 1}/{total_epochs} phase {phase}: loss {loss_sum / seen:.4f}, "
                    f"train acc {100 * correct / seen:.1f}%"
                )
    base = unwrap(model)
    metrics = {}
    if rank == 0:
        phase1 = [h for h in history if "val_acc" in h]
        metrics = {
            "val_accuracy": round(accuracy(base, task.x("val"), task.y("val"))[0], 3) if len(task.val) else None,
            "test_accuracy": round(accuracy(base, task.x("test"), task.y("test"))[0], 3) if test else None,
            "phase1_val_accuracy": phase1[-1]["val_acc"] if phase1 else None,
            "phase1_test_accuracy": phase1[-1]["test_acc"] if phase1 else None,
            "epochs": total_epochs,
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
    return metrics


def load_run_model(run: Path, zoo=None) -> tuple[nn.Module, dict]:
    """The trained network of a run directory (on the CPU, eval mode), with its config."""
    run = Path(run)
    cfg = read_json_artifact(run / "config.json", KIND, SCHEMA, "finetune")
    if not (run / "checkpoint.safetensors").is_file():
        raise DeryError(f"{run} has no checkpoint.safetensors; run `dery finetune` into it first", "finetune")
    zoo = zoo or get_zoo(cfg.get("zoo_ref", cfg["zoo"]))
    if zoo.hash() != cfg["zoo_hash"]:
        raise DeryError(
            f"run {run} was trained on zoo {cfg['zoo']!r} {cfg['zoo_hash']}, but the zoo is now {zoo.hash()} "
            "(weights or spec changed)",
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
