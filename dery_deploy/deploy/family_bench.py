"""Every path of a family timed in one interleaved pass, with `dery bench`'s measurement (`deploy.bench`).

A family's promise is a comparison: which path fits which budget. Paths timed one after another are
compared across the machine's drift (tens of percent within minutes on a shared machine, as
`runtime.harness` documents); here every path gets CHUNK back-to-back calls per turn, in a seeded shuffled
order, turn after turn until every path has its calls and seconds, so the drift hits all paths alike. The
calls are each path's session's own timer (`Session.timer`), the statistics `deploy.bench`'s (percentiles
over all calls, block-bootstrap standard error, noise index: `result_of`) and the verdict its `judge`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dery_deploy.deploy.base import CHUNK, Session
from dery_deploy.deploy.bench import (
    MAX_ALLOWANCE,
    MAX_ROUNDS,
    WARMUP_S,
    BenchResult,
    Verdict,
    back_to_back,
    judge,
    requirements,
    result_of,
)
from dery_deploy.deploy.info import DeployInfo
from dery_deploy.deploy.machine import same_machine

STATISTIC = "per-call percentiles over all calls of each path (`dery bench`'s); standard error: moving-block bootstrap"
MEASURED_IN = "the family's own pass: every path interleaved, CHUNK calls a turn in a shuffled order (`dery bench`)"


def bench_input(info: DeployInfo) -> np.ndarray:
    """The seeded batch `dery bench` times a package with."""
    i = info.input
    x = np.random.default_rng(0).standard_normal((info.runtime.batch, i.channels, i.height, i.width), np.float32)
    return np.ascontiguousarray(x)


class FamilyBench:
    """The paths' sessions (built once, by the caller), warmed up once, then timed in interleaved rounds
    whose calls are pooled with the earlier rounds' (as `PackageBench` pools its rounds)."""

    def __init__(
        self,
        items: dict[str, tuple[DeployInfo, Session]],
        percentile: int | None = None,
        calls: int | None = None,
        seconds: float | None = None,
        warmup_s: float = WARMUP_S,
    ):
        budget_qs = [info.budget.percentile for info, _ in items.values() if info.budget]
        self.calls, self.seconds = requirements(max([percentile or 50, *budget_qs]), calls, seconds)
        self.items, self.warmup_s = items, warmup_s
        self.timers = {name: session.timer(bench_input(info)) for name, (info, session) in items.items()}
        self.samples: dict[str, list[float]] = {name: [] for name in items}
        self.timed_s = dict.fromkeys(items, 0.0)  # each path's own seconds of calls
        self.order = random.Random(0)
        self.rounds = 0
        self.t0 = 0.0

    def round(self, progress: Callable[[int, float], None] | None = None) -> dict[str, BenchResult]:
        """One more interleaved round: every path at least `calls` more calls over `seconds` more of its own
        time; each path's result over every call of every round so far."""
        if self.rounds == 0:
            for timer in self.timers.values():  # caches, thread pools, the runtime's lazy initialisation
                back_to_back(timer, 50, self.warmup_s, None)
            self.t0 = time.perf_counter()
        goal = {n: (len(s) + self.calls, self.timed_s[n] + self.seconds) for n, s in self.samples.items()}
        names = list(self.timers)
        while any(len(self.samples[n]) < c or self.timed_s[n] < s for n, (c, s) in goal.items()):
            self.order.shuffle(names)
            for name in names:  # every path every turn, done or not: the pass stays interleaved to its end
                t = time.perf_counter()
                self.samples[name] += self.timers[name](CHUNK)
                self.timed_s[name] += time.perf_counter() - t
            if progress is not None:
                progress(sum(map(len, self.samples.values())), time.perf_counter() - self.t0)
        self.rounds += 1
        seconds = time.perf_counter() - self.t0
        return {
            name: result_of(np.asarray(self.samples[name]), seconds, info, session.effective())
            for name, (info, session) in self.items.items()
        }

    def needs_another_round(self, results: dict[str, BenchResult]) -> bool:
        """A judged path whose standard error is above the cap the verdict allows, with rounds left."""
        if self.rounds >= MAX_ROUNDS:
            return False
        for name, (info, _) in self.items.items():
            res = results[name]
            if info.budget and same_machine(info.fingerprint, res.fingerprint):
                if res.at(info.budget.percentile)[1] > MAX_ALLOWANCE:
                    return True
        return False


@dataclass
class FamilyVerdict:
    """Each path's `judge` verdict, and the family's exit code: the worst of them (2 over, 3 undecided)."""

    verdicts: dict[str, Verdict]

    @property
    def exit_code(self) -> int:
        codes = {v.exit_code for v in self.verdicts.values()}
        return 2 if 2 in codes else 3 if 3 in codes else 0


def judge_family(items: dict[str, DeployInfo], results: dict[str, BenchResult]) -> FamilyVerdict:
    return FamilyVerdict({name: judge(info, results[name]) for name, info in items.items()})
