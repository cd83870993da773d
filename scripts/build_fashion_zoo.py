#!/usr/bin/env python3
"""Train the embedded `fashion` zoo: every donor of dery_deploy/zoo/embedded/fashion/zoo.yaml on
its own source task, seeded; weights saved as fp16 safetensors with a manifest (sha256, command,
seed, source task, source-task test accuracy measured on the saved weights).

    python scripts/build_fashion_zoo.py                 # all donors (about 15-20 min on 2 CPU cores)
    python scripts/build_fashion_zoo.py --only vit_tops --epochs 3

Re-running retrains only what --only names (or everything), keeping the other manifest entries.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dery_deploy.artifacts import atomic_write_json, atomic_write_with, sha256_file  # noqa: E402
from dery_deploy.data.fashion_mnist import preprocess  # noqa: E402
from dery_deploy.zoo.load import EMBEDDED_DIR, create_model, manifest  # noqa: E402
from dery_deploy.zoo.source_tasks import accuracy, fixed_subset, task_data  # noqa: E402
from dery_deploy.zoo.spec import load_zoo_file  # noqa: E402

TOPS, LOWER = [0, 2, 3, 4, 6], [1, 5, 7, 8, 9]
# The source task of every donor (the zoo YAML says the same in words).
TASKS = {
    "resnet10t_tops": {"type": "supervised", "classes": TOPS},
    "convnext_lower": {"type": "supervised", "classes": LOWER},
    "mnv3_rot": {"type": "rotation"},
    "vit_tops": {"type": "supervised", "classes": TOPS},
    "mobilevit_lower": {"type": "supervised", "classes": LOWER},
    "tinynet_rot": {"type": "rotation"},
}
# Transformers train less stably at the CNNs' learning rate on this little data, and need more epochs.
LR_SCALE = {"vit_tops": 0.5}
EPOCHS = {"vit_tops": 10}


def augment(images: torch.Tensor, rotation: bool, g: torch.Generator) -> torch.Tensor:
    """Random translation (pad 28->32 at a random offset, +-2 px) and, unless the task is
    rotation, a horizontal flip."""
    n = images.shape[0]
    x = preprocess(images, size=36)  # 4 px margin each side, then a random 32x32 crop
    ox, oy = torch.randint(0, 5, (2,), generator=g).tolist()
    x = x[:, :, oy : oy + 32, ox : ox + 32]
    if not rotation:
        flip = torch.rand(n, generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
    return x


def train_donor(zoo, name: str, epochs: int, per_epoch: int, batch: int, lr: float, seed: int) -> dict:
    donor = zoo.donor(name)
    task = TASKS[name]
    torch.manual_seed(seed)
    model = create_model(donor, zoo.input.channels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(per_epoch / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    step = 0
    for epoch in range(epochs):
        images, targets = task_data(task, "train", seed=seed + epoch)
        order = torch.randperm(len(images), generator=g)[:per_epoch]
        model.train()
        running = 0.0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x = augment(images[idx], task["type"] == "rotation", g)
            loss = F.cross_entropy(model(x), targets[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
        print(f"  {name} epoch {epoch + 1}/{epochs} loss {running:.3f} ({time.time() - t0:.0f} s)", flush=True)
    train_s = time.time() - t0

    # Save fp16 (halves the committed size), then measure accuracy on exactly what was saved.
    from safetensors.torch import save_file

    path = EMBEDDED_DIR / "fashion" / f"{name}.safetensors"
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(sd, str(tmp), metadata={"donor": name, "arch": donor.arch}))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    test_x, test_y = task_data(task, "test")
    sub = fixed_subset(len(test_x))
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "arch": donor.arch,
        "source_task": task,
        "source_test_accuracy": round(accuracy(model, test_x, test_y), 2),
        "source_subset_accuracy": round(accuracy(model, test_x[sub], test_y[sub]), 2),
        "source_test_images": len(test_x),
        "params": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "lr": lr,
        "epochs": epochs,
        "images_per_epoch": per_epoch,
        "train_seconds": round(train_s, 1),
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="donor names to (re)train; default all")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--per-epoch", type=int, default=20000, help="training images drawn per epoch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    zoo = load_zoo_file(EMBEDDED_DIR / "fashion" / "zoo.yaml")
    names = args.only or zoo.donor_names
    command = "python scripts/build_fashion_zoo.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    man = manifest(zoo) or {"schema": 1, "kind": "zoo-manifest", "zoo": "fashion", "donors": {}}
    for name in names:
        if name not in TASKS:
            raise SystemExit(f"error: no source task for donor {name!r}; add it to TASKS")
        print(f"training {name} ({zoo.donor(name).arch}) on {TASKS[name]}", flush=True)
        lr = args.lr * LR_SCALE.get(name, 1.0)
        epochs = args.epochs if args.only else EPOCHS.get(name, args.epochs)
        entry = train_donor(zoo, name, epochs, args.per_epoch, args.batch, lr, args.seed)
        entry["command"] = command
        man["donors"][name] = entry
        atomic_write_json(EMBEDDED_DIR / "fashion" / "manifest.json", man)
        print(
            f"  -> {entry['source_test_accuracy']:.2f}% on {entry['source_test_images']} source test images, "
            f"{entry['params'] / 1e6:.2f} M params",
            flush=True,
        )


if __name__ == "__main__":
    main()
