"""Shipped packages: `deploy.json` (`info`), the loader (`load`), and the bench (`bench`).

This sub-package sits just above errors/artifacts: it imports NumPy and, when a session is built, the
package's own runtime, and nothing of the training stack (no torch, no timm), so a package runs where
only `pip install dery-deploy` (without `[train]`) was installed.
"""

from dery_deploy.deploy.info import FILE, DeployInfo, read_package
from dery_deploy.deploy.predictor import Predictor, load

__all__ = ["FILE", "DeployInfo", "Predictor", "load", "read_package"]
