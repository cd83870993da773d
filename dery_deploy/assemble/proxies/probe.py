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


@register_proxy("probe")
@torch.no_grad()
def linear_probe(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, ridge: float = 1.0) -> float:
    """Closed-form leave-one-out accuracy (%) of a ridge probe on the network's pooled features."""
    was = net.training
    net.eval()
    try:
        feats = net.head.pool(net.forward_features(images)).double()
    finally:
        net.train(was)
    feats = (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)
    f = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.double)], 1)
    classes = int(labels.max()) + 1
    t = torch.nn.functional.one_hot(labels, classes).double()
    gram = f.T @ f + ridge * torch.eye(f.shape[1], dtype=torch.double)
    solved = torch.linalg.solve(gram, f.T)  # (d+1, n)
    h = (f * solved.T).sum(1)  # diag of the hat matrix
    pred = f @ (solved @ t)
    loo = (pred - h[:, None] * t) / (1 - h[:, None]).clamp_min(1e-9)
    return 100.0 * float((loo.argmax(1) == labels).double().mean())
