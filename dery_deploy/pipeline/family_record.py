"""What run.json records of `dery run --family` (issue 28): the family program's paths over the run's budgets,
each trained (option (a): the largest as a budget's pick is, the smaller on its frozen shared blocks), shipped
in RUN/family/ and measured in one interleaved pass, against the run's own separately trained pick at each
budget. Light on purpose (no torch): the report and the schema read it too."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dery_deploy.schema import load_dataclass


@dataclass
class FamilyPathRecord:
    """One path: its plan and budget, how it was trained, its test top-1 and its latency in the family's pass
    (at the run's percentile, ± the standard error in ms), and the run's separate pick at that budget."""

    name: str  # path-0, ...: family.json's name (fastest budget first)
    plan: str
    budget_ms: float
    run: str  # the run folder its network was trained in
    trained: str  # "largest path, the run's recipe" | "reused: ..." | "on N frozen shared blocks"
    frozen_blocks: list[int] = field(default_factory=list)  # indices of blocks taken from the largest path
    top1: float | None = None
    latency_ms: float | None = None
    latency_se_ms: float | None = None
    within: bool | None = None  # None: undecided (the measurement too noisy to judge)
    verdict: str = ""
    separate_plan: str | None = None  # what the run ships at this budget, trained on its own
    separate_top1: float | None = None
    separate_ms: float | None = None  # its latency in the run's final pass (else its export's)
    separate_bytes: int | None = None  # its shipped file's size
    # its untrained network measured before any training (`pipeline.family_check`), ms at the run's percentile
    before_ms: float | None = None
    before_se_ms: float | None = None
    before_within: bool | None = None
    fallback: bool = False  # measured over before training, replaced by the run's separate plan at this budget

    @property
    def difference(self) -> float | None:
        """Family path's test top-1 less the separate pick's, in points."""
        if self.top1 is None or self.separate_top1 is None:
            return None
        return round(self.top1 - self.separate_top1, 3)


@dataclass
class FamilyRecord:
    """The family a run built: where it is, the program's solve, its paths, and the bytes it stores against
    the separately shipped files of the same budgets; `note` says why there is none where it was skipped."""

    folder: str = ""
    target: str = ""
    percentile: int = 50
    margin: float = 0.0  # the planning margin every path was planned with (the run's)
    delta: float = 0.0
    price: float = 0.0
    solver_status: str = ""
    solve_seconds: float = 0.0
    paths: list[FamilyPathRecord] = field(default_factory=list)
    distinct_bytes: int = 0  # weights.bin's tensors, each once
    paths_bytes: int = 0  # the paths' initializers summed, as separate graphs of them would hold
    separate_bytes: int = 0  # the run's own shipped files at these budgets, summed
    before_passes: int = 0  # passes before training (one, plus one per re-solve and one after a fallback)
    before_other_load_cores: float | None = None  # the most other processes used in those passes (cores)
    before_notes: list[str] = field(default_factory=list)  # re-solves and fallbacks, as said on the terminal
    note: str = ""
    # --family-training: joint (option (b), every path every step) | frozen (option (a)); a run.json from before
    # the field was written trained its family frozen, so that is what one without it reads as
    training: str = "frozen"

    @property
    def ratio(self) -> float | None:
        """Distinct bytes over the separately shipped files' bytes."""
        return round(self.distinct_bytes / self.separate_bytes, 4) if self.separate_bytes else None

    @property
    def over(self) -> list[FamilyPathRecord]:
        """The paths the family's pass measured over their budgets."""
        return [p for p in self.paths if p.within is False]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FamilyRecord:
        return load_dataclass(cls, d)
