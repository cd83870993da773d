"""Following the machine's speed while profiling.

On shared or frequency-scaled machines the same item can run up to 2x slower a few minutes later
(seen on this project's 2-core CI VM: a donor measured 0.38 ms, then 0.19 ms five minutes after).
Stable windows catch noise within a measurement, not drift between measurements. So every record
carries the latency of a fixed reference workload measured with the same backend right before it,
and the latency model scales each record to the profile's median machine speed; `--verify` and the
export's budget check scale their end-to-end measurements the same way (and report the raw numbers).
"""

from __future__ import annotations

import torch
from torch import nn

from dery_deploy.runtime.harness import measure

REFERENCE = "4x (conv3x3 16->16 + ReLU) on batch x 16 x 32 x 32, seed 0"


def reference_module() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    layers = []
    for _ in range(4):
        conv = nn.Conv2d(16, 16, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
            conv.bias.zero_()
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers).eval()


class Calibrator:
    """The reference workload prepared for a backend; `measure()` takes about 0.1 s.

    Backends that reset their compiler state per item (torch-compile) are re-prepared before each
    measurement, so the reference always runs compiled like the item it calibrates.
    """

    def __init__(self, backend, precision: str, device: str, batch: int):
        self.backend, self.precision, self.device = backend, precision, device
        self.x = torch.randn(batch, 16, 32, 32, generator=torch.Generator().manual_seed(0))
        self.runner = backend.prepare(reference_module(), self.x, precision, device)

    def measure(self) -> float:
        if getattr(self.backend, "resets_per_item", False):
            self.runner = self.backend.prepare(reference_module(), self.x, self.precision, self.device)
        return measure(
            self.runner.call,
            cuda=self.runner.cuda,
            warmup_s=0.02,
            window_s=0.02,
            max_windows=8,
            max_s=1.0,
            stream=self.runner.stream,
        ).median_ms
