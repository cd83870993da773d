"""EfficientNet / MobileNetV3 (timm's `_efficientnet_blocks` family, incl. tinynet, mnasnet, lcnet).

Units: stem (conv_stem + bn1), one unit per inverted-residual / depthwise-separable block, head.
The 1x1 `conv_head` widens to 1024-1280 channels only to feed the classifier, so it belongs to
the head, not to a block a reassembled network would reuse.
"""

from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from torch import nn

from dery_deploy.dissect.core import Borrowed, UnitDef, register_family, seq


def _blocks(model) -> list[UnitDef]:
    units = [UnitDef("stem", "stem", seq(model, "conv_stem", "bn1"), "NCHW")]
    for s, stage in enumerate(model.blocks):
        for i, blk in enumerate(stage):
            units.append(UnitDef(f"blocks.{s}.{i}", "block", blk, "NCHW"))
    return units


@register_family(
    "efficientnet",
    lambda m: isinstance(m, EfficientNet),
    archs=("efficientnet*", "tinynet*", "mnasnet*", "mobilenetv2*"),
)
def efficientnet_units(model: EfficientNet) -> list[UnitDef]:
    head = nn.Sequential(
        seq(model, "conv_head", "bn2"), Borrowed(model, type(model).forward_head, ["global_pool", "classifier"])
    )
    return _blocks(model) + [UnitDef("head", "head", head, "NC")]


@register_family("mobilenetv3", lambda m: isinstance(m, MobileNetV3), archs=("mobilenetv3*", "lcnet*"))
def mobilenetv3_units(model: MobileNetV3) -> list[UnitDef]:
    head = Borrowed(
        model, type(model).forward_head, ["global_pool", "conv_head", "norm_head", "act2", "flatten", "classifier"]
    )
    return _blocks(model) + [UnitDef("head", "head", head, "NC")]
