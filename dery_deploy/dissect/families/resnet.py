"""ResNet / ResNet-D / resnet10t-style stems: stem, one unit per residual block, head.

The downsample of each stage lives inside its first residual block (the shortcut projection),
so there is no separate downsample unit.
"""

from timm.models.resnet import ResNet

from dery_deploy.dissect.core import Borrowed, UnitDef, register_family, seq


@register_family("resnet", lambda m: isinstance(m, ResNet), archs=("resnet*", "resnext*", "seresnet*", "wide_resnet*"))
def resnet_units(model: ResNet) -> list[UnitDef]:
    units = [UnitDef("stem", "stem", seq(model, "conv1", "bn1", "act1", "maxpool"), "NCHW")]
    for s in range(1, 5):
        for i, blk in enumerate(getattr(model, f"layer{s}")):
            units.append(UnitDef(f"layer{s}.{i}", "block", blk, "NCHW"))
    units.append(UnitDef("head", "head", Borrowed(model, type(model).forward_head, ["global_pool", "fc"]), "NC"))
    return units
