"""Cover-set partition: cut every donor into K contiguous blocks forming K equivalence sets.

Sets are ordered by depth: set k holds the k-th block of every donor. DeRy (Yang et al. 2022)
assigns blocks to sets by similarity; with contiguous cuts the k-th block of one donor is the only
one whose input boundary can follow the (k-1)-th block of another at a similar depth, and ordering
the sets makes every one-block-per-set choice a network whose depth increases, which is what the
assembler needs. It also satisfies "no two blocks of one donor in a set" by construction.

Similarity of two blocks (DeRy, eq. 3): CKA of their input boundaries + CKA of their output
boundaries. Objective: sum over sets of each member's similarity to the set's medoid (the member
most similar to the others): the k-medoids form of the paper's cover-set objective.

Optimiser: alternating maximisation from many seeded random starts. For fixed centres, the best
cut of one donor into K contiguous blocks decomposes over cut points, so an exact dynamic program
(O(K N L) for N units and max block length L) re-partitions each donor; then the medoids are
re-chosen; a round is kept only if it raises the objective, so each restart ends in finitely
many rounds. `method="local"` replaces the DP
with the paper's move-one-unit-at-a-time step (first-improvement moves of one cut point by one
unit), kept as the baseline the benchmark compares against.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from dery_deploy.errors import DeryError


@dataclass
class PartitionProblem:
    donors: list[str]
    units: dict[str, int]  # body units per donor
    sim: dict[tuple[str, str], np.ndarray]  # (a, b) -> CKA[(N_a+1) x (N_b+1)], both orders present
    K: int
    eps: float = 0.2

    def __post_init__(self) -> None:
        if self.K < 1:
            raise DeryError(f"K must be >= 1, got {self.K}", "partition")
        if self.eps < 0:
            raise DeryError(f"--eps must be >= 0 (it loosens the block-size bound), got {self.eps}", "partition")
        short = min(self.donors, key=lambda d: self.units[d])
        if self.K > self.units[short]:
            raise DeryError(
                f"K={self.K} is larger than donor {short!r} ({self.units[short]} units); use "
                f"-K {self.units[short]} or fewer, or drop that donor",
                "partition",
            )
        for a in self.donors:
            for b in self.donors:
                m = self.sim.get((a, b))
                if m is None or m.shape != (self.units[a] + 1, self.units[b] + 1):
                    raise DeryError(
                        f"similarity for {a}/{b} is missing or has the wrong shape; rerun `dery similarity`",
                        "partition",
                    )

    def max_len(self, d: str) -> int:
        return max(1, math.floor(math.ceil(self.units[d] / self.K) * (1 + self.eps) + 1e-9))


Cuts = dict[str, tuple[int, ...]]  # donor -> (0, p1, ..., N)


def block_sim(p: PartitionProblem, a: str, sa: int, ea: int, b: str, sb: int, eb: int) -> float:
    m = p.sim[(a, b)]
    return float(m[sa, sb] + m[ea, eb])


def medoids(p: PartitionProblem, cuts: Cuts) -> tuple[list[str], float]:
    """The medoid donor of every set and the objective of this partition."""
    centres, total = [], 0.0
    for k in range(p.K):
        best, best_v = None, -np.inf
        for c in p.donors:
            v = sum(block_sim(p, d, cuts[d][k], cuts[d][k + 1], c, cuts[c][k], cuts[c][k + 1]) for d in p.donors)
            if v > best_v + 1e-12:
                best, best_v = c, v
        assert best is not None  # every set has at least one donor
        centres.append(best)
        total += best_v
    return centres, total


def objective(p: PartitionProblem, cuts: Cuts) -> float:
    return medoids(p, cuts)[1]


def _scores(p: PartitionProblem, d: str, cuts: Cuts, centres: list[str]):
    """in_s[k, q], out_s[k, q]: similarity of a block of d starting / ending at boundary q to centre k."""
    n = p.units[d]
    in_s = np.empty((p.K, n + 1))
    out_s = np.empty((p.K, n + 1))
    for k, c in enumerate(centres):
        m = p.sim[(d, c)]
        in_s[k] = m[:, cuts[c][k]]
        out_s[k] = m[:, cuts[c][k + 1]]
    return in_s, out_s


def best_cut(p: PartitionProblem, d: str, in_s: np.ndarray, out_s: np.ndarray) -> tuple[int, ...]:
    """Exact DP: the cut of donor d into K blocks (each 1..L units) maximising the sum of
    in_s[k, start_k] + out_s[k, end_k]."""
    n, K, L = p.units[d], p.K, p.max_len(d)
    if K * L < n:
        raise DeryError(
            f"donor {d!r} ({n} units) cannot be cut into {K} blocks of at most {L} units; raise --eps", "partition"
        )
    f = np.full((K + 1, n + 1), -np.inf)
    arg = np.zeros((K + 1, n + 1), dtype=int)
    f[0, 0] = 0.0
    for k in range(K):
        base = f[k] + in_s[k]  # value of starting block k at boundary q
        for q in range(1, n + 1):
            lo = max(0, q - L)
            if lo >= q:
                continue
            seg = base[lo:q]
            j = int(np.argmax(seg))
            if seg[j] > -np.inf:
                f[k + 1, q] = seg[j] + out_s[k, q]
                arg[k + 1, q] = lo + j
    cuts = [n]
    for k in range(K, 0, -1):
        cuts.append(int(arg[k, cuts[-1]]))
    return tuple(reversed(cuts))


def _cut_value(cut, in_s, out_s) -> float:
    return float(sum(in_s[k, cut[k]] + out_s[k, cut[k + 1]] for k in range(len(cut) - 1)))


def local_cut(p: PartitionProblem, d: str, cut: tuple[int, ...], in_s, out_s) -> tuple[int, ...]:
    """The paper's step: move one cut point by one unit while that improves, within size bounds."""
    L = p.max_len(d)
    points = list(cut)
    val = _cut_value(points, in_s, out_s)
    improved = True
    while improved:
        improved = False
        for i in range(1, len(points) - 1):
            for step in (-1, 1):
                c = points.copy()
                c[i] += step
                if not (1 <= c[i] - c[i - 1] <= L and 1 <= c[i + 1] - c[i] <= L):
                    continue
                v = _cut_value(c, in_s, out_s)
                if v > val + 1e-12:
                    points, val, improved = c, v, True
    return tuple(int(c) for c in points)


