"""openvino: the other CPU deployment backend. Each item is exported to ONNX (fp32, or the QDQ
INT8 ONNX ONNX Runtime runs too) and compiled by OpenVINO for its input shape (`runtime.openvino`)."""

from __future__ import annotations

import time

import numpy as np
import torch

from dery_deploy.runtime.backends.base import Runner
from dery_deploy.runtime.backends.onnx_based import OnnxBackend
from dery_deploy.runtime.openvino import INSTALL, compile_model
from dery_deploy.runtime.resources import rss_rise_mb


class OpenVino(OnnxBackend):
    name = "openvino"
    devices = ("cpu",)
    precisions = ("fp32", "int8")

    def unavailable(self, device):
        try:
            import openvino  # noqa: F401
        except ImportError:
            return INSTALL
        return super().unavailable(device)

    def version(self) -> str:
        import openvino

        return openvino.__version__.split("-")[0]

    def memory_unmeasurable(self, device: str) -> str | None:
        return None  # a fresh compiled model's resident memory is measured

    def runner_from_onnx(
        self, onnx_bytes: bytes, example: torch.Tensor, device: str = "cpu", t0: float | None = None
    ) -> Runner:
        """A runner of this ONNX (fp32 or QDQ INT8) compiled for `example`'s shape; `run` takes any batch."""
        t0 = time.perf_counter() if t0 is None else t0
        x = np.ascontiguousarray(example.float().cpu().numpy())
        compiled = compile_model(onnx_bytes, self.threads, tuple(x.shape))
        request = compiled.create_infer_request()
        dynamic: list = []  # compiled for any batch on the first `run`

        def call():
            return request.infer({0: x}, share_inputs=True, share_outputs=True)

        def run(inp):
            if not dynamic:
                dynamic.append(compile_model(onnx_bytes, self.threads, any_batch=True))
            return dynamic[0](np.ascontiguousarray(inp.float().cpu().numpy()))[0]

        def fresh_memory_mb() -> float:
            # what a deployment pays: a new compiled model's weights, buffers and first run, as a rise of peak RSS
            return rss_rise_mb(lambda: compile_model(onnx_bytes, self.threads, tuple(x.shape))({0: x}))

        info = {  # read back from the compiled model: what the runtime was actually given
            "onnx_bytes": len(onnx_bytes),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "streams": int(compiled.get_property("NUM_STREAMS")),
            "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        }
        return Runner(call, run, False, time.perf_counter() - t0, info, fresh_memory_mb)
