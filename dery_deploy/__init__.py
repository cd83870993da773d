"""dery_deploy: hardware-aware Deep Model Reassembly (Yang et al., NeurIPS 2022), made deployable.

Importing the package is cheap and needs no GPU: heavy libraries (onnxruntime, tensorrt, pynvml,
ortools, optuna) are imported lazily by the stage that uses them. `dery_deploy.load(package)` runs a
shipped package with its runtime alone (`dery_deploy.deploy`), `dery_deploy.load_family(folder)` a family
of paths sharing their weights, one picked per budget.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from dery_deploy.errors import DeryError  # noqa: E402

__all__ = ["DeryError", "__version__", "load", "load_family"]


def __getattr__(name: str) -> Any:
    # `load` is imported on first use, so `import dery_deploy` stays as light as before
    if name == "load":
        from dery_deploy.deploy.predictor import load

        return load
    if name == "load_family":
        from dery_deploy.deploy.family import load_family

        return load_family
    raise AttributeError(f"module 'dery_deploy' has no attribute {name!r}")
