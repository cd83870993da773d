"""tensorrt: ONNX -> engine (fp16 / fp32), the shipping backend on NVIDIA GPUs and Jetson."""

from __future__ import annotations

import time

from dery_deploy.profile.backends.base import Backend, Runner


class TensorRT(Backend):
    name = "tensorrt"
    devices = ("cuda",)
    precisions = ("fp32", "fp16")

    def unavailable(self, device):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            from dery_deploy.export.tensorrt_engine import INSTALL

            return INSTALL
        return super().unavailable(device)

    def version(self) -> str:
        import tensorrt

        return tensorrt.__version__

    def prepare(self, module, example, precision, device) -> Runner:
        from dery_deploy.export.onnx_export import onnx_from_module
        from dery_deploy.export.tensorrt_engine import EngineRunner, engine_from_onnx

        t0 = time.perf_counter()
        data = onnx_from_module(module.float().cpu().eval(), example.float().cpu())
        engine, _ = engine_from_onnx(data, tuple(example.shape), precision == "fp16")
        runner = EngineRunner(engine)
        x = example.to("cuda").float().contiguous()
        runner.bind(x)

        def run(inp):
            return runner(inp).cpu().numpy()

        def call():
            runner.execute()

        # `run` rebinds to new input; rebind the profiling input after parity checks
        return Runner(call, run, True, time.perf_counter() - t0, {"engine_bytes": len(engine)})
