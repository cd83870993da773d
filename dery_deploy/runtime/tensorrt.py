"""TensorRT engines from ONNX with the real `tensorrt` Python API, for TensorRT 10 and 11.

- TensorRT 10 (JetPack 6): weakly typed networks; fp16 is the builder flag `BuilderFlag.FP16` on
  the fp32 ONNX.
- TensorRT 11: weak typing (and with it `BuilderFlag.FP16`, `trtexec --fp16`) is gone; every
  network is strongly typed, so an fp16 engine is built from an ONNX whose tensors are fp16
  (`runtime.onnx.onnx_from_module(..., precision="fp16")`, fp32 input and output kept).
- INT8 on both: explicit quantization from the QDQ ONNX of `runtime.quantize` (`engine_from_qdq`),
  the same file ONNX Runtime and OpenVINO run on CPUs.

EngineFromOnnx builds a serialised engine with an optimisation profile over the batch dimension,
tuned for the batch the engine will run at (and a process-wide timing cache, so repeated builds of
similar items reuse tactic timings); EngineRunner deserialises it and runs it on torch CUDA tensors
on its own CUDA stream (the legacy default stream forces extra synchronisation). Only where
`tensorrt` imports.

fp32 means fp32: TensorRT enables TF32 for fp32 layers by default (10-bit mantissas on Ampere and
later, Hopper and Orin included), which breaks parity with PyTorch at fp32 tolerance, so fp32 builds
clear `BuilderFlag.TF32`. One logger serves the process: TensorRT keeps the first logger it is given
and warns when later builders or runtimes bring another.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from dery_deploy.errors import DeryError
from dery_deploy.runtime.onnx import onnx_from_module
from dery_deploy.runtime.quantize import qdq_from_module

INSTALL = (
    "TensorRT is not installed: install NVIDIA TensorRT with its Python bindings (`pip install tensorrt` "
    "from NVIDIA's index, or JetPack on a Jetson) on a machine with an NVIDIA GPU"
)
_TIMING_CACHE: dict[str, object] = {}
_LOGGER: dict[str, object] = {}


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise DeryError(INSTALL, "export") from None
    if not torch.cuda.is_available():
        raise DeryError("TensorRT needs an NVIDIA GPU and torch sees none on this machine", "export")
    return trt


def shared_logger(trt):
    """The process's one TensorRT logger (warnings and errors)."""
    if trt.__version__ not in _LOGGER:
        _LOGGER[trt.__version__] = trt.Logger(trt.Logger.WARNING)
    return _LOGGER[trt.__version__]


def major_version(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def strongly_typed_only(trt) -> bool:
    """TensorRT 11 builds only strongly typed networks (no precision flags)."""
    return major_version(trt) >= 11


def engine_from_onnx(
    onnx_bytes: bytes,
    input_shape: tuple[int, ...],
    precision: str,
    max_batch: int | None = None,
    workspace_mb: int = 2048,
) -> tuple[bytes, float]:
    """Build a serialised engine; the batch dimension ranges over 1..max_batch and TensorRT tunes its
    kernels for input_shape[0], the batch the engine will be timed and run at.

    On TensorRT 11 `precision` must already be the ONNX's (see the module docstring); on TensorRT 10
    fp16 sets the builder flag on an fp32 ONNX. fp32 clears TF32.
    """
    trt = import_tensorrt()
    logger = shared_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeryError(f"TensorRT could not parse the ONNX model: {errors}", "export")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16" and not strongly_typed_only(trt):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision in ("fp32", "int8"):
        # on by default; fp32 parity needs full mantissas, and an INT8 engine's unquantized layers are the
        # fp32 of the QDQ model whose accuracy was measured
        config.clear_flag(trt.BuilderFlag.TF32)
    for flag in int8_builder_flags(trt, precision):
        config.set_flag(flag)
    cache = _TIMING_CACHE.get(trt.__version__)
    if cache is None:
        cache = _TIMING_CACHE[trt.__version__] = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    opt = tuple(input_shape)
    max_b = max(max_batch or opt[0], opt[0])
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, *opt[1:]), opt, (max_b, *opt[1:]))
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeryError("TensorRT failed to build the engine (see its log above)", "export")
    return bytes(serialized), time.perf_counter() - t0


