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
from dery_deploy.data.task import TaskData, augment
from dery_deploy.errors import DeryError

SCHEMA = 1
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


def build_model(source: dict, zoo, dissections=None, num_classes: int = 10) -> nn.Module:
    """The network a run trains: an AssembledNet from a plan, or a donor with a new head."""
    if "plan" in source:
        from dery_deploy.assemble.plan import Plan, build_net
        from dery_deploy.partition.stage import dissect_zoo

        plan = Plan.from_dict(source["plan"])
        return build_net(plan, zoo, dissections or dissect_zoo(zoo))
    from dery_deploy.zoo.load import load_donor

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
        opt, lambda s: (s + 1) / w if s < w else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - w) / max(1, steps - w)))))
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
            (model if k.startswith("model.") else optim)[k.split(".", 1)[1] if k.startswith("model.") else k] = f.get_tensor(k)
    return model, optim, meta


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> tuple[float, torch.Tensor]:
    """Top-1 (%) and the predictions, eval mode."""
    model.eval()
    dev = next(model.parameters()).device
    preds = torch.cat([model(x[i:i + batch].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch)])
    return 100.0 * float((preds == y).float().mean()), preds


def run_config(source: dict, zoo, data: TaskData, recipe: Recipe, world: int) -> dict:
    return {"schema": SCHEMA, "kind": KIND, "source": source, "zoo": zoo.name, "zoo_ref": zoo.ref, "zoo_hash": zoo.hash(), "data": data.name,
            "num_classes": data.num_classes, "classes": data.classes, "recipe": asdict(recipe), "world_size": world}


