"""Swin Transformer (timm keeps it channels-last): patch embedding, then per stage its patch
merging (downsample) and its blocks, head. Boundaries are NHWC."""

from timm.models.swin_transformer import SwinTransformer
from torch import nn

from dery_deploy.dissect.core import Borrowed, UnitDef, register_family, staged_units


@register_family("swin", lambda m: isinstance(m, SwinTransformer), archs=("swin_*",))
def swin_units(model: SwinTransformer) -> list[UnitDef]:
    units = [UnitDef("patch_embed", "stem", model.patch_embed, "NHWC")] + staged_units(model.layers, "layers", "NHWC")
    head = nn.Sequential(model.norm, Borrowed(model, type(model).forward_head, ["head"]))
    units.append(UnitDef("head", "head", head, "NC"))
    return units
