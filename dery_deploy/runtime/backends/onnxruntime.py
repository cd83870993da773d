"""onnxruntime: the CPU deployment backend (CUDA execution provider where onnxruntime-gpu is
installed). Each item is exported to ONNX (opset 17) and run in its own InferenceSession."""

from __future__ import annotations

import time

import numpy as np
import torch

from dery_deploy.runtime.backends.base import Backend, Runner, own_copy
from dery_deploy.runtime.harness import rss_rise_mb
from dery_deploy.runtime.onnx import onnx_from_module


class OnnxRuntime(Backend):
    name = "onnxruntime"
    devices = ("cpu", "cuda")
    precisions = ("fp32",)

    def unavailable(self, device):
        try:
            import onnxruntime as ort
        except ImportError:
            return "backend onnxruntime needs the onnxruntime package (pip install onnxruntime)"
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDA execution provider here (pip install onnxruntime-gpu)"
        return super().unavailable(device)

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    @staticmethod
    def session(onnx_bytes: bytes, device: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # ORT's intra-op threads spin-wait after each run by default; with several sessions alive in
        # one process (the reference workload's and the item's) the spinning threads of one steal
        # the cores of the other and inflate its timing. Measured here: 24-79% slower items.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        return ort.InferenceSession(onnx_bytes, opts, providers=providers)

    def memory_unmeasurable(self, device: str) -> str | None:
        return None  # a fresh session's resident memory (CPU) or the device's memory (CUDA EP) is measured

    def prepare(self, module, example, precision, device) -> Runner:
        t0 = time.perf_counter()
        data = onnx_from_module(own_copy(module, "cpu", torch.float32), example.float().cpu())
        sess = self.session(data, device)
        x = np.ascontiguousarray(example.float().cpu().numpy())

        def call():
            return sess.run(None, {"x": x})

        def run(inp):
            return sess.run(None, {"x": np.ascontiguousarray(inp.float().cpu().numpy())})[0]

        def fresh_memory_mb() -> float:
            # what a deployment pays: a new session's weights, arena and first run, as a rise of peak RSS
            return rss_rise_mb(lambda: self.session(data, "cpu").run(None, {"x": x}))

        return Runner(
            call,
            run,
            False,
            time.perf_counter() - t0,
            {"onnx_bytes": len(data)},
            fresh_memory_mb if device == "cpu" else None,
        )
