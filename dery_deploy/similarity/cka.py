"""Linear CKA (Kornblith et al., ICML 2019) and its unbiased mini-batch estimator
(Nguyen, Raghu, Kornblith, ICLR 2021).

`linear_cka(x, y)` is the exact statistic on two full (n, d) feature matrices. The mini-batch
estimator averages the unbiased HSIC_1 estimator (Song et al., JMLR 2012) over mini-batches, so a
large feature map never forms an n x n Gram matrix; it is what the similarity stage uses, with
every HSIC term for all boundary pairs of two donors computed at once from stacked Gram matrices.
All accumulation is in float64.
"""

from __future__ import annotations

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between (n, d1) and (n, d2) feature matrices (float64, biased/plain HSIC).

    Uses feature-space products when the features are narrower than the sample count and Gram
    matrices otherwise; both give the same number.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"need (n, d1) and (n, d2) matrices with the same n, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    n = x.shape[0]
    if max(x.shape[1], y.shape[1]) < n:
        xy = (y.T @ x).square().sum()
        xx = (x.T @ x).square().sum().sqrt()
        yy = (y.T @ y).square().sum().sqrt()
    else:
        kx, ky = x @ x.T, y @ y.T
        xy, xx, yy = (kx * ky).sum(), kx.square().sum().sqrt(), ky.square().sum().sqrt()
    return float(xy / (xx * yy))


def gram(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix of a (m, d) batch in float64."""
    x = x.reshape(x.shape[0], -1).double()
    return x @ x.T


def _zero_diag(k: torch.Tensor) -> torch.Tensor:
    return k - torch.diag_embed(torch.diagonal(k, dim1=-2, dim2=-1))


def hsic1_matrix(ka: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC_1 between every Gram matrix of `ka` (p, m, m) and of `kb` (q, m, m): (p, q).

    HSIC_1 = [tr(K~L~) + 1'K~1 1'L~1 / ((m-1)(m-2)) - 2/(m-2) 1'K~L~1] / (m(m-3)), K~ = K with
    a zero diagonal.
    """
    m = ka.shape[-1]
    if m < 4:
        raise ValueError(f"the unbiased HSIC estimator needs mini-batches of at least 4, got {m}")
    a, b = _zero_diag(ka), _zero_diag(kb)
    trace = torch.einsum("imn,jmn->ij", a, b)
    ra, rb = a.sum(-1), b.sum(-1)  # row sums (p, m), (q, m)
    sums = torch.outer(ra.sum(-1), rb.sum(-1))
    cross = ra @ rb.T
    return (trace + sums / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * cross) / (m * (m - 3))


class MinibatchCKA:
    """Accumulates mini-batch CKA between the boundaries of two representations sets A and B.

    Feed Gram matrices of the same images (same order) for A and B each batch; `value()` returns
    the (p, q) CKA matrix sum_b HSIC(A_i, B_j) / sqrt(sum_b HSIC(A_i, A_i) * sum_b HSIC(B_j, B_j)).
    """

    def __init__(self) -> None:
        # sums over the batches so far, None before the first
        self.xy: torch.Tensor | None = None
        self.xx: torch.Tensor | None = None
        self.yy: torch.Tensor | None = None
        # sum_b (mean squared feature norm)^2: self-HSIC's scale, for degeneracy tests
        self.xscale: torch.Tensor | None = None
        self.yscale: torch.Tensor | None = None
        self.batches = 0

    def update(self, ka: torch.Tensor, kb: torch.Tensor) -> None:
        xy, xx, yy = hsic1_matrix(ka, kb), self_hsic(ka), self_hsic(kb)
        xs, ys = _diag_mean(ka).square(), _diag_mean(kb).square()
        self.xy = xy if self.xy is None else self.xy + xy
        self.xx = xx if self.xx is None else self.xx + xx
        self.yy = yy if self.yy is None else self.yy + yy
        self.xscale = xs if self.xscale is None else self.xscale + xs
        self.yscale = ys if self.yscale is None else self.yscale + ys
        self.batches += 1

    def self_terms(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(sum of self-HSIC, its scale) for A, then for B: what the degeneracy test compares."""
        assert self.xx is not None and self.yy is not None, "self_terms() needs an update() first"
        assert self.xscale is not None and self.yscale is not None, "xscale and yscale are set with xx and yy"
        return (self.xx, self.xscale), (self.yy, self.yscale)

    def value(self) -> torch.Tensor:
        assert self.xy is not None and self.xx is not None and self.yy is not None, "value() needs an update() first"
        denom = torch.sqrt(self.xx.clamp_min(0)[:, None] * self.yy.clamp_min(0)[None, :])
        return self.xy / denom


def _diag_mean(k: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(k, dim1=-2, dim2=-1).mean(-1)


def self_hsic(k: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC_1(K_i, K_i) for each Gram matrix of a stack (p, m, m): (p,)."""
    m = k.shape[-1]
    a = _zero_diag(k)
    trace = a.square().sum((-1, -2))
    r = a.sum(-1)
    return (trace + r.sum(-1).square() / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * r.square().sum(-1)) / (m * (m - 3))


def minibatch_cka(x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Mini-batch linear CKA of two (n, d) matrices: the estimator of `MinibatchCKA` for one pair."""
    acc_xy = acc_xx = acc_yy = 0.0
    for i in range(0, x.shape[0] - 3, batch):
        kx, ky = gram(x[i : i + batch])[None], gram(y[i : i + batch])[None]
        if kx.shape[-1] < 4:
            break
        acc_xy += float(hsic1_matrix(kx, ky))
        acc_xx += float(self_hsic(kx))
        acc_yy += float(self_hsic(ky))
    return acc_xy / (acc_xx * acc_yy) ** 0.5
