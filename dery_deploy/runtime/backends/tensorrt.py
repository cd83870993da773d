"""tensorrt: ONNX -> engine (fp16 / fp32), the shipping backend on NVIDIA GPUs and Jetson."""

from __future__ import annotations

import time

import torch

from dery_deploy.runtime.backends.base import Backend, Runner, own_copy
from dery_deploy.runtime.tensorrt import INSTALL, EngineRunner, engine_from_module


class TensorRT(Backend):
    name = "tensorrt"
    devices = ("cuda",)
    precisions = ("fp32", "fp16")

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
        engine, _, _ = engine_from_module(own_copy(module, "cpu", torch.float32), example, precision, example.shape[0])
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
