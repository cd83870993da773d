"""ByobNet models, the hybrid / mobile family this project covers beyond the required ones:
MobileViT (inverted residuals and MobileViT transformer blocks), GERNet, RepVGG-style nets.
Units: stem, one unit per block of every stage, head (final_conv + classifier)."""

from timm.models.byobnet import ByobNet
from torch import nn

from dery_deploy.dissect.core import Borrowed, UnitDef, register_family


@register_family(
    "byobnet", lambda m: isinstance(m, ByobNet), archs=("mobilevit_*", "gernet_*", "repvgg_*", "test_byobnet")
)
def byobnet_units(model: ByobNet) -> list[UnitDef]:
    units = [UnitDef("stem", "stem", model.stem, "NCHW")]
    for s, stage in enumerate(model.stages):
        for i, blk in enumerate(stage):
            units.append(UnitDef(f"stages.{s}.{i}", "block", blk, "NCHW"))
    head = nn.Sequential(model.final_conv, Borrowed(model, type(model).forward_head, ["head"]))
    units.append(UnitDef("head", "head", head, "NC"))
    return units
