"""`dery_deploy.load_family(folder)`: a shipped family, a path picked by budget, with the runtime alone.

    import dery_deploy
    family = dery_deploy.load_family("runs/default/family")
    model = family.at_budget(0.2)            # the most accurate path measured within 0.2 ms at p50
    model.predict(image)                     # an ordinary Predictor
    family.at_budget(0.5, percentile=90)     # another path: its session is built once, then looked up
    family.measure()                         # every path re-timed here, in one interleaved pass

Why a function of its own rather than `load` answering a family: `load` returns a `Predictor`, one
network with `predict`; a family is several, and which one runs is a budget's choice, so the caller says
so (`at_budget`). `load` on a family folder refuses in one line, naming this function.

Which figures decide: the family's own pass as recorded in family.json, until `measure()` has timed the
paths here; the rule is `dery bench`'s (`within_budget`: within the budget by its standard error, and an
undecided figure is not within). On a machine other than the recorded one `at_budget` still answers from
the recorded figures, and says once, in one line, that they come from another machine.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from dery_deploy.deploy.bench import WARMUP_S, BenchResult, describe_machine, within_budget
from dery_deploy.deploy.family_bench import FamilyBench
from dery_deploy.deploy.family_info import FamilyInfo, FamilyPath, read_family
from dery_deploy.deploy.machine import fingerprint, same_machine
from dery_deploy.deploy.predictor import Predictor
from dery_deploy.deploy.sessions import open_session
from dery_deploy.errors import DeryError


class OtherMachineWarning(UserWarning):
    """The family's figures were measured on another machine than this one."""


class Family:
    """A family's paths as predictors, built on first use and kept (module docstring)."""

    def __init__(self, info: FamilyInfo, folder: Path):
        self.info, self.folder = info, folder
        self.measured: dict[str, BenchResult] = {}  # this machine's figures, once `measure()` has run
        self.rounds = 0  # of the last `measure()`
        self._predictors: dict[str, Predictor] = {}
        self._warned = False

    @property
    def paths(self) -> list[FamilyPath]:
        return self.info.paths

    def predictor(self, name: str) -> Predictor:
        """The path `name` as a Predictor; its session is built the first time only."""
        if name not in self._predictors:
            info = self.info.as_package(self.info.path(name))
            self._predictors[name] = Predictor(info, self.folder, open_session(info, self.folder))
        return self._predictors[name]

    def figure(self, p: FamilyPath, percentile: int) -> tuple[float, float]:
        """(latency ms, its relative standard error) at `percentile`: measured here, else recorded."""
        if p.name in self.measured:
            return self.measured[p.name].at(percentile)
        return self.info.as_package(p).at(percentile)

    def at_budget(self, ms: float, percentile: int = 50) -> Predictor:
        """The most accurate path measured within `ms` at `percentile` (the faster on a tie).

        Raises:
            DeryError: no path is within the budget (one line, with the fastest path's figure).
        """
        return self.predictor(self.pick(ms, percentile).name)

    def pick(self, ms: float, percentile: int = 50) -> FamilyPath:
        """The path `at_budget` answers with, without building its session (raises as it does)."""
        if percentile not in (50, 90, 99):
            raise DeryError(f"percentile must be 50, 90 or 99 (of single calls), got {percentile}", "deploy")
        self._warn_if_elsewhere()
        figures = {p.name: self.figure(p, percentile) for p in self.paths}
        fits = [p for p in self.paths if within_budget(figures[p.name][0], ms, figures[p.name][1])]
        if not fits:
            fastest = min(self.paths, key=lambda p: figures[p.name][0])
            raise DeryError(
                f"no path of {self.folder} is measured within {ms:g} ms at p{percentile}: the fastest, "
                f"{fastest.name} ({fastest.plan}), measures {figures[fastest.name][0]:.4f} ms "
                f"({self._source()})",
                "deploy",
            )
        return max(fits, key=lambda p: (p.top1, -figures[p.name][0]))

    def measure(
        self,
        calls: int | None = None,
        seconds: float | None = None,
        progress: Callable[[int, float], None] | None = None,
        warmup_s: float = WARMUP_S,
        percentile: int | None = None,
    ) -> dict[str, BenchResult]:
        """Time every path on this machine in one interleaved pass, exactly as `dery bench FAMILY` does (it
        calls this); `at_budget` decides by these figures from then on. Returns each path's figures by name;
        `rounds` says how many rounds the pass took (another while a judged path's error is over the cap)."""
        items = {p.name: (self.predictor(p.name).info, self.predictor(p.name).session) for p in self.paths}
        bench = FamilyBench(items, percentile, calls, seconds, warmup_s)
        results = bench.round(progress)
        while bench.needs_another_round(results):
            results = bench.round(progress)
        self.measured, self.rounds = results, bench.rounds
        return results

    def _source(self) -> str:
        return "measured here" if self.measured else "as recorded in family.json"

    def _warn_if_elsewhere(self) -> None:
        if self.measured or self._warned:
            return
        here = fingerprint(self.paths[0].runtime.device)
        if not same_machine(self.info.fingerprint, here):
            self._warned = True
            warnings.warn(
                f"{self.folder}: the paths' latencies were measured on another machine "
                f"({describe_machine(self.info.fingerprint)}); family.measure() re-times them here",
                OtherMachineWarning,
                stacklevel=3,
            )


def load_family(folder: str | Path) -> Family:
    """A shipped family (the folder holding family.json), its graphs and every tensor checked; sessions are
    built when a path is first picked.

    Raises:
        DeryError: one line naming a missing, edited or truncated file.
    """
    folder = Path(folder)
    folder = folder.parent if folder.is_file() else folder
    return Family(read_family(folder), folder)
