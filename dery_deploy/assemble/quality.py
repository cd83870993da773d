"""The program's task-aware quality estimate: how good the features that reach the head are for the
user's task, and how much each seam loses.

- Transferability of a donor's features at a boundary: the closed-form leave-one-out accuracy of a
  ridge probe on the pooled features of the task's labelled training images (the linear-evaluation
  protocol; LogME and kNN rank similarly, see the notes of `scripts/bench_quality.py`). Cheap: one
  forward pass of the labelled images through every donor.
- What a seam loses: the least-squares stitch error of the adapter between the two blocks, fitted on
  unlabelled task images (0 is a perfect stitch, 1 is no better than the downstream donor's mean).

quality = transferability(last block's donor at its end) - SEAM_POINTS * sum over seams of stitch error,
in accuracy points; the program maximises it, so its top-N are the chains whose head sees good
features through few, good seams.
"""

from __future__ import annotations

import torch

from dery_deploy.data.task import Task
from dery_deploy.dissect import Dissection
from dery_deploy.network.adapters import Adapter, fit_least_squares

# accuracy points a completely failed seam costs (stitch error 1); measured after healing on the
# fashion zoo a seam of error 0.9 cost 7-10 points (scripts/bench_quality.py), before healing ~20
SEAM_POINTS = 12.0
PROBE_LABELS = 2000  # labelled images the transferability probe uses at most


def pooled(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A boundary's features pooled to one vector per image (spatial mean, or the token mean)."""
    if layout == "NCHW":
        return x.mean((2, 3))
    if layout == "NHWC":
        return x.mean((1, 2))
    if layout == "NLC":
        return x.mean(1)
    return x


def ridge_loo_accuracy(feats: torch.Tensor, labels: torch.Tensor, ridge: float = 1.0) -> float:
    """Leave-one-out accuracy (%) of a ridge probe to one-hot labels, in closed form: for ridge, the
    prediction without sample i is (y_hat_i - h_ii * y_i) / (1 - h_ii), h the hat matrix."""
    f = feats.double()
    f = (f - f.mean(0)) / f.std(0).clamp_min(1e-6)
    f = torch.cat([f, torch.ones(len(f), 1, dtype=torch.double)], 1)
    t = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).double()
    gram = f.T @ f + ridge * torch.eye(f.shape[1], dtype=torch.double)
    solved = torch.linalg.solve(gram, f.T)
    h = (f * solved.T).sum(1)
    loo = (f @ (solved @ t) - h[:, None] * t) / (1 - h[:, None]).clamp_min(1e-9)
    return 100.0 * float((loo.argmax(1) == labels).double().mean())


@torch.no_grad()
def transferability(
    dissections: dict[str, Dissection], task: Task, n: int = PROBE_LABELS, seed: int = 0
) -> dict[tuple[str, int], float]:
    """(donor, boundary) -> ridge leave-one-out accuracy (%) of its pooled features on labelled images."""
    x, y = task.labelled_sample(n, seed)
    out = {}
    for name, d in dissections.items():
        h = x
        for i, unit in enumerate(d.body):
            h = unit.module.eval()(h)
            out[(name, i + 1)] = ridge_loo_accuracy(pooled(h, unit.out_spec.layout), y)
    return out


def seam_errors(dissections: dict[str, Dissection], partition, features) -> dict[tuple[str, int, str, int], float]:
    """Least-squares stitch error of every seam the partition allows (consecutive sets, two donors).

    Args:
        features: (donor, boundary) -> the donor's own representation on probe images (AdapterFitter.features).
    """
    out = {}
    for k in range(len(partition.sets) - 1):
        for a in partition.sets[k].blocks:
            for b in partition.sets[k + 1].blocks:
                if a.donor == b.donor:
                    continue
                key = (a.donor, a.end, b.donor, b.start)
                if key not in out:
                    src, dst = dissections[a.donor].boundary_spec(a.end), dissections[b.donor].boundary_spec(b.start)
                    adapter = Adapter(src, dst)
                    out[key] = fit_least_squares(adapter, features(a.donor, a.end), features(b.donor, b.start))
    return out
