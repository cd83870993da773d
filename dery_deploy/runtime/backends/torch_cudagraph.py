"""torch-cudagraph: capture the item once into a CUDA graph and replay it, as a latency-critical
PyTorch server does; launch overhead disappears, so per-block sums add up to whole models.

A graph owns only what it allocated during capture; the weights of the module it was captured from
are read by address. The runner therefore keeps that module (`Runner.keeps`): once it was collected,
its memory would return to the caching allocator and a replay would read whatever lives there.
"""

from __future__ import annotations

import time

import torch

from dery_deploy.runtime.backends.base import Backend, Runner, own_copy, torch_dtype


class TorchCudaGraph(Backend):
    name = "torch-cudagraph"
    devices = ("cuda",)
    precisions = ("fp32", "fp16")

    def prepare(self, module, example, precision, device) -> Runner:
        t0 = time.perf_counter()
        dtype = torch_dtype(precision)
        m = own_copy(module, device, dtype)
        static_x = example.to(device=device, dtype=dtype).clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream before capture, as the CUDA graphs docs ask
                m(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_y = m(static_x)
        torch.cuda.synchronize()

        def run(inp):
            static_x.copy_(inp.to(device=device, dtype=dtype))
            graph.replay()
            torch.cuda.synchronize()
            return static_y.float().cpu().numpy()

        return Runner(graph.replay, run, True, time.perf_counter() - t0, keeps=(m, static_x, static_y))
