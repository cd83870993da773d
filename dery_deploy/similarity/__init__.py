"""Functional similarity of unit boundaries across donors (linear CKA)."""

from dery_deploy.similarity.cka import MinibatchCKA, linear_cka, minibatch_cka

__all__ = ["MinibatchCKA", "linear_cka", "minibatch_cka"]
