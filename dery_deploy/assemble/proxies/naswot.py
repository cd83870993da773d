"""NASWOT: "Neural Architecture Search without Training", Mellor, Turner, Storkey, Crowley,
ICML 2021. Each image's binary activation code (which units are on) is collected over all
activation layers; the score is log|K_H| with K_H[i, j] = number of units where images i and j
agree. Networks that separate inputs into distinct linear regions score higher; the paper reports
Kendall tau around 0.57-0.65 with final accuracy on NAS-Bench-201. The DeRy paper ranks
reassembled candidates with it.
"""

from __future__ import annotations

import torch
from torch import nn

from dery_deploy.assemble.proxies import register_proxy

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish)


@register_proxy("naswot")
@torch.no_grad()
def naswot(net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """log-determinant of the activation-code kernel over one batch (eval-mode BN statistics)."""
    codes: list[torch.Tensor] = []
    n = images.shape[0]

    def hook(_m, inputs, _out):
        # Activations inside blocks that fold patches into the batch (MobileViT's transformer) do not
        # have one row per image; their codes cannot be attributed to images, so they are skipped.
        if inputs[0].shape[0] == n:
            codes.append((inputs[0].reshape(n, -1) > 0).float())

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, ACTIVATIONS)]
    was = net.training
    net.eval()
    try:
        net(images)
    finally:
        for h in handles:
            h.remove()
        net.train(was)
    if not codes:
        return float("-inf")
    c = torch.cat(codes, dim=1).double()
    k = c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if sign > 0 else float("-inf")
