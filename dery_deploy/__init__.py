"""dery_deploy: hardware-aware Deep Model Reassembly (Yang et al., NeurIPS 2022), made deployable.

Importing the package is cheap and needs no GPU: heavy libraries (onnxruntime, tensorrt, pynvml,
ortools, optuna) are imported lazily by the stage that uses them.
"""

__version__ = "0.1.0"

from dery_deploy.errors import DeryError  # noqa: E402

__all__ = ["DeryError", "__version__"]
