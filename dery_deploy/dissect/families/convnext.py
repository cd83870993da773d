"""ConvNeXt: stem, then per stage its downsample layer (when it has one) and its blocks, head."""

from timm.models.convnext import ConvNeXt
from torch import nn

from dery_deploy.dissect.core import Borrowed, UnitDef, register_family, staged_units


@register_family("convnext", lambda m: isinstance(m, ConvNeXt), archs=("convnext*",))
def convnext_units(model: ConvNeXt) -> list[UnitDef]:
    units = [UnitDef("stem", "stem", model.stem, "NCHW")] + staged_units(model.stages, "stages", "NCHW")
    head = nn.Sequential(model.norm_pre, Borrowed(model, type(model).forward_head, ["head"]))
    units.append(UnitDef("head", "head", head, "NC"))
    return units
