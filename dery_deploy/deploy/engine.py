"""A TensorRT package's session: the engine deserialised with the `tensorrt` Python API and run at the
package's batch, on device memory and a stream of its own (`deploy.cuda`), as the export measured it
(`runtime/tensorrt.EngineRunner`: input `x` bound once, `execute_async_v3` on a non-default stream,
each call timed by CUDA events on that stream).

Everything the engine is run with comes from deploy.json, never from constants: the input binding is
`input.name`, the output `output`, the input shape (runtime.batch, channels, height, width), and the
optimisation profile's (min, opt, max) shapes recorded in `runtime.session` are checked against the
engine's own before it runs, so an engine built for other shapes is refused in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dery_deploy.deploy.base import CHUNK, Session, Timer
from dery_deploy.deploy.cuda import CudaDriver
from dery_deploy.deploy.info import DeployInfo
from dery_deploy.errors import DeryError

PROFILE = 0  # the one optimisation profile the export builds (runtime/tensorrt.engine_from_onnx)
_LOGGER: dict[str, object] = {}  # TensorRT keeps the first logger it is given: one per process


def _logger(trt):
    if trt.__version__ not in _LOGGER:
        _LOGGER[trt.__version__] = trt.Logger(trt.Logger.WARNING)
    return _LOGGER[trt.__version__]


def _dims(d) -> list[int]:
    return [int(v) for v in d]


def check_engine(trt, engine, info: DeployInfo) -> None:
    """The engine's IO tensors and profile are the ones deploy.json records (module docstring).

    Raises:
        DeryError: one line naming the first disagreement.
    """
    where = f"{info.model} (TensorRT {trt.__version__})"
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    io = ((info.input.name, trt.TensorIOMode.INPUT, "input"), (info.output, trt.TensorIOMode.OUTPUT, "output"))
    for name, mode, word in io:
        if name not in names or engine.get_tensor_mode(name) != mode:
            raise DeryError(f"{where} has no {word} tensor {name!r} (its tensors: {names}); re-export it", "deploy")
        if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise DeryError(f"{where}: tensor {name!r} is {engine.get_tensor_dtype(name)}, not float32", "deploy")
    session = info.runtime.session
    recorded = [list(session[k]) for k in ("min_shape", "opt_shape", "max_shape") if k in session]
    built = [_dims(s) for s in engine.get_tensor_profile_shape(info.input.name, PROFILE)]
    if recorded and recorded != built:
        raise DeryError(
            f"{where} was built for shapes (min, opt, max) {built}, deploy.json records {recorded}; re-export it",
            "deploy",
        )


class TensorRtSession(Session):
    """A package's engine on this machine's first GPU (module docstring)."""

    def __init__(self, info: DeployInfo, folder: Path, cuda: CudaDriver | None = None):
        super().__init__(info, folder)
        import tensorrt as trt

        self.trt = trt
        self.cuda = cuda or CudaDriver()
        self.runtime = trt.Runtime(_logger(trt))  # kept: the engine must not outlive its runtime
        self.engine = self.runtime.deserialize_cuda_engine((folder / info.model).read_bytes())
        if self.engine is None:
            raise DeryError(
                f"TensorRT {trt.__version__} cannot deserialise {folder / info.model}: an engine runs only with "
                f"the TensorRT and GPU it was built for ({info.runtime.version}, {info.fingerprint.get('gpu_name')})",
                "deploy",
            )
        check_engine(trt, self.engine, info)
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        i = info.input
        self.shape = (info.runtime.batch, i.channels, i.height, i.width)
        if not self.context.set_input_shape(i.name, self.shape):
            raise DeryError(f"{info.model} does not take input {i.name!r} of shape {self.shape}", "deploy")
        self.y = np.empty(_dims(self.context.get_tensor_shape(info.output)), np.float32)
        self.x_ptr = self.cuda.alloc(4 * math.prod(self.shape))
        self.y_ptr = self.cuda.alloc(self.y.nbytes)
        for name, ptr in ((i.name, self.x_ptr), (info.output, self.y_ptr)):
            if not self.context.set_tensor_address(name, ptr):
                raise DeryError(f"TensorRT refused the address of tensor {name!r} of {info.model}", "deploy")

    def _enqueue(self) -> None:
        # TensorRT reports a failed enqueue by its return value only
        if not self.context.execute_async_v3(self.stream):
            raise DeryError("TensorRT could not enqueue the engine (execute_async_v3 returned False)", "deploy")

    def run(self, x: np.ndarray) -> np.ndarray:
        if tuple(x.shape) != self.shape:
            raise DeryError(f"the engine runs batches of shape {self.shape}, got {tuple(x.shape)}", "deploy")
        x = np.ascontiguousarray(x, np.float32)  # alive until the stream is synchronised below
        self.cuda.to_device(self.x_ptr, x, self.stream)
        self._enqueue()
        self.cuda.to_host(self.y, self.y_ptr, self.stream)
        self.cuda.synchronize(self.stream)
        return self.y.copy()

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        """The input copied to the device once; each call enqueues the engine and waits for it."""
        x = np.ascontiguousarray(x, np.float32)
        self.cuda.to_device(self.x_ptr, x, self.stream)
        self.cuda.synchronize(self.stream)

        def call() -> None:
            self._enqueue()
            self.cuda.synchronize(self.stream)

        return call

    def timer(self, x: np.ndarray) -> Timer:
        """n back-to-back enqueues of `x` (copied to the device once), each timed by events recorded on
        the session's stream around it, then one synchronisation: as the export timed the engine
        (`runtime/harness.time_calls`), the GPU's time per call, not the host's wait for it."""
        self.bind(x)
        events = [(self.cuda.event(), self.cuda.event()) for _ in range(CHUNK)]

        def timed(n: int) -> list[float]:
            out: list[float] = []
            for s in range(0, n, CHUNK):
                used = events[: min(CHUNK, n - s)]
                for start, end in used:
                    self.cuda.record(start, self.stream)
                    self._enqueue()
                    self.cuda.record(end, self.stream)
                self.cuda.synchronize(self.stream)
                out += [self.cuda.elapsed_ms(start, end) for start, end in used]
            return out

        return timed

    def effective(self) -> dict:
        name = self.info.input.name
        return {
            "tensorrt": self.trt.__version__,
            "input_shape": _dims(self.context.get_tensor_shape(name)),
            "output_shape": list(self.y.shape),
            "profile": [_dims(s) for s in self.engine.get_tensor_profile_shape(name, PROFILE)],
        }

    def __del__(self) -> None:
        cuda = getattr(self, "cuda", None)
        if cuda is not None:
            cuda.close()
