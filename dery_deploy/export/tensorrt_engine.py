"""TensorRT engines from ONNX with the real `tensorrt` Python API (TensorRT 10 style):
EngineFromOnnx builds a serialised engine with an optimisation profile over the batch dimension,
EngineRunner deserialises it and runs it on torch CUDA tensors. Only where `tensorrt` imports."""

from __future__ import annotations

import time

import torch

from dery_deploy.errors import DeryError

INSTALL = ("TensorRT is not installed: install NVIDIA TensorRT with its Python bindings (`pip install tensorrt` "
           "from NVIDIA's index, or JetPack on a Jetson) on a machine with an NVIDIA GPU")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise DeryError(INSTALL, "export") from None
    if not torch.cuda.is_available():
        raise DeryError("TensorRT needs an NVIDIA GPU and torch sees none on this machine", "export")
    return trt


def engine_from_onnx(onnx_bytes: bytes, input_shape: tuple[int, ...], fp16: bool, max_batch: int | None = None,
                     workspace_mb: int = 2048) -> tuple[bytes, float]:
    """Build a serialised engine; the batch dimension ranges over 1..max_batch (opt = input_shape[0])."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeryError(f"TensorRT could not parse the ONNX model: {errors}", "export")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
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


class EngineRunner:
    """Runs a serialised engine on CUDA torch tensors (input `x`, output `y`)."""

    def __init__(self, engine_bytes: bytes):
        trt = import_tensorrt()
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise DeryError("TensorRT could not deserialise the engine (built by another TensorRT version or GPU?)", "export")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self._bound = None

    def bind(self, x: torch.Tensor) -> torch.Tensor:
        """Bind a (CUDA, fp32, contiguous) input and allocate the output; returns the output tensor."""
        self.context.set_input_shape("x", tuple(x.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape("y")), device="cuda", dtype=torch.float32)
        self.context.set_tensor_address("x", x.data_ptr())
        self.context.set_tensor_address("y", y.data_ptr())
        self._bound = (x, y)
        return y

    def execute(self) -> None:
        self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to("cuda", torch.float32).contiguous()
        y = self.bind(x)
        self.execute()
        torch.cuda.synchronize()
        return y
