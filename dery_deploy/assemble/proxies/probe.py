"""Linear-probe proxy: how linearly separable the target classes are in the stitched network's
features, before any gradient training.

The candidate (least-squares-initialised adapters) embeds a labelled batch of the target task; a
ridge regression onto one-hot labels is fitted in closed form on the pooled, standardised
features, and the score is its leave-one-out accuracy, also in closed form (for ridge, the LOO
prediction is (y_hat - h_ii * y) / (1 - h_ii) with h the hat matrix), so no sample is scored by a
fit that saw it. This is the linear-evaluation protocol of representation learning (e.g. Kornblith,
Shlens, Le, CVPR 2019) made training-free; here it is measured against accuracy after training
(`scripts/bench_assemble.py`), where NASWOT and ZiCo did not rank candidates better than chance.
"""

from __future__ import annotations

import torch
from torch import nn

from dery_deploy.assemble.proxies import register_proxy
from dery_deploy.assemble.quality import ridge_loo_accuracy
from dery_deploy.network.plan import pre_logits


@register_proxy("probe")
@torch.no_grad()
def linear_probe(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, ridge: float = 1.0) -> float:
    """Closed-form leave-one-out accuracy (%) of a ridge probe on the network's pooled features."""
    was = net.training
    net.eval()
    try:
        feats, _ = pre_logits(net, images)
    finally:
        net.train(was)
    return ridge_loo_accuracy(feats, labels, ridge)
