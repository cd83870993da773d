"""Generic dissection machinery: a registry of families, units, and blocks.

A family module (one per timm model family, under `families/`) says how to cut one kind of model
into its ordered units and what layout each unit emits. The machinery here runs a probe input
through the units once, derives and checks the tensor spec at every boundary, and builds blocks
(contiguous unit ranges) as runnable modules. Everything downstream trusts these specs.
"""

from __future__ import annotations

import fnmatch
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from dery_deploy.dissect.spec import TensorSpec
from dery_deploy.errors import DeryError


@dataclass
class UnitDef:
    """What a family module returns for one unit."""

    name: str
    kind: str  # stem | block | downsample | head
    module: nn.Module
    layout: str  # layout of the unit's output
    grid: tuple[int, int] | None = None  # token grid for NLC outputs
    prefix: int = 0  # prefix tokens for NLC outputs


@dataclass
class Unit:
    index: int
    name: str
    kind: str
    module: nn.Module
    in_spec: TensorSpec
    out_spec: TensorSpec

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "in": self.in_spec.to_dict(),
            "out": self.out_spec.to_dict(),
            "params": sum(p.numel() for p in self.module.parameters()),
        }


@dataclass
class Family:
    name: str
    matches: Callable[[nn.Module], bool]
    units: Callable[[nn.Module], list[UnitDef]]
    archs: tuple[str, ...] = ()  # fnmatch patterns of timm names, for listings


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, matches: Callable[[nn.Module], bool], archs: Iterable[str] = ()):
    """Decorator: register a function model -> [UnitDef] as the dissector of a family."""

    def deco(fn: Callable[[nn.Module], list[UnitDef]]):
        _FAMILIES[name] = Family(name, matches, fn, tuple(archs))
        return fn

    return deco


def list_families(pattern: str = "*") -> list[str]:
    _load_families()
    return sorted(n for n in _FAMILIES if fnmatch.fnmatch(n, pattern))


def family_of(model: nn.Module) -> Family:
    _load_families()
    for fam in _FAMILIES.values():
        if fam.matches(model):
            return fam
    raise DeryError(
        f"Unsupported model family {type(model).__name__!r}. Supported families: {', '.join(list_families())}.",
        "dissect",
    )


def _load_families() -> None:
    from dery_deploy.dissect import families  # noqa: F401  (registers on import)


class Borrowed(nn.Module):
    """Runs one of a timm model's own methods on a subset of its submodules.

    Used where a unit is not a single submodule (a ViT's embedding step, a classifier head), so the
    unit computes exactly what timm computes while owning only its own parameters. The model's
    plain attributes (flags, rates, token counts) are copied; the listed modules/parameters shared.
    """

    def __init__(self, model: nn.Module, method: Callable, members: Iterable[str], methods: Iterable[str] = ()):
        super().__init__()
        for key, value in vars(model).items():
            if not key.startswith("_") and key != "training":
                object.__setattr__(self, key, value)
        for m in members:
            value = getattr(model, m)
            if isinstance(value, (nn.Module, nn.Parameter)) or value is None:
                setattr(self, m, value)
            else:  # a buffer or a plain tensor attribute
                self.register_buffer(m, value, persistent=False)
        for name in methods:  # helper methods the borrowed method calls, e.g. ViT's `pool`
            object.__setattr__(self, name, types.MethodType(getattr(type(model), name), self))
        self._method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._method(self, x)


def staged_units(stages, prefix: str, layout: str) -> list[UnitDef]:
    """Units of stages that each hold an optional `downsample` module and a `blocks` sequence
    (ConvNeXt, Swin): the downsample unit where it is not an Identity, then one unit per block."""
    units = []
    for s, stage in enumerate(stages):
        if not isinstance(stage.downsample, nn.Identity):
            units.append(UnitDef(f"{prefix}.{s}.downsample", "downsample", stage.downsample, layout))
        for i, blk in enumerate(stage.blocks):
            units.append(UnitDef(f"{prefix}.{s}.blocks.{i}", "block", blk, layout))
    return units


