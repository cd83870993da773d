"""torch-compile: inductor. `reduce-overhead` (CUDA graphs inside) on a GPU, `default` on a CPU.
Compile time is reported separately from latency (`build_s`).

Items are prepared and timed in groups of at most `max_live`, each group from a clean Dynamo state
(`reset()`): profiled items are mostly `nn.Sequential`s, which share one code object, and after
Dynamo's recompile limit (8) further items would silently run eager with only a log warning."""

from __future__ import annotations

import time

import torch
import torch._dynamo

from dery_deploy.runtime.backends.base import Backend, Runner, own_copy, torch_dtype


class TorchCompile(Backend):
    name = "torch-compile"
    devices = ("cpu", "cuda")
    precisions = ("fp32", "fp16")
    max_live = 6  # with the reference workload, 7 compiled Sequentials: under Dynamo's limit of 8

    def reset(self) -> None:
        import torch._dynamo

        torch._dynamo.reset()

    def unavailable(self, device):
        why = super().unavailable(device)
        if why is None and device == "cpu":
            import shutil

            if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
                return "torch-compile on CPU needs a C++ compiler (apt-get install -y g++)"
        return why

    def prepare(self, module, example, precision, device) -> Runner:
        dtype = torch_dtype(precision)
        m = own_copy(module, device, dtype)
        x = example.to(device=device, dtype=dtype).clone()
        # a static input, as torch-cudagraph's: CUDA-graph trees copy every other input into the graph's
        # own buffer on each call (2-3 us), which would be timed here and not there; new input is copied in
        torch._dynamo.mark_static_address(x)
        compiled = torch.compile(m, mode="reduce-overhead" if device == "cuda" else "default", dynamic=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(3):  # reduce-overhead records its CUDA graph on a later call
                compiled(x)
        if device == "cuda":
            torch.cuda.synchronize()
        build = time.perf_counter() - t0

        @torch.inference_mode()
        def call():
            return compiled(x)

        @torch.inference_mode()
        def run(inp):
            x.copy_(inp.to(device=device, dtype=dtype))  # the static input's address is guarded: no recompile
            return compiled(x).float().cpu().numpy()

        return Runner(call, run, device == "cuda", build)
