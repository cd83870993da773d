"""Stitching adapters between a block's output spec and the next block's input spec.

Any family to any family: the upstream tensor is brought to NCHW (NHWC permuted, tokens lose
their prefix tokens and fold back into their grid), resampled when the grids differ (average
pooling down, bilinear up), projected with a 1x1 convolution, and laid out as the downstream
block expects: NHWC permuted, or tokens with the prefix tokens and position embedding a ViT block
expects from its own embedding (a CNN does not provide either, so the adapter learns them).

`fit_least_squares` initialises an adapter from probe features so the assembled network works
before any training: the projection (and the token extras) map the upstream block's output to
the representation the downstream donor itself produces at that boundary, as SN-Net does
(Pan et al., CVPR 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dery_deploy.dissect.spec import TensorSpec
from dery_deploy.network.plan_records import AdapterRecord


def to_nchw(x: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    if spec.layout == "NCHW":
        return x
    if spec.layout == "NHWC":
        return x.permute(0, 3, 1, 2)
    if spec.layout == "NLC":
        t = x[:, spec.prefix :, :]
        return t.transpose(1, 2).reshape(x.shape[0], spec.channels, spec.height, spec.width)
    raise ValueError(f"cannot stitch from a {spec.layout} tensor")


def adapter_kind(src: TensorSpec, dst: TensorSpec) -> str:
    """A short name of what the adapter does, e.g. `NLC->NCHW+resample`."""
    kind = f"{src.layout}->{dst.layout}"
    if (src.height, src.width) != (dst.height, dst.width):
        kind += "+resample"
    return kind


class Adapter(nn.Module):
    """Stitch a `src`-spec tensor into a `dst`-spec tensor (see module docstring)."""

    def __init__(self, src: TensorSpec, dst: TensorSpec):
        super().__init__()
        if not (src.spatial and dst.spatial):
            raise ValueError(f"adapters connect spatial boundaries, got {src.short()} -> {dst.short()}")
        self.src, self.dst = src, dst
        self.proj = nn.Conv2d(src.channels, dst.channels, 1)
        self.pos_embed: nn.Parameter | None = None
        self.prefix_tokens: nn.Parameter | None = None
        if dst.layout == "NLC":
            self.pos_embed = nn.Parameter(torch.zeros(1, dst.height * dst.width, dst.channels))
            if dst.prefix:
                self.prefix_tokens = nn.Parameter(torch.zeros(1, dst.prefix, dst.channels))

    @property
    def kind(self) -> str:
        return adapter_kind(self.src, self.dst)

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        # Sizes come from the specs (static), so integer-factor pooling is chosen here, not from the
        # tensor: it exports to ONNX / TensorRT as a plain AveragePool.
        (sh, sw), (h, w) = (self.src.height, self.src.width), (self.dst.height, self.dst.width)
        if (sh, sw) == (h, w):
            return x
        if sh % h == 0 and sw % w == 0:
            return F.avg_pool2d(x, kernel_size=(sh // h, sw // w))
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Upstream tensor -> NCHW at the downstream grid (what the projection sees), in the standard
        (contiguous) memory format. A ConvNeXt stage's output and a ViT's tokens turned into a grid are views
        with channels-last strides; a convolution given such a tensor returns channels-last too, and every
        convolution after it follows. The receiving blocks were profiled on contiguous inputs: on an H200
        (fp16) `convnext_lower[0:6] > mnv3_rot[5:13]` measured 0.694 ms against 0.411 predicted with CUDA
        graphs at batch 1 and 6.03 against 3.18 ms eagerly, and `vit_tops[0:3] > mnv3_rot[5:13]` 0.774
        against 0.501 ms at batch 32, while the other assemblies landed within 2.3% (bench/gpu/2026-12-04-h200)."""
        return self.resample(to_nchw(x, self.src).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.features(x))
        if self.dst.layout == "NCHW":
            return y
        if self.dst.layout == "NHWC":
            return y.permute(0, 2, 3, 1).contiguous()
        t = y.flatten(2).transpose(1, 2) + self.pos_embed
        if self.prefix_tokens is not None:
            t = torch.cat([self.prefix_tokens.expand(t.shape[0], -1, -1), t], dim=1)
        return t

    def record(self, after_block: int) -> AdapterRecord:
        """What a plan records of this adapter, which follows its block `after_block`."""
        return AdapterRecord(after_block, self.kind, self.src, self.dst, sum(p.numel() for p in self.parameters()))


@torch.no_grad()
def fit_least_squares(adapter: Adapter, upstream: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3) -> float:
    """Initialise `adapter` by ridge least squares; return the relative stitch error afterwards.

    Args:
        upstream: the upstream block's outputs on probe images (src spec, batched).
        target: the downstream donor's own representation at the same boundary (dst spec, batched).
    """
    x = adapter.features(upstream.float())  # (n, Cin, H, W)
    y = to_nchw(target.float(), adapter.dst)  # (n, Cout, H, W)
    n, cin = x.shape[:2]
    xf = x.permute(0, 2, 3, 1).reshape(-1, cin).double()
    yf = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
    xm, ym = xf.mean(0), yf.mean(0)
    xc, yc = xf - xm, yf - ym
    gram = xc.T @ xc
    gram += ridge * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(cin, dtype=gram.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc)  # (Cin, Cout)
    b = ym - xm @ w
    adapter.proj.weight.copy_(w.T.reshape(adapter.proj.weight.shape).float())
    assert adapter.proj.bias is not None
    adapter.proj.bias.copy_(b.float())
    if adapter.pos_embed is not None:
        # what the projection leaves out at each grid position is the donor's position signal
        resid = (yf - xf @ w - b).reshape(n, -1, y.shape[1]).mean(0)
        adapter.pos_embed.copy_(resid[None].float())
        if adapter.prefix_tokens is not None:
            adapter.prefix_tokens.copy_(target[:, : adapter.dst.prefix].float().mean(0, keepdim=True))
    return stitch_error(adapter, upstream, target)


@torch.no_grad()
def stitch_error(adapter: Adapter, upstream: torch.Tensor, target: torch.Tensor) -> float:
    """||adapter(upstream) - target||^2 / ||target - mean(target)||^2 (0 is perfect, 1 is the mean)."""
    pred = adapter(upstream.float())
    t = target.float()
    return float((pred - t).square().sum() / (t - t.mean(0, keepdim=True)).square().sum().clamp_min(1e-12))


class Head(nn.Module):
    """The new classification head: global average pool, LayerNorm, linear."""

    def __init__(self, src: TensorSpec, num_classes: int):
        super().__init__()
        self.src = src
        self.norm = nn.LayerNorm(src.channels)
        self.fc = nn.Linear(src.channels, num_classes)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global average over the spatial grid (or over all tokens)."""
        if self.src.layout == "NCHW":
            return x.mean((2, 3))
        if self.src.layout == "NHWC":
            return x.mean((1, 2))
        if self.src.layout == "NLC":
            return x.mean(1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.pool(x)))
