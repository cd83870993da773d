"""Swin Transformer (timm keeps it channels-last): patch embedding, then per stage its patch
merging (downsample) and its blocks, head. Boundaries are NHWC."""

from torch import nn
from timm.models.swin_transformer import SwinTransformer

from dery_deploy.dissect.core import Borrowed, UnitDef, register_family


@register_family("swin", lambda m: isinstance(m, SwinTransformer), archs=("swin_*",))
def swin_units(model: SwinTransformer) -> list[UnitDef]:
    units = [UnitDef("patch_embed", "stem", model.patch_embed, "NHWC")]
    for s, layer in enumerate(model.layers):
        if not isinstance(layer.downsample, nn.Identity):
            units.append(UnitDef(f"layers.{s}.downsample", "downsample", layer.downsample, "NHWC"))
        for i, blk in enumerate(layer.blocks):
            units.append(UnitDef(f"layers.{s}.blocks.{i}", "block", blk, "NHWC"))
    head = nn.Sequential(model.norm, Borrowed(model, type(model).forward_head, ["head"]))
    units.append(UnitDef("head", "head", head, "NC"))
    return units
