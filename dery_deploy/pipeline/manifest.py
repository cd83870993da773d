"""run.json: the manifest of one run, its stages and results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from dery_deploy.artifacts import JsonArtifact
from dery_deploy.export.report import ExportRecord
from dery_deploy.network.plan import Plan
from dery_deploy.pipeline.family_record import FamilyRecord
from dery_deploy.pipeline.final_pass_file import FinalPassRecord
from dery_deploy.pipeline.options import RunOptions
from dery_deploy.pipeline.records import (
    BudgetResult,
    DonorResult,
    RecipeRecord,
    RunEstimate,
    TaskRecord,
    TeacherRecord,
    TimeLimitRecord,
)
from dery_deploy.pipeline.repeatability import UnrepeatableTarget
from dery_deploy.pipeline.targets import TargetPruning
from dery_deploy.pipeline.thread_screen import ScreenedCount, SpellCheck
from dery_deploy.profile.store import LatencyCheck
from dery_deploy.schema import load_dataclass


@dataclass
class StageRecord:
    stage: str
    status: str  # computed | reused | loaded | infeasible
    seconds: float
    note: str = ""


@dataclass
class RunManifest(JsonArtifact):
    KIND = "run"
    SCHEMA = 3  # 3: exports as ExportRecord under "export", typed checks, final pass, candidates, mix, solver
    STAGE = "run"

    zoo: str
    zoo_hash: str
    device: str
    backend: str
    precision: str
    options: RunOptions
    status: str = "running"  # running | done | no-feasible-budget | failed
    failed_stage: str | None = None
    error: str | None = None
    stages: list[StageRecord] = field(default_factory=list)
    task: TaskRecord | None = None
    budgets: list[float] = field(default_factory=list)
    donor_latency_ms: dict[str, float] = field(default_factory=dict)
    verify: LatencyCheck | None = None  # the first target's latency-model check
    profile: str = ""
    results: list[BudgetResult] = field(default_factory=list)
    donors: dict[str, DonorResult] = field(default_factory=dict)
    teacher: TeacherRecord | None = None
    final_pass: FinalPassRecord | None = None  # the one interleaved measurement every comparison reads
    targets: list[str] = field(default_factory=list)  # backend/precision pairs searched
    verify_by_target: dict[str, LatencyCheck] = field(default_factory=dict)  # each target's latency-model check
    profile_by_target: dict[str, str] = field(default_factory=dict)  # each target's profile file
    recipe: RecipeRecord | None = None  # what every compared network was trained with (Recipes.describe)
    # the rest of the run as estimated after the profiles, and per group what the estimated stages took
    estimate: RunEstimate | None = None
    time_limit: TimeLimitRecord | None = None  # --time-limit: minutes, what was cut to fit, the estimate
    # the targets carried into selection and those dropped as dominated at every budget, with why
    target_pruning: TargetPruning | None = None
    # thread counts left out after their profiles because their measurements do not repeat (repeatability.py)
    unrepeatable: list[UnrepeatableTarget] = field(default_factory=list)
    # further thread counts not profiled beyond their whole donors (thread_screen.py)
    screened: list[ScreenedCount] = field(default_factory=list)
    # whether each further thread count's speed repeated from one stretch of seconds to the next (thread_spells.py)
    thread_spells: list[SpellCheck] = field(default_factory=list)
    # donors left out of the final recipe and the candidates, with why (`budgets.dominated_donors`)
    dominated_donors: dict[str, str] = field(default_factory=dict)
    family: FamilyRecord | None = None  # --family's paths (pipeline/family.py); left out of run.json without it
    started: str = ""
    finished: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["results"] = [res.to_dict() for res in self.results]  # a budget's unreached fields left out
        # a run without --family writes run.json as before it existed
        if self.family is None:
            del d["family"]
        if not self.options.family:
            del d["options"]["family"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunManifest:
        d = {k: v for k, v in d.items() if k not in ("schema", "kind")}
        # older runs wrote {} for "none"
        for k in (
            "task",
            "teacher",
            "recipe",
            "estimate",
            "time_limit",
            "final_pass",
            "verify",
            "target_pruning",
            "family",
        ):
            d[k] = d.get(k) or None
        # older runs filed each target's profile inside its check
        checks = {t: dict(v) for t, v in (d.get("verify_by_target") or {}).items()}
        d["profile_by_target"] = {
            **{t: v.pop("profile") for t, v in checks.items() if "profile" in v},
            **(d.get("profile_by_target") or {}),
        }
        d["verify_by_target"] = checks
        # a family built before --family-training existed trained its smaller paths on frozen shared blocks
        opts = d.get("options")
        if isinstance(opts, dict) and opts.get("family") and "family_training" not in opts:
            d["options"] = {**opts, "family_training": "frozen"}
        d["results"] = [dict(res) for res in d.get("results") or []]
        for res in d["results"]:
            _older_result(res)
        return load_dataclass(cls, d)


def _older_result(res: dict) -> None:
    """A budget's result as read from JSON, made what the typed records read: older runs kept each export's
    report as written, the shipped file's under "onnx" whatever its format, unmeasured candidates'
    measurements as {}, and plans as older versions wrote them (`Plan.from_dict` reads those)."""
    if res.get("plan"):
        res["plan"] = Plan.from_dict(res["plan"]).to_dict()
    if res.get("mix") and res["mix"].get("plan"):
        res["mix"] = {**res["mix"], "plan": Plan.from_dict(res["mix"]["plan"]).to_dict()}
    if "onnx" in res:
        res["export"] = res.pop("onnx")
    if res.get("mix") and "onnx" in res["mix"]:
        res["mix"] = {**res["mix"], "export": res["mix"]["onnx"]}
        del res["mix"]["onnx"]
    # a candidate never measured was written with `measured` {}
    for k in ("candidates", "finalists", "rejected_over_budget"):
        if res.get(k):
            res[k] = [{**c, "measured": c.get("measured") or None} for c in res[k]]
    names = {f.name for f in fields(ExportRecord)}
    for k in ("export", "aoti"):
        if res.get(k) and not set(res[k]) <= names:
            res[k] = ExportRecord.of_report(res[k]).to_dict()
    mix = res.get("mix")
    if mix and mix.get("export") and not set(mix["export"]) <= names:
        mix["export"] = ExportRecord.of_report(mix["export"]).to_dict()
