"""run.json: the manifest of one run, its stages and results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dery_deploy.artifacts import JsonArtifact


@dataclass
class StageRecord:
    stage: str
    status: str  # computed | reused | loaded | infeasible
    seconds: float
    note: str = ""


@dataclass
class RunManifest(JsonArtifact):
    KIND = "run"
    SCHEMA = 2
    STAGE = "run"

    zoo: str
    zoo_hash: str
    device: str
    backend: str
    precision: str
    options: dict
    status: str = "running"  # running | done | no-feasible-budget | failed
    failed_stage: str | None = None
    error: str | None = None
    stages: list[StageRecord] = field(default_factory=list)
    task: dict = field(default_factory=dict)
    budgets: list[float] = field(default_factory=list)
    donor_latency_ms: dict[str, float] = field(default_factory=dict)
    verify: dict = field(default_factory=dict)
    profile: str = ""
    results: list[dict] = field(default_factory=list)
    donors: dict[str, dict] = field(default_factory=dict)
    teacher: dict = field(default_factory=dict)
    final_pass: dict = field(default_factory=dict)  # the one interleaved measurement every comparison reads
    targets: list[str] = field(default_factory=list)  # backend/precision pairs searched
    verify_by_target: dict = field(default_factory=dict)  # each target's latency check (verify: the first's)
    recipe: dict = field(default_factory=dict)  # what every compared network was trained with (Recipes.describe)
    # the rest of the run as estimated after the profiles (estimate.RunEstimate), and per group what the
    # estimated stages took ("actual": group -> estimated_s, actual_s)
    estimate: dict = field(default_factory=dict)
    time_limit: dict = field(default_factory=dict)  # --time-limit: minutes, what was cut to fit, the estimate
    started: str = ""
    finished: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> RunManifest:
        d = {k: v for k, v in d.items() if k not in ("schema", "kind")}
        d["stages"] = [StageRecord(**s) for s in d.get("stages", [])]
        return cls(**d)
