"""Cover-set partition of the donors into K ordered equivalence sets."""

from dery_deploy.partition.cover_set import PartitionProblem, optimise

__all__ = ["PartitionProblem", "optimise"]
