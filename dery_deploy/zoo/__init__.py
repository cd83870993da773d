"""Zoo specs, donor loading (timm), embedded zoos."""

from dery_deploy.zoo.load import get_zoo, list_zoos, load_donor
from dery_deploy.zoo.spec import DonorSpec, InputSpec, ZooSpec, parse_zoo

__all__ = ["DonorSpec", "InputSpec", "ZooSpec", "get_zoo", "list_zoos", "load_donor", "parse_zoo"]
