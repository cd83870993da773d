"""CUDA device memory and a stream for a TensorRT package, through the CUDA driver (`libcuda.so.1`,
installed with every NVIDIA driver) and `ctypes`.

Why not torch or cuda-python, as `runtime/tensorrt.py` uses torch: the loader runs where only the
runtime-only install is (no torch; cuda-python is not a dependency), and the driver is on every machine
that can run an engine at all. It works in the device's primary context, the one the CUDA runtime (and
with it TensorRT) uses, so the pointers and the stream are valid for the engine.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

from dery_deploy.errors import DeryError

LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
NON_BLOCKING = 0x1  # CU_STREAM_NON_BLOCKING: no implicit synchronisation with the legacy default stream


class CudaDriver:
    """The few driver calls a package's engine needs: allocate, copy, one stream, events, synchronise."""

    def __init__(self, device: int = 0):
        try:
            self.lib = ctypes.CDLL(LIBRARY)
        except OSError:
            raise DeryError(
                f"a TensorRT package needs an NVIDIA GPU and its driver ({LIBRARY} does not load here)", "deploy"
            ) from None
        self._check("cuInit", 0)
        dev = ctypes.c_int()
        self._check("cuDeviceGet", ctypes.byref(dev), device)
        self.context = ctypes.c_void_p()
        self._check("cuDevicePrimaryCtxRetain", ctypes.byref(self.context), dev)
        self._check("cuCtxSetCurrent", self.context)
        self._allocations: list[int] = []

    def _check(self, name: str, *args) -> None:
        code = getattr(self.lib, name)(*args)
        if code != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorName(code, ctypes.byref(text))
            what = text.value.decode() if text.value else f"error {code}"
            raise DeryError(f"CUDA {name} failed ({what})", "deploy")

    def stream(self) -> int:
        """A new non-blocking stream's handle (what `execute_async_v3` takes)."""
        handle = ctypes.c_void_p()
        self._check("cuStreamCreate", ctypes.byref(handle), NON_BLOCKING)
        return int(handle.value or 0)

    def alloc(self, nbytes: int) -> int:
        """Device memory of `nbytes`, held until `close`; its address."""
        ptr = ctypes.c_uint64()
        self._check("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(nbytes))
        self._allocations.append(ptr.value)
        return ptr.value

    def to_device(self, dst: int, src: np.ndarray, stream: int) -> None:
        src = np.ascontiguousarray(src)
        self._check(
            "cuMemcpyHtoDAsync_v2",
            ctypes.c_uint64(dst),
            ctypes.c_void_p(src.ctypes.data),
            ctypes.c_size_t(src.nbytes),
            ctypes.c_void_p(stream),
        )

    def to_host(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._check(
            "cuMemcpyDtoHAsync_v2",
            ctypes.c_void_p(dst.ctypes.data),
            ctypes.c_uint64(src),
            ctypes.c_size_t(dst.nbytes),
            ctypes.c_void_p(stream),
        )

    def event(self) -> int:
        """A new timing event's handle."""
        handle = ctypes.c_void_p()
        self._check("cuEventCreate", ctypes.byref(handle), 0)  # CU_EVENT_DEFAULT: timing enabled
        return int(handle.value or 0)

    def record(self, event: int, stream: int) -> None:
        self._check("cuEventRecord", ctypes.c_void_p(event), ctypes.c_void_p(stream))

    def elapsed_ms(self, start: int, end: int) -> float:
        """Milliseconds between two recorded, completed events."""
        ms = ctypes.c_float()
        self._check("cuEventElapsedTime", ctypes.byref(ms), ctypes.c_void_p(start), ctypes.c_void_p(end))
        return float(ms.value)

    def synchronize(self, stream: int) -> None:
        self._check("cuStreamSynchronize", ctypes.c_void_p(stream))

    def close(self) -> None:
        while self._allocations:
            self.lib.cuMemFree_v2(ctypes.c_uint64(self._allocations.pop()))
