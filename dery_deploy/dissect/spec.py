"""Tensor specs at unit boundaries: what a block consumes and produces."""

from __future__ import annotations

from dataclasses import asdict, dataclass

LAYOUTS = ("NCHW", "NHWC", "NLC", "NC")


@dataclass(frozen=True)
class TensorSpec:
    """The tensor at one unit boundary, for one image (batch dimension excluded).

    layout: NCHW / NHWC feature maps, NLC tokens (`prefix` class/register tokens, then a
        height x width grid of patch tokens), NC for pooled vectors and logits.
    reduction: input size divided by the spatial size (0 for NC).
    """

    layout: str
    channels: int
    height: int = 0
    width: int = 0
    prefix: int = 0
    reduction: float = 0.0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} not in {LAYOUTS}")
        if self.channels <= 0:
            raise ValueError(f"channels must be > 0, got {self.channels}")
        if self.layout != "NC" and (self.height <= 0 or self.width <= 0):
            raise ValueError(f"{self.layout} spec needs a spatial size, got {self.height}x{self.width}")
        if self.prefix and self.layout != "NLC":
            raise ValueError("only token (NLC) specs have prefix tokens")

    @property
    def shape(self) -> tuple[int, ...]:
        """Tensor shape without the batch dimension."""
        if self.layout == "NCHW":
            return (self.channels, self.height, self.width)
        if self.layout == "NHWC":
            return (self.height, self.width, self.channels)
        if self.layout == "NLC":
            return (self.prefix + self.height * self.width, self.channels)
        return (self.channels,)

    @property
    def spatial(self) -> bool:
        return self.layout != "NC"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(**d)

    def short(self) -> str:
        if self.layout == "NC":
            return f"NC {self.channels}"
        pre = f"+{self.prefix}" if self.prefix else ""
        return f"{self.layout} {self.channels}x{self.height}x{self.width}{pre} /{self.reduction:g}"
