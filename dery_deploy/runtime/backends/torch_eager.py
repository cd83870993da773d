"""torch-eager: the reference. On a GPU at small batch it measures Python launch overhead."""

from __future__ import annotations

import torch

from dery_deploy.runtime.backends.base import Backend, Runner, own_copy, torch_dtype


class TorchEager(Backend):
    name = "torch-eager"
    devices = ("cpu", "cuda")
    precisions = ("fp32", "fp16")

    def prepare(self, module, example, precision, device) -> Runner:
        m = own_copy(module, device, torch_dtype(precision))
        x = example.to(device=device, dtype=torch_dtype(precision))

        @torch.inference_mode()
        def call():
            return m(x)

        @torch.inference_mode()
        def run(inp):
            return m(inp.to(device=device, dtype=torch_dtype(precision))).float().cpu().numpy()

        return Runner(call, run, device == "cuda")
