"""RegNet X / Y: stem, one unit per block of stages s1..s4, head (final_conv + classifier)."""

from timm.models.regnet import RegNet
from torch import nn

from dery_deploy.dissect.core import Borrowed, UnitDef, register_family


@register_family("regnet", lambda m: isinstance(m, RegNet), archs=("regnet*",))
def regnet_units(model: RegNet) -> list[UnitDef]:
    units = [UnitDef("stem", "stem", model.stem, "NCHW")]
    stages = [n for n, _ in model.named_children() if n.startswith("s") and n[1:].isdigit()]
    for s in stages:
        for name, blk in getattr(model, s).named_children():
            units.append(UnitDef(f"{s}.{name}", "block", blk, "NCHW"))
    head = nn.Sequential(model.final_conv, Borrowed(model, type(model).forward_head, ["head"]))
    units.append(UnitDef("head", "head", head, "NC"))
    return units