def random_cut(n: int, K: int, L: int, rng: np.random.Generator) -> tuple[int, ...]:
    """A uniformly drawn cut of n units into K blocks of 1..L units (rejection, then an even split)."""
    for _ in range(200):
        inner = np.sort(rng.choice(np.arange(1, n), size=K - 1, replace=False)) if K > 1 else np.array([], int)
        cut = (0, *inner.tolist(), n)
        if all(1 <= b - a <= L for a, b in zip(cut, cut[1:])):
            return tuple(int(c) for c in cut)
    return tuple(round(i * n / K) for i in range(K + 1))


@dataclass
class PartitionResult:
    cuts: Cuts
    centres: list[str]
    objective: float
    method: str
    restarts: int
    seconds: float
    history: list[float] = field(default_factory=list)  # best objective of each restart


def optimise(
    p: PartitionProblem, restarts: int = 50, seed: int = 0, method: str = "dp", max_iter: int = 100
) -> PartitionResult:
    """Alternating optimisation from `restarts` seeded random starts; the best partition wins."""
    if restarts < 1:
        raise DeryError(f"--restarts must be >= 1, got {restarts}", "partition")
    if method not in ("dp", "local"):
        raise ValueError(method)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    best: tuple[float, Cuts, list[str]] | None = None
    history = []
    for _ in range(restarts):
        cuts = {d: random_cut(p.units[d], p.K, p.max_len(d), rng) for d in p.donors}
        centres, val = medoids(p, cuts)
        for _ in range(max_iter):
            new = {}
            for d in p.donors:
                in_s, out_s = _scores(p, d, cuts, centres)
                new[d] = best_cut(p, d, in_s, out_s) if method == "dp" else local_cut(p, d, cuts[d], in_s, out_s)
            # Re-cut every donor against the same (old) centres, then re-centre.
            new_centres, new_val = medoids(p, new)
            if new_val <= val + 1e-9:
                break
            cuts, centres, val = new, new_centres, new_val
        history.append(val)
        if best is None or val > best[0] + 1e-12:
            best = (val, cuts, centres)
    assert best is not None  # restarts >= 1
    return PartitionResult(best[1], best[2], best[0], method, restarts, time.time() - t0, history)
