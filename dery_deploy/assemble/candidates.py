"""Candidates: a choice of one block per set, built with least-squares-initialised adapters (fitted
on the task's unlabelled images) and scored by a training-free proxy on the task's labelled images."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dery_deploy.assemble.program import Evaluation
from dery_deploy.assemble.proxies import get_proxy
from dery_deploy.data.task import Task
from dery_deploy.dissect import Dissection
from dery_deploy.network.adapters import fit_least_squares
from dery_deploy.network.plan import AssembledNet, BlockRef, Plan, build_net, stitch_specs
from dery_deploy.partition.stage import Partition

ADAPTER_PROBE_IMAGES = 256


def plan_from_choice(zoo, partition: Partition, choice: tuple[int, ...], num_classes: int) -> Plan:
    blocks = [
        BlockRef(
            k, partition.sets[k].blocks[o].donor, partition.sets[k].blocks[o].start, partition.sets[k].blocks[o].end
        )
        for k, o in enumerate(choice)
    ]
    return Plan(zoo.name, zoo.hash(), blocks, num_classes, zoo_ref=zoo.ref)


class AdapterFitter:
    """Least-squares adapter init from unlabelled task images, cached per (donor, boundary) pair."""

    def __init__(self, dissections: dict[str, Dissection], probe: torch.Tensor):
        self.dis = dissections
        self.probe = probe
        self._feats: dict[tuple[str, int], torch.Tensor] = {}
        self._fits: dict[tuple[str, int, str, int], tuple[dict, float]] = {}

    @classmethod
    def for_task(
        cls, dissections: dict[str, Dissection], task: Task, n: int = ADAPTER_PROBE_IMAGES, seed: int = 1
    ) -> AdapterFitter:
        return cls(dissections, task.unlabelled_images(n, seed))

    @torch.no_grad()
    def features(self, donor: str, boundary: int) -> torch.Tensor:
        """The donor's own representation at a boundary on the probe images."""
        key = (donor, boundary)
        if key not in self._feats:
            x = self.probe
            if boundary:
                x = self.dis[donor].block(0, boundary).eval()(x)
            self._feats[key] = x
        return self._feats[key]

    def init(self, net: AssembledNet, plan: Plan) -> list[float]:
        """Fit every adapter of `net` in place; returns the stitch errors after fitting."""
        errors = []
        specs = stitch_specs(plan, self.dis)
        for i, (a, b) in enumerate(zip(plan.blocks, plan.blocks[1:])):
            if specs[i] is None:
                continue
            key = (a.donor, a.end, b.donor, b.start)
            adapter = net.adapters[i]
            if key not in self._fits:
                err = fit_least_squares(adapter, self.features(a.donor, a.end), self.features(b.donor, b.start))
                self._fits[key] = ({k: v.clone() for k, v in adapter.state_dict().items()}, err)
            adapter.load_state_dict(self._fits[key][0])
            errors.append(self._fits[key][1])
        return errors


@dataclass
class Candidate:
    plan: Plan
    evaluation: Evaluation
    proxy: float = float("nan")
    stitch_errors: list[float] = field(default_factory=list)
    net: AssembledNet | None = None

    @property
    def predicted_ms(self) -> float:
        return self.evaluation.latency_ms


def score_candidates(
    cands: list[Candidate],
    zoo,
    dissections: dict[str, Dissection],
    fitter: AdapterFitter,
    proxy: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    progress=None,
) -> None:
    fn = get_proxy(proxy)
    task = progress.add_task(f"proxy {proxy}", total=len(cands)) if progress else None
    for c in cands:
        torch.manual_seed(0)  # the head's init is part of the scored network
        net = build_net(c.plan, zoo, dissections)
        c.stitch_errors = fitter.init(net, c.plan)
        c.proxy = fn(net, images, labels)
        c.net = net
        if progress:
            progress.advance(task)