def finetune(source: dict, zoo, data: TaskData, recipe: Recipe, run: Path, force: bool = False, resume: bool = True,
             progress: bool = True, log=print, test: bool = True, eval_phase1: bool = False) -> dict:
    """Train and write run/: config.json, checkpoint.safetensors, history.json, metrics.json."""
    recipe.check()
    rank, world = dist_info()
    if recipe.batch % world:
        raise DeryError(f"batch {recipe.batch} is not divisible by the {world} processes", "finetune")
    cfg = run_config(source, zoo, data, recipe, world)
    run = Path(run)
    start_epoch, history = 0, []
    if run.exists() and any(run.iterdir()):
        cfg_path = run / "config.json"
        old = read_json_artifact(cfg_path, KIND, SCHEMA, "finetune") if cfg_path.is_file() else None
        same = old is not None and {k: v for k, v in old.items() if k != "world_size"} == \
            {k: v for k, v in cfg.items() if k != "world_size"}
        if force:
            pass
        elif same and resume and (run / "checkpoint.safetensors").is_file():
            start_epoch = -1  # resume below
        elif same and (run / "metrics.json").is_file():
            return json.loads((run / "metrics.json").read_text())
        else:
            raise DeryError(f"output directory {run} exists and holds another run; pass --force to overwrite it or "
                            "choose a new -o", "finetune")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.manual_seed(recipe.seed)
    model = build_model(source, zoo, num_classes=data.num_classes)
    # one GPU per process under torchrun (LOCAL_RANK), else the CPU
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if "plan" in source and source.get("adapter_weights"):
        from safetensors.torch import load_file

        from dery_deploy.assemble.plan import load_stitch_weights

        load_stitch_weights(model, load_file(source["adapter_weights"]))
    ckpt = None
    if start_epoch == -1:
        msd, osd, meta = load_checkpoint(run)
        model.load_state_dict(msd)
        start_epoch, history, ckpt = meta["epoch"] + 1, meta["history"], (osd, meta)
    model.to(device)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", cfg)
    n = len(data.train_y)
    steps_per_epoch = max(1, math.ceil(n / recipe.batch))
    total_epochs = recipe.epochs_adapter + recipe.epochs_full
    flip = data.kind == "fashion-mnist" or data.kind == "folder"
    t0 = time.time()
    opt = sched = None
    phase_now = None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                   disable=not (progress and rank == 0), transient=True)
    with bar:
        task = bar.add_task("finetune", total=total_epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch,
                            stats="")
        for epoch in range(start_epoch, total_epochs):
            phase = 1 if epoch < recipe.epochs_adapter else 2
            if phase != phase_now:
                params = _set_phase(model.module if hasattr(model, "module") else model, phase)
                e0, e1 = (0, recipe.epochs_adapter) if phase == 1 else (recipe.epochs_adapter, total_epochs)
                opt, sched = _optimizer(params, recipe.lr if phase == 1 else recipe.lr_full, recipe.weight_decay,
                                        (e1 - e0) * steps_per_epoch, recipe.warmup_frac)
                if ckpt is not None and ckpt[1]["phase"] == phase:
                    _unflat_optimizer(opt, ckpt[0], ckpt[1]["optimizer"])
                for _ in range((epoch - e0) * steps_per_epoch):
                    sched.step()
                ckpt = None
                if world > 1:
                    base = model.module if hasattr(model, "module") else model
                    model = torch.nn.parallel.DistributedDataParallel(base, device_ids=[device] if device.type == "cuda" else None)
                phase_now = phase
            else:
                _set_phase(model.module if hasattr(model, "module") else model, phase)
            g = torch.Generator().manual_seed(recipe.seed * 100003 + epoch)
            perm = torch.randperm(n, generator=g)
            loss_sum, correct, seen = 0.0, 0, 0
            for s in range(steps_per_epoch):
                idx = perm[s * recipe.batch:(s + 1) * recipe.batch]
                xb = augment(data.train_x[idx], g, flip=flip)
                yb = data.train_y[idx]
                xb, yb = xb[rank::world].to(device), yb[rank::world].to(device)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(yb)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
                bar.update(task, advance=1, description=f"phase {phase} epoch {epoch + 1}/{total_epochs}",
                           stats=f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}%")
            history.append({"epoch": epoch, "phase": phase, "loss": round(loss_sum / seen, 5),
                            "train_acc": round(100 * correct / seen, 3), "seconds": round(time.time() - t0, 2)})
            if eval_phase1 and rank == 0 and epoch == recipe.epochs_adapter - 1:
                # adapters + head only: DeRy's "stitching layers trained" setting, before end-to-end tuning
                history[-1]["test_acc"] = round(accuracy(model.module if hasattr(model, "module") else model,
                                                         data.test_x, data.test_y)[0], 3)
                _set_phase(model.module if hasattr(model, "module") else model, phase)
            if rank == 0:
                save_checkpoint(run, model, opt, {"epoch": epoch, "phase": phase, "history": history, "config": cfg})
            if log and rank == 0:
                log(f"epoch {epoch + 1}/{total_epochs} phase {phase}: loss {loss_sum / seen:.4f}, train acc {100 * correct / seen:.1f}%")
    base = model.module if hasattr(model, "module") else model
    metrics = {}
    if rank == 0:
        test_acc = round(accuracy(base, data.test_x, data.test_y)[0], 3) if test else None
        phase1 = [h["test_acc"] for h in history if "test_acc" in h]
        metrics = {"test_accuracy": test_acc, "phase1_test_accuracy": phase1[-1] if phase1 else None, "epochs": total_epochs, "history": history,
                   "params_m": round(sum(p.numel() for p in base.parameters()) / 1e6, 4), "world_size": world,
                   "train_seconds": round(time.time() - t0, 2)}
        atomic_write_json(run / "metrics.json", metrics)
        atomic_write_json(run / "history.json", history)
    if world > 1:
        torch.distributed.barrier()
    return metrics


def load_run_model(run: Path, zoo=None) -> tuple[nn.Module, dict]:
    """The trained network of a run directory, with its config."""
    from dery_deploy.zoo.load import get_zoo

    run = Path(run)
    cfg = read_json_artifact(run / "config.json", KIND, SCHEMA, "finetune")
    if not (run / "checkpoint.safetensors").is_file():
        raise DeryError(f"{run} has no checkpoint.safetensors; run `dery finetune` into it first", "finetune")
    zoo = zoo or get_zoo(cfg.get("zoo_ref", cfg["zoo"]))
    if zoo.hash() != cfg["zoo_hash"]:
        raise DeryError(f"run {run} was trained on zoo {cfg['zoo']!r} {cfg['zoo_hash']}, but the zoo is now {zoo.hash()} "
                        "(weights or spec changed)", "finetune")
    try:
        model = build_model(cfg["source"], zoo, num_classes=cfg["num_classes"])
        msd, _, _ = load_checkpoint(run)
        model.load_state_dict(msd)
    except DeryError as e:
        raise DeryError(f"the checkpoint's plan in {run} fails to rebuild: {e}", "export") from None
    except RuntimeError as e:
        raise DeryError(f"the checkpoint in {run} does not fit its plan ({str(e).splitlines()[0]})", "export") from None
    return model.eval(), cfg
