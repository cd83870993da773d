"""ZiCo: "Zero-Shot NAS via Inverse Coefficient of Variation on Gradients", Li, Yang, Wang,
Marculescu, ICLR 2023. Per layer, the ratio of the mean absolute gradient to its standard
deviation across batches; the score sums log of that over layers. The paper reports Kendall tau
0.59-0.80 with accuracy on NAS-Bench-201 / NATS-Bench, above NASWOT and synflow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dery_deploy.assemble.proxies import register_proxy


@register_proxy("zico")
def zico(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, splits: int = 2) -> float:
    """ZiCo over `splits` mini-batches of (images, labels); needs at least 2 batches."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]
    grads: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    was = net.training
    net.train()
    try:
        for xb, yb in zip(images.chunk(splits), labels.chunk(splits)):
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(xb), yb).backward()
            for i, m in enumerate(layers):
                if m.weight.grad is not None:
                    grads[i].append(m.weight.grad.detach().flatten().double().clone())
    finally:
        net.zero_grad(set_to_none=True)
        net.train(was)
    score = 0.0
    for gs in grads.values():
        if len(gs) < 2:
            continue
        g = torch.stack(gs)
        std = g.std(0)
        mean_abs = g.abs().mean(0)
        nz = std > 0
        if nz.any():
            val = float((mean_abs[nz] / std[nz]).sum())
            if val > 0:
                score += math.log(val)
    return score