def seq(model: nn.Module, *names: str) -> nn.Sequential:
    """The named children of `model`, in order, as one Sequential (e.g. conv1, bn1, act1, maxpool)."""
    return nn.Sequential(*[getattr(model, n) for n in names])


@dataclass
class Dissection:
    arch: str
    family: str
    input_spec: TensorSpec
    units: list[Unit] = field(default_factory=list)

    @property
    def body(self) -> list[Unit]:
        """Units a block can be cut from: everything but the classifier head."""
        return [u for u in self.units if u.kind != "head"]

    @property
    def num_body_units(self) -> int:
        return len(self.body)

    def boundary_spec(self, i: int) -> TensorSpec:
        """Spec of boundary i: 0 = the input image, i = output of unit i-1."""
        return self.input_spec if i == 0 else self.units[i - 1].out_spec

    def block(self, start: int, end: int) -> nn.Sequential:
        """Units [start, end) as one runnable module, taking boundary `start`'s tensor."""
        if not 0 <= start < end <= len(self.units):
            raise DeryError(f"unit range [{start}, {end}) outside 0..{len(self.units)} of {self.arch}", "dissect")
        return nn.Sequential(*[u.module for u in self.units[start:end]])

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "family": self.family,
            "input": self.input_spec.to_dict(),
            "units": [u.to_dict() for u in self.units],
        }


def spec_of(t: torch.Tensor, layout: str, input_size: int, grid=None, prefix: int = 0) -> TensorSpec:
    """Derive and check the spec of a batched tensor emitted in `layout`."""
    shape = tuple(t.shape[1:])
    if layout == "NCHW":
        if len(shape) != 3:
            raise AssertionError(f"NCHW unit emitted shape {shape}")
        c, h, w = shape
    elif layout == "NHWC":
        if len(shape) != 3:
            raise AssertionError(f"NHWC unit emitted shape {shape}")
        h, w, c = shape
    elif layout == "NLC":
        if len(shape) != 2 or grid is None:
            raise AssertionError(f"NLC unit emitted shape {shape} (grid {grid})")
        h, w = grid
        if shape[0] != prefix + h * w:
            raise AssertionError(f"token count {shape[0]} != prefix {prefix} + grid {h}x{w}")
        c = shape[1]
    else:
        if len(shape) != 1:
            raise AssertionError(f"NC unit emitted shape {shape}")
        return TensorSpec("NC", shape[0])
    return TensorSpec(layout, c, h, w, prefix, input_size / h)


@torch.no_grad()
def dissect(model: nn.Module, arch: str, input_spec: TensorSpec) -> Dissection:
    """Cut a timm model into units and derive the tensor spec at every boundary.

    Raises:
        DeryError: the model's family is not supported.
        AssertionError: a family module emitted inconsistent specs (a bug, not a user error).
    """
    fam = family_of(model)
    defs = fam.units(model)
    was_training = model.training
    model.eval()
    size = input_spec.height
    x = torch.zeros(2, *input_spec.shape)
    d = Dissection(arch, fam.name, input_spec)
    spec_in = input_spec
    last_reduction = 1.0
    for i, ud in enumerate(defs):
        x = ud.module(x)
        out = spec_of(x, ud.layout, size, ud.grid, ud.prefix)
        if out.spatial:
            assert out.reduction >= last_reduction, f"{arch}: reduction decreases at unit {ud.name}"
            last_reduction = out.reduction
        d.units.append(Unit(i, ud.name, ud.kind, ud.module, spec_in, out))
        spec_in = out
    kinds = [u.kind for u in d.units]
    assert kinds[0] == "stem" and kinds[-1] == "head" and kinds.count("head") == 1, f"{arch}: units {kinds}"
    model.train(was_training)
    return d


@torch.no_grad()
def equivalence_error(model: nn.Module, d: Dissection, x: torch.Tensor) -> float:
    """Max abs difference between model(x) and running all units in order (fp32, eval mode)."""
    model.eval()
    ref = model(x)
    y = x
    for u in d.units:
        y = u.module(y)
    return float((ref - y).abs().max())
