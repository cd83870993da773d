"""Boundary features: the representation at every unit boundary of a donor, batch by batch.

Boundary 0 is the input image and boundary i the output of body unit i-1 (the classifier head is
never a boundary a block is cut at). Features are checked for NaN / inf here, so a broken donor is
named instead of poisoning the similarity.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dery_deploy.dissect import Dissection
from dery_deploy.errors import DeryError


@torch.no_grad()
def boundary_features(d: Dissection, x: torch.Tensor, donor: str) -> Iterator[torch.Tensor]:
    """Yield the (batch, features) representation at boundaries 0..num_body_units of `d` for input x."""
    yield x.reshape(x.shape[0], -1)
    for i, unit in enumerate(d.body):
        x = unit.module(x)
        if not torch.isfinite(x).all():
            raise DeryError(
                f"donor {donor!r} produces NaN/inf features at boundary {i + 1} (after unit "
                f"{unit.name!r}); check its weights",
                "similarity",
            )
        yield x.reshape(x.shape[0], -1)
