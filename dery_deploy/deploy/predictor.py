"""`dery_deploy.load(package)`: a shipped package as a predictor, with the runtime alone.

    import dery_deploy
    model = dery_deploy.load("runs/default/budget-0.3ms/export")
    model.predict(image)            # [[("Ankle boot", 0.97), ...]] per image, best first
    model.logits(images)            # float32 (N, classes)
    model.classes, model.info       # class names in output order; the whole deploy.json

Imports NumPy and the package's runtime only (no torch, no timm): it runs where `pip install
dery-deploy` without the training extras was installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dery_deploy.deploy.family_info import is_family
from dery_deploy.deploy.info import FILE, DeployInfo, read_package
from dery_deploy.deploy.preprocess import preprocess
from dery_deploy.deploy.sessions import Session, open_session
from dery_deploy.errors import DeryError


class Predictor:
    """A package's network with its preprocessing and class names (module docstring)."""

    def __init__(self, info: DeployInfo, folder: Path, session: Session):
        self.info, self.folder, self.session = info, folder, session

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def batch(self) -> int:
        return self.info.runtime.batch

    def inputs(self, images) -> np.ndarray:
        """The network's float32 NCHW input: uint8 images preprocessed, or a float batch checked and kept."""
        i = self.info.input
        if isinstance(images, np.ndarray) and images.dtype.kind == "f":
            if images.ndim != 4 or images.shape[1:] != (i.channels, i.height, i.width):
                raise DeryError(
                    f"a float batch must be normalised N x {i.channels} x {i.height} x {i.width} (NCHW), got "
                    f"{images.shape}; give uint8 images to have them preprocessed",
                    "deploy",
                )
            return np.ascontiguousarray(images, dtype=np.float32)
        return preprocess(images, self.info.preprocess)

    def logits(self, images) -> np.ndarray:
        """float32 (N, classes) logits, run in calls of the package's batch (the last one zero-padded
        where the runtime's batch is static, so every call runs the shape that was measured)."""
        x = self.inputs(images)
        out = []
        for s in range(0, len(x), self.batch):
            chunk = x[s : s + self.batch]
            n = len(chunk)
            if n < self.batch and self.info.runtime.name != "onnxruntime":
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), np.float32)])
            out.append(np.asarray(self.session.run(np.ascontiguousarray(chunk)))[:n])
        return np.concatenate(out)

    def predict(self, images, top_k: int = 1) -> list[list[tuple[str, float]]]:
        """Per image, the `top_k` classes with their softmax probabilities, best first."""
        z = self.logits(images).astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        k = max(1, min(top_k, len(self.classes)))
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(row[j])) for j in idx] for row, idx in zip(p, order)]


def load(package: str | Path) -> Predictor:
    """A shipped package (the folder holding deploy.json) as a `Predictor`, its files checked against
    their recorded sha256 and its session built with the recorded settings.

    Raises:
        DeryError: one line naming a missing, edited or truncated file, or a runtime not installed; a
            family folder (`family_info`), which `load_family` loads.
    """
    folder = Path(package)
    folder = folder.parent if folder.is_file() else folder
    if is_family(folder) and not (folder / FILE).is_file():
        raise DeryError(
            f"{folder} is a family of paths, one per budget: load it with dery_deploy.load_family({str(folder)!r}) "
            "and pick a path with .at_budget(ms)",
            "deploy",
        )
    info = read_package(folder)
    return Predictor(info, folder, open_session(info, folder))