def int8_builder_flags(trt, precision: str) -> list:
    """The builder flags an INT8 engine from a QDQ ONNX needs.

    TensorRT 10 builds weakly typed networks: the INT8 flag lets the Q/DQ-marked layers run in INT8.
    No FP16 flag: the layers without Q/DQ stay fp32, as in the QDQ model whose accuracy was measured
    on the CPU (fp16 there would be another precision, to be measured on its own). TensorRT 11
    builds only strongly typed networks, where the Q/DQ layers' types decide: no flag at all.
    """
    if precision != "int8" or strongly_typed_only(trt):
        return []
    return [trt.BuilderFlag.INT8]


def engine_from_qdq(qdq_onnx: bytes, input_shape: tuple[int, ...], max_batch: int | None = None) -> tuple[bytes, float]:
    """An INT8 engine by explicit quantization from the QDQ ONNX (`runtime.quantize`); (engine, build seconds)."""
    return engine_from_onnx(qdq_onnx, input_shape, "int8", max_batch)


def int8_engine_from_module(
    module: nn.Module, calibration: torch.Tensor, input_shape: tuple[int, ...], max_batch: int | None = None
) -> tuple[bytes, float, bytes]:
    """Quantize `module` (calibrated on `calibration`), then its INT8 engine; (engine, build seconds, QDQ ONNX)."""
    import_tensorrt()  # before the quantization: say what to install first
    qdq = qdq_from_module(module, calibration)
    engine, build_s = engine_from_qdq(qdq, input_shape, max_batch)
    return engine, build_s, qdq


def engine_from_module(
    module: nn.Module,
    example: torch.Tensor,
    precision: str,
    max_batch: int | None = None,
    opt_batch: int | None = None,
) -> tuple[bytes, float, bytes]:
    """ONNX of `module` in the form this TensorRT builds at `precision`, then the engine, tuned for
    `opt_batch` (default: the example's batch). Returns (engine, build seconds, the ONNX it was built from)."""
    trt = import_tensorrt()
    onnx_precision = precision if strongly_typed_only(trt) else "fp32"
    onnx_bytes = onnx_from_module(module, example.float().cpu(), precision=onnx_precision)
    shape = (opt_batch or example.shape[0], *example.shape[1:])
    engine, build_s = engine_from_onnx(onnx_bytes, shape, precision, max_batch)
    return engine, build_s, onnx_bytes


def enqueue(context, stream_handle: int) -> None:
    """One inference on `stream_handle`; TensorRT reports a failed enqueue by its return value only."""
    if not context.execute_async_v3(stream_handle):
        raise DeryError(
            "TensorRT could not enqueue the engine (execute_async_v3 returned False; see its log above)", "export"
        )


class EngineRunner:
    """Runs a serialised engine on CUDA torch tensors (input `x`, output `y`) on its own stream."""

    def __init__(self, engine_bytes: bytes):
        trt = import_tensorrt()
        self.trt = trt
        self.runtime = trt.Runtime(shared_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise DeryError(
                "TensorRT could not deserialise the engine (built by another TensorRT version or GPU?)", "export"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self._bound: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, output), kept alive while bound

    def bind(self, x: torch.Tensor) -> torch.Tensor:
        """Bind a (CUDA, fp32, contiguous) input and allocate the output; returns the output tensor."""
        self.context.set_input_shape("x", tuple(x.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape("y")), device="cuda", dtype=torch.float32)
        self.context.set_tensor_address("x", x.data_ptr())
        self.context.set_tensor_address("y", y.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())  # the input was written on torch's stream
        self._bound = (x, y)
        return y

    def execute(self) -> None:
        """Enqueue one inference of the bound input on the runner's stream."""
        enqueue(self.context, self.stream.cuda_stream)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to("cuda", torch.float32).contiguous()
        y = self.bind(x)
        self.execute()
        self.stream.synchronize()
        return y
