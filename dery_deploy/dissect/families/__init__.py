"""One module per timm family; importing this package registers them all."""

from dery_deploy.dissect.families import (  # noqa: F401
    byobnet,
    convnext,
    efficientnet,
    regnet,
    resnet,
    swin,
    vit,
)
