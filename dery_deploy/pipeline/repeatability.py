"""Which thread counts may ship: a count whose measurements do not repeat is left out before budgets and selection.

A target's repeatability is its profile's noise index over all its items: the median over the items of how
much slower the item's typical window ran than its quiet one (`Record.noise`, `runtime/harness.py`), the
figure every pass already records. It says how far two measurements of the same file, a window apart, disagree.

The rule, among the targets that differ only in their thread count (the same runtime and precision): a count
is not shipped when its noise index is above both `MAX_NOISE` (5%) and `RATIO` (2) times that of the least
noisy count of the same runtime and precision, which always stays. Why these figures:
- 5%: a quiet machine's noise index is well under it (0.3-0.6% for the tiny zoo's one-thread profiles on this project's
  2-core VM, 3.2-3.5% for the fp32 one-thread profiles of the shared Xeon evidence), and a figure that moves
  more between windows cannot be reproduced within the 3% a user's own measurement is held to (issue 26).
- 2x the least noisy count: the profiles of two counts are taken minutes apart, so a busy or drifting machine
  raises both; only a count noisier than another count was on the same machine is the count's own doing
  (on the 2-core VM two threads moved 10-23% between halves of one pass where one thread moved 0.4-1.9%).
- the least noisy count stays: the run must measure some count to ship anything, and when every count is
  noisy, it is the machine that does not repeat; the final pass and the budget verdict say so.
A profile without noise figures (imported, or from before they were recorded) reads 0: in doubt, kept.
The dropped targets are recorded in run.json (`RunManifest.unrepeatable`) and the report with their figures.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from dery_deploy.assemble.pool import target_of
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.profile.store import Profile

MAX_NOISE = 0.05  # a count's noise index up to this always repeats well enough
RATIO = 2.0  # ... and above it, a count this many times noisier than its runtime's least noisy count is dropped


@dataclass
class UnrepeatableTarget:
    """A target left out because its measurements do not repeat: its noise index, the count it was held
    against and that one's, and the sentence the terminal and the report say."""

    target: str
    noise_index: float
    against: str
    against_noise_index: float
    why: str


def noise_index(profile: Profile) -> float:
    """The profile's noise index over all its items (0 where it records none)."""
    noise = [rec.noise for rec in profile.records.values()]
    return round(statistics.median(noise), 5) if noise else 0.0


def repeatable(models: list[LatencyModel]) -> tuple[list[LatencyModel], list[UnrepeatableTarget]]:
    """The latency models whose counts repeat (in order), and the targets dropped by the rule above."""
    noise = [noise_index(m.profile) for m in models]
    dropped: list[UnrepeatableTarget] = []
    for i, m in enumerate(models):
        same = [j for j, o in enumerate(models) if _runtime(o) == _runtime(m)]
        best = min(same, key=lambda j: (noise[j], j))
        if i != best and does_not_repeat(noise[i], noise[best]):
            a, b = target_of(m), target_of(models[best])
            why = (
                f"{a} not searched: its measurements do not repeat (noise index {100 * noise[i]:.1f}%, above "
                f"{100 * MAX_NOISE:.0f}% and {RATIO:g}x {b}'s {100 * noise[best]:.1f}%)"
            )
            dropped.append(UnrepeatableTarget(a, noise[i], b, noise[best], why))
    gone = {d.target for d in dropped}
    return [m for m in models if target_of(m) not in gone], dropped


def does_not_repeat(noise: float, least: float) -> bool:
    """The rule: noisier than `MAX_NOISE` and than `RATIO` times the least noisy count of the same runtime."""
    return noise > MAX_NOISE and noise > RATIO * least


def _runtime(m: LatencyModel) -> tuple[str, str]:
    return m.profile.backend, m.profile.precision
