"""`dery predict`: classify images with a shipped package, with its runtime alone (no torch).

Examples:
    dery predict runs/default/budget-0.3ms/export shoe.png
    dery predict PACKAGE photos/ --top-k 3 --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_files(paths: list[Path]) -> list[Path]:
    """The image files named, and every image under a folder named (sorted)."""
    from dery_deploy.errors import DeryError

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in EXTENSIONS and f.is_file())
            if not found:
                raise DeryError(f"{p} holds no images ({', '.join(EXTENSIONS)})", "predict")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DeryError(f"image not found: {p}", "predict")
    return files


def read_image(path: Path):
    """An image file as a uint8 HxWxC array, as Pillow decodes it (grey stays one channel)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from dery_deploy.errors import DeryError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise DeryError(f"cannot read image {path} ({type(e).__name__}); remove or replace it", "predict") from None


def predict(
    package: Path = typer.Argument(..., help="package folder (holding deploy.json)"),
    images: list[Path] = typer.Argument(..., help="image files or folders of images"),
    top_k: int = typer.Option(5, "--top-k", help="classes to print per image"),
    as_json: bool = typer.Option(False, "--json", help="print JSON: per image, the classes and scores"),
) -> None:
    """Classify images with a package: its preprocessing, class names and runtime settings.

    Images go through the package's runtime in calls of its batch."""
    from dery_deploy.deploy.predictor import load
    from dery_deploy.errors import DeryError

    if top_k < 1:
        raise DeryError(f"--top-k must be >= 1 (classes to print per image), got {top_k}", "predict")
    model = load(package)
    files = image_files(images)
    rows: list[dict[str, Any]] = []
    for s in range(0, len(files), model.batch):
        chunk = files[s : s + model.batch]
        for f, top in zip(chunk, model.predict([read_image(f) for f in chunk], top_k)):
            rows.append({"image": str(f), "top": [{"class": c, "score": round(p, 5)} for c, p in top]})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        shown = ", ".join(f"{t['class']} {t['score']:.3f}" for t in r["top"])
        print(f"{r['image']}: {shown}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
