"""onnxruntime: the CPU deployment backend (CUDA execution provider where onnxruntime-gpu is
installed). Each item is exported to ONNX (opset 17) and run in its own InferenceSession; int8 (on
the CPU) runs the QDQ INT8 ONNX of `runtime.quantize`, the same file OpenVINO and TensorRT take.

On the CUDA execution provider input and output live on the GPU (IOBinding), so a timing is the
session's run, as a server that keeps its tensors on the device sees it, not host-device copies.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dery_deploy.deploy.settings import onnxruntime_session, onnxruntime_settings
from dery_deploy.errors import DeryError
from dery_deploy.runtime.backends.base import Runner
from dery_deploy.runtime.backends.onnx_based import OnnxBackend
from dery_deploy.runtime.resources import rss_rise_mb


class OnnxRuntime(OnnxBackend):
    name = "onnxruntime"
    devices = ("cpu", "cuda")
    precisions = ("fp32", "int8")

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
    def session(onnx_bytes: bytes | str, device: str, threads: int | None = None):
        """An InferenceSession computing with `threads` intra-op threads (None: torch's thread count)."""
        # the settings a package records and its loader rebuilds (`deploy.settings`); among them: ORT's
        # intra-op threads spin-wait after each run by default, and with several sessions alive in one
        # process (the reference workload's and the item's) the spinning threads of one steal the cores
        # of the other and inflate its timing. Measured here: 24-79% slower items.
        settings = onnxruntime_settings(threads or torch.get_num_threads())
        providers: list | None = None
        if device == "cuda":
            # the CUDA EP numbers devices like torch (CUDA ordinals): run where torch's tensors are
            providers = [("CUDAExecutionProvider", {"device_id": torch.cuda.current_device()}), "CPUExecutionProvider"]
        return onnxruntime_session(onnx_bytes, settings, providers)

    def memory_unmeasurable(self, device: str) -> str | None:
        return None  # a fresh session's resident memory (CPU) or the device's memory (CUDA EP) is measured

    def check(self, device: str, precision: str) -> None:
        if precision == "int8" and device != "cpu":
            # the CUDA EP would run the QDQ model as dequantised fp32: no INT8 kernels to measure
            raise DeryError(
                f"backend onnxruntime runs int8 on the CPU only, not on {device}; on an NVIDIA GPU use "
                "--backend tensorrt --precision int8",
                "profile",
            )
        super().check(device, precision)

    def runner_from_onnx(
        self, data: bytes, example: torch.Tensor, device: str = "cpu", t0: float | None = None
    ) -> Runner:
        """A runner of this ONNX (fp32, or QDQ INT8 on the CPU) bound to `example`; `run` takes any batch."""
        t0 = time.perf_counter() if t0 is None else t0
        sess = self.session(data, device, self.threads)
        x = np.ascontiguousarray(example.float().cpu().numpy())
        if device == "cuda":
            return self._cuda_runner(sess, x, t0, {"onnx_bytes": len(data)})

        def call():
            return sess.run(None, {"x": x})

        def run(inp):
            return sess.run(None, {"x": np.ascontiguousarray(inp.float().cpu().numpy())})[0]

        def fresh_memory_mb() -> float:
            # what a deployment pays: a new session's weights, arena and first run, as a rise of peak RSS
            return rss_rise_mb(lambda: self.session(data, "cpu", self.threads).run(None, {"x": x}))

        return Runner(
            call,
            run,
            False,
            time.perf_counter() - t0,
            {"onnx_bytes": len(data), "threads": sess.get_session_options().intra_op_num_threads},
            fresh_memory_mb if device == "cpu" else None,
        )

    @staticmethod
    def _cuda_runner(sess, x: np.ndarray, t0: float, info: dict) -> Runner:
        """A runner whose input and output are bound on the GPU, so `call` times the session's run alone."""
        if sess.get_providers()[0] != "CUDAExecutionProvider":
            # ORT falls back to the CPU with only a log line when the CUDA EP cannot load its libraries
            raise DeryError(
                f"onnxruntime did not start its CUDA execution provider (it runs on {sess.get_providers()}); "
                "check that onnxruntime-gpu matches the installed CUDA and cuDNN",
                "profile",
            )
        dev = torch.cuda.current_device()
        out_name = sess.get_outputs()[0].name
        y_shape = sess.run(None, {"x": x})[0].shape  # one host run gives the output shape (and warms up)
        x_gpu = torch.from_numpy(x).to(f"cuda:{dev}").contiguous()
        y_gpu = torch.empty(y_shape, dtype=torch.float32, device=f"cuda:{dev}")
        binding = sess.io_binding()
        binding.bind_input("x", "cuda", dev, np.float32, tuple(x_gpu.shape), x_gpu.data_ptr())
        binding.bind_output(out_name, "cuda", dev, np.float32, tuple(y_gpu.shape), y_gpu.data_ptr())
        # ORT reads raw pointers on its own stream, unordered with torch's: the copy above must be done first
        torch.cuda.synchronize()

        keep_alive = (x_gpu, y_gpu)  # the binding holds raw pointers only: the closure keeps the tensors

        def call():
            # run_with_iobinding returns once ORT has synchronised its stream, so the call covers the kernels
            sess.run_with_iobinding(binding)
            return keep_alive[1]

        def run(inp):
            xi = inp.detach().to(device=f"cuda:{dev}", dtype=torch.float32).contiguous()
            b = sess.io_binding()  # a binding of its own: the timed one keeps the example bound
            b.bind_input("x", "cuda", dev, np.float32, tuple(xi.shape), xi.data_ptr())
            b.bind_output(out_name, "cuda", dev)
            torch.cuda.synchronize()
            sess.run_with_iobinding(b)
            return b.copy_outputs_to_cpu()[0]

        call()
        torch.cuda.synchronize()
        return Runner(call, run, True, time.perf_counter() - t0, {**info, "io_binding": "cuda"})
