"""Dissection: timm models cut into units with a checked tensor spec at every boundary."""

from dery_deploy.dissect.core import Dissection, Unit, dissect, equivalence_error, list_families, register_family
from dery_deploy.dissect.spec import TensorSpec

__all__ = ["Dissection", "TensorSpec", "Unit", "dissect", "equivalence_error", "list_families", "register_family"]
