"""A further thread count screened on its whole donors before its full profile: the cheap first look that keeps
the default run from profiling, checking and searching a count that cannot pay.

A run profiles each runtime and precision at its first count in full. For a further count of the same runtime
and precision it first times the whole donors alone (`stages.stage_donor_profile`, with the per-call overhead
item: the profile's first items, one pass, a few seconds; kept, so a full profile later measures only the
rest), and goes no further when, on those donors,
- their measurements do not repeat: the donors' noise index at this count fails the rule of
  `repeatability.py` against the same donors' at the first count (above 5% and twice it), or
- the count is slower than the first count on every donor that may fit a budget of the run, by more than
  both measurements' standard errors, or faster on none of them by MIN_GAIN beyond both errors (a count
  that only ties costs a core and its profile, and buys nothing). The donors that may fit: where the user
  gave budgets, those at most the largest one (plus the margin a near donor is a candidate by) at either
  count; where the run chooses them, every donor but the slowest at the first count, since those budgets
  sit in the gaps below the slowest donor (`budgets.choose_budgets`, from three donors on, unless no gap
  between them is wide enough to hold one: then one budget lies above them all, and this screen may leave
  out a count that only the slowest donor would have gained from). A clean-clone
  quick run profiled onnxruntime/fp32 and openvino/int8 at two threads in full (45 and 56 s of a 365 s
  run) because the slowest donor, vit_tops at 0.8-2 ms, ran as fast or faster at two threads, while every donor under a
  budget ran slower; both were then dominated at every budget.
A block's latency follows its donor's closely on these networks, so a count slower on every whole donor is
nearly always slower on the blocks a plan mixes; where no donor may fit a budget (budgets below every
donor), nothing is screened on speed; `--keep-all-targets` profiles every count in full instead.
Measured on this 2-core VM pinned to one core (the other busy): onnxruntime/fp32 at two threads had a donors'
noise index of 19.4% against 1.6% at one and was screened out in a few seconds, where its full profile and
latency check had taken 35 s; openvino/fp32 at two threads was as fast as at one and was profiled in full.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

import numpy as np

from dery_deploy.pipeline.repeatability import MAX_NOISE, RATIO, does_not_repeat
from dery_deploy.profile.store import Profile, Record

DONOR = "donor|"
# a further count must be faster than the first by this much on some donor that may fit, beyond both errors,
# to be searched: one that gains nothing costs its full profile and latency check and is never picked (seen:
# openvino/int8 at two threads, 1.01-1.06x the one-thread time, 106 s of a default run for nothing)
MIN_GAIN = 0.03
SPELLS = 8  # stretches a thread-spells pass is cut into (thread_spells.py)
SPREAD = 0.10  # the further count's time against the first's may move this much between stretches (max/min - 1)


@dataclass
class ScreenedCount:
    """A further thread count left out on its whole donors: held against which target, and why, with figures."""

    target: str
    against: str
    why: str


def donor_records(profile: Profile) -> dict[str, Record]:
    return {k: rec for k, rec in profile.records.items() if k.startswith(DONOR)}


def may_fit(extra: Profile, first: Profile, within_ms: float | None) -> list[str]:
    """The whole donors both profiles hold that may fit a budget of the run (module docstring)."""
    a, b = donor_records(extra), donor_records(first)
    shared = sorted(set(a) & set(b))
    if within_ms is not None:
        return [k for k in shared if min(a[k].median_ms, b[k].median_ms) <= within_ms]
    if len(shared) >= 3:
        slowest = max(shared, key=lambda k: b[k].median_ms)
        return [k for k in shared if k != slowest]
    return shared


def screened(
    extra: Profile, first: Profile, name: str, first_name: str, within_ms: float | None = None
) -> ScreenedCount | None:
    """The rule above on the whole donors both profiles hold, or None where the count goes on to its full
    profile. `within_ms`: the largest budget a donor may fit (the user's, with the near-donor margin); None
    where the run chooses its budgets."""
    a, b = donor_records(extra), donor_records(first)
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    fit = may_fit(extra, first, within_ms)
    noise_a = statistics.median(a[k].noise for k in shared)
    noise_b = statistics.median(b[k].noise for k in shared)
    lead = f"{name} not profiled beyond its {len(shared)} whole donors"
    if does_not_repeat(noise_a, noise_b):
        return ScreenedCount(
            name,
            first_name,
            f"{lead}: their measurements do not repeat (noise index {100 * noise_a:.1f}%, above "
            f"{100 * MAX_NOISE:.0f}% and {RATIO:g}x {first_name}'s {100 * noise_b:.1f}%)",
        )

    def margin(k: str) -> float:  # how surely the donor is slower at this count (ms; > 0: beyond both errors)
        return a[k].median_ms * (1 - a[k].uncertainty) - b[k].median_ms * (1 + b[k].uncertainty)

    if fit and all(margin(k) > 0 for k in fit):
        k = min(fit, key=margin)
        which = "every one" if len(fit) == len(shared) else f"every one that may fit a budget ({len(fit)})"
        return ScreenedCount(
            name,
            first_name,
            f"{lead}: slower than {first_name} on {which} beyond both measurements' errors (closest: "
            f"{a[k].info.get('donor', k)} {a[k].median_ms:.4f} ms ±{100 * a[k].uncertainty:.1f}% vs "
            f"{b[k].median_ms:.4f} ms ±{100 * b[k].uncertainty:.1f}%)",
        )

    def gain(k: str) -> float:  # how surely the donor is faster at this count, relative (> 0: by MIN_GAIN)
        return 1 - a[k].median_ms * (1 + a[k].uncertainty) / (b[k].median_ms * (1 - b[k].uncertainty)) - MIN_GAIN

    if fit and all(gain(k) <= 0 for k in fit):
        k = max(fit, key=gain)
        return ScreenedCount(
            name,
            first_name,
            f"{lead}: faster than {first_name} by at least {100 * MIN_GAIN:.0f}% beyond both measurements' "
            f"errors on none that may fit a budget ({len(fit)}; best: {a[k].info.get('donor', k)} "
            f"{a[k].median_ms:.4f} ms ±{100 * a[k].uncertainty:.1f}% vs {b[k].median_ms:.4f} ms "
            f"±{100 * b[k].uncertainty:.1f}%)",
        )
    return None


@dataclass
class SpellCheck:
    """One check of a further thread count: the donor, the two targets, and the ratio per stretch."""

    donor: str
    first: str
    extra: str
    threads: int
    ratios: list[float]
    seconds: float
    checks: int = 1  # passes pooled: one before the count's full profile, one after its latency check

    def pooled(self, later: SpellCheck) -> SpellCheck:
        """This check with a later one's stretches added (the same donor and targets)."""
        return replace(
            self, ratios=self.ratios + later.ratios, seconds=self.seconds + later.seconds, checks=self.checks + 1
        )

    def _span(self) -> str:
        each = self.seconds / max(len(self.ratios), 1)
        apart = f" in {self.checks} passes half a minute or more apart" if self.checks > 1 else ""
        return f"{len(self.ratios)} stretches of {each:.0f} s timed in turn{apart}"

    @property
    def spread(self) -> float:
        return max(self.ratios) / min(self.ratios) - 1 if self.ratios else 0.0

    @property
    def repeats(self) -> bool:
        return self.spread <= SPREAD

    def held(self) -> str:
        """The sentence for a count that repeated."""
        return (
            f"{self.threads} threads repeated on this machine: {self.donor} at {self.extra} ran "
            f"{min(self.ratios):.2f}-{max(self.ratios):.2f}x its {self.first} time across {self._span()} (a spread "
            f"of {100 * self.spread:.0f}%, at most {100 * SPREAD:.0f}%)"
        )

    def why(self, name: str) -> str:
        """The sentence the terminal and the report say for a target `name` left out by this check."""
        lo, hi = min(self.ratios), max(self.ratios)
        return (
            f"{name} not searched: {self.threads} threads do not repeat on this machine ({self.donor} at "
            f"{self.extra} ran {lo:.2f}-{hi:.2f}x its {self.first} time across {self._span()}, a spread of "
            f"{100 * self.spread:.0f}%, above {100 * SPREAD:.0f}%)"
        )


def stretch_ratios(extra: list[float], first: list[float], stretches: int = SPELLS) -> list[float]:
    """Per consecutive stretch of one pass's windows (time order), the median window of `extra` over that of
    `first`. Both items took one window per round of the pass, so the i-th windows are neighbours in time."""
    n = min(len(extra), len(first))
    edges = np.linspace(0, n, stretches + 1).astype(int)
    return [
        round(statistics.median(extra[a:b]) / statistics.median(first[a:b]), 4)
        for a, b in zip(edges[:-1], edges[1:])
        if b > a
    ]
