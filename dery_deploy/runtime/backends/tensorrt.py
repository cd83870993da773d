"""tensorrt: ONNX -> engine (fp16 / fp32; int8 from the QDQ ONNX), the shipping backend on NVIDIA GPUs and Jetson."""

from __future__ import annotations

import time

import torch

from dery_deploy.runtime.backends.base import Backend, Runner, own_copy
from dery_deploy.runtime.tensorrt import INSTALL, EngineRunner, engine_from_module, int8_engine_from_module


class TensorRT(Backend):
    name = "tensorrt"
    devices = ("cuda",)
    precisions = ("fp32", "fp16", "int8")

    def unavailable(self, device):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return INSTALL
        return super().unavailable(device)

    def version(self) -> str:
        import tensorrt

        return tensorrt.__version__

    def prepare(self, module, example, precision, device) -> Runner:
        t0 = time.perf_counter()
        module = own_copy(module, "cpu", torch.float32)
        if precision == "int8":  # calibrated on the example: latency does not depend on the ranges
            engine, _, _ = int8_engine_from_module(module, example.cpu(), tuple(example.shape), example.shape[0])
        else:
            engine, _, _ = engine_from_module(module, example, precision, example.shape[0])
        runner = EngineRunner(engine)
        x = example.to("cuda").float().contiguous()
        runner.bind(x)

        def run(inp):
            out = runner(inp).cpu().numpy()
            runner.bind(x)  # `run` bound new input; profiling calls keep timing the example
            return out

        return Runner(
            runner.execute, run, True, time.perf_counter() - t0, {"engine_bytes": len(engine)}, stream=runner.stream
        )
