"""ConvNeXt: stem, then per stage its downsample layer (when it has one) and its blocks, head."""

from torch import nn
from timm.models.convnext import ConvNeXt

from dery_deploy.dissect.core import Borrowed, UnitDef, register_family


@register_family("convnext", lambda m: isinstance(m, ConvNeXt), archs=("convnext*",))
def convnext_units(model: ConvNeXt) -> list[UnitDef]:
    units = [UnitDef("stem", "stem", model.stem, "NCHW")]
    for s, stage in enumerate(model.stages):
        if not isinstance(stage.downsample, nn.Identity):
            units.append(UnitDef(f"stages.{s}.downsample", "downsample", stage.downsample, "NCHW"))
        for i, blk in enumerate(stage.blocks):
            units.append(UnitDef(f"stages.{s}.blocks.{i}", "block", blk, "NCHW"))
    head = nn.Sequential(model.norm_pre, Borrowed(model, type(model).forward_head, ["head"]))
    units.append(UnitDef("head", "head", head, "NC"))
    return units
