"""ViT / DeiT: the embedding (patches + prefix tokens + position embedding) is the stem, one unit
per transformer block, head (final norm + pooling + classifier). Boundaries are tokens (NLC) with
the class / register tokens in front of the patch grid."""

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dery_deploy.dissect.core import Borrowed, UnitDef, register_family


def _embed(self, x):
    x = self.patch_embed(x)
    x = self._pos_embed(x)
    x = self.patch_drop(x)
    return self.norm_pre(x)


@register_family("vit", lambda m: isinstance(m, VisionTransformer), archs=("vit_*", "deit_*", "deit3_*"))
def vit_units(model: VisionTransformer) -> list[UnitDef]:
    grid = tuple(model.patch_embed.grid_size)
    prefix = model.num_prefix_tokens
    # DeiT-distilled adds a distillation token and a second classifier; take them where present.
    optional = [m for m in ("dist_token", "head_dist") if hasattr(model, m)]
    stem = Borrowed(
        model,
        _embed,
        ["patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop", "patch_drop", "norm_pre"] + optional[:1],
        methods=["_pos_embed"],
    )
    units = [UnitDef("embed", "stem", stem, "NLC", grid, prefix)]
    for i, blk in enumerate(model.blocks):
        units.append(UnitDef(f"blocks.{i}", "block", blk, "NLC", grid, prefix))
    head = nn.Sequential(
        model.norm,
        Borrowed(
            model,
            type(model).forward_head,
            ["attn_pool", "fc_norm", "head_drop", "head"] + optional[1:],
            methods=["pool"],
        ),
    )
    units.append(UnitDef("head", "head", head, "NC"))
    return units
