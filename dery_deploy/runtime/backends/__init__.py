"""One module per backend, all behind the small base in `base.py`; heavy libraries load lazily."""

from __future__ import annotations

from dery_deploy.errors import DeryError
from dery_deploy.runtime.backends.base import Backend, Runner
from dery_deploy.runtime.backends.onnxruntime import OnnxRuntime
from dery_deploy.runtime.backends.openvino import OpenVino
from dery_deploy.runtime.backends.tensorrt import TensorRT
from dery_deploy.runtime.backends.torch_compile import TorchCompile
from dery_deploy.runtime.backends.torch_cudagraph import TorchCudaGraph
from dery_deploy.runtime.backends.torch_eager import TorchEager

BACKENDS: dict[str, type[Backend]] = {
    b.name: b for b in (TorchEager, TorchCudaGraph, TorchCompile, OnnxRuntime, OpenVino, TensorRT)
}


def get_backend(name: str, threads: int | None = None) -> Backend:
    """The backend `name`, computing with `threads` CPU threads (None: the library's default)."""
    if name not in BACKENDS:
        raise DeryError(f"Unknown backend {name!r}. Backends: {', '.join(BACKENDS)}.", "profile")
    return BACKENDS[name](threads)


__all__ = ["BACKENDS", "Backend", "Runner", "get_backend"]
