"""The head starts as a linear probe (LP-FT, Kumar et al., ICLR 2022): fitted on the frozen
network's features of the labelled training images before any end-to-end step, so fine-tuning does
not begin by pushing random-head gradients through the borrowed blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dery_deploy.network.plan import pre_logits

MAX_LOGIT = 8.0


def _features_and_classifier(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, nn.Linear | None]:
    """Pre-logit features (what the final linear layer sees) and that layer."""
    feats, clf = pre_logits(model, x)
    return feats, clf if isinstance(clf, nn.Linear) else None


@torch.no_grad()
def _embed(model: nn.Module, x: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, nn.Linear | None]:
    was = model.training
    model.eval()
    dev = next(model.parameters()).device  # the features are made (and the probe fitted) where the model is
    try:
        parts, clf = [], None
        for i in range(0, len(x), batch):
            f, clf = _features_and_classifier(model, x[i : i + batch].to(dev))
            parts.append(f.float())
        return torch.cat(parts), clf
    finally:
        model.train(was)


def fit_head(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float = 1e-3, steps: int = 100
) -> float | None:
    """Fit the final linear layer as a multinomial logistic regression (L-BFGS) on the features of
    (x, y); returns its training accuracy in %, or None where the head is not a plain linear layer."""
    feats, clf = _embed(model, x)
    if clf is None or clf.out_features != num_classes:
        return None
    y = y.to(feats.device)
    w = torch.zeros(num_classes, feats.shape[1], device=feats.device, requires_grad=True)
    b = torch.zeros(num_classes, device=feats.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(feats @ w.T + b, y) + weight_decay * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        logits = feats @ w.T + b
        # separable features drive a probe's weights up until the penalty stops them; overconfident logits
        # would then swamp the first end-to-end steps, so the probe is cooled to at most MAX_LOGIT
        cool = min(1.0, MAX_LOGIT / float(logits.abs().max().clamp_min(1e-12)))
        clf.weight.copy_((cool * w).detach().to(clf.weight.dtype))
        if clf.bias is not None:
            clf.bias.copy_((cool * b).detach().to(clf.bias.dtype))
        return 100.0 * float((logits.argmax(1) == y).float().mean())
