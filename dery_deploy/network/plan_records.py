"""What a plan records beside its blocks (plan.json, and each plan run.json embeds): the budget it was
assembled for, the prediction, proxy and solver that proposed it, its adapters and head, its measurement
on the device, the task it was made for and how it was picked.

The selection's records (`Trial`, `Evidence`, `Selection`) live here too, below the training stage that
makes them, because a plan embeds its selection; `train.select.evidence` makes and re-exports them.
A record that a plan has not set is None and written as {} (`EMPTY_IS_NONE`), as plan.json always had it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from dery_deploy.dissect.spec import TensorSpec
from dery_deploy.schema import EMPTY_IS_NONE, JSON_KEY, json_key

NOT_SET: Any = {EMPTY_IS_NONE: True}  # field metadata of a record a plan may not have set


@dataclass
class PlanBudget:
    """The budget a plan was assembled for: latency in ms at a per-call percentile, optional memory and size caps."""

    latency_ms: float
    percentile: int = 50  # older plans had none: the median
    memory_mb: float | None = None
    params_m: float | None = None


@dataclass
class PlanningModel:
    """The latency model a prediction was made with: its speed basis and scale, the per-call percentile it
    predicts, its checked relative errors there, and the planning margin the program planned at."""

    speed: str
    scale: float
    percentile: int = 50  # older plans had none: the median
    median_rel_error: float | None = None
    max_rel_error: float | None = None
    planning_margin: float = 0.0


@dataclass
class Prediction:
    """The program's prediction of a plan on its target: latency, memory, parameters (M), the model that
    predicted it and the profile's reference-machine latency."""

    latency_ms: float
    memory_mb: float | None = None
    params_m: float | None = None
    latency_model: PlanningModel | None = None
    reference_ms: float | None = None


@dataclass
class ProxyScore:
    """The training-free proxy a plan was scored by, its score, and the stitch errors of its fitted adapters."""

    name: str
    score: float
    stitch_errors: list[float] = field(default_factory=list)


@dataclass
class PlanSolver:
    """How a plan's target's candidates were proposed and where the plan stands among them: the search's
    name and status, its own counts (absent where a search has none: CP-SAT's first solution and solves,
    Optuna's trials), the plan's quality (None for a whole donor) and origin, the search's time, the
    partition searched, and the adapter weights' file once saved beside the plan (a plan saved with its
    weights before assembly finished it, as a benchmark does, has that file alone)."""

    name: str | None = None
    status: str | None = None
    seconds_first: float | None = None
    trials: int | None = None
    proxy_evaluations: int | None = None
    seconds_top: float | None = None
    top: int | None = None
    dp_seconds: float | None = None
    cp_sat_solves: int | None = None
    quality: float | None = None
    origin: str | None = None
    search_seconds: float | None = None
    partition_key: str | None = None
    adapter_weights: str | None = None

    def to_dict(self) -> dict:
        """Each search's own keys in the order it writes them, what it lacks left out; a finished plan's
        quality written even where None (a whole donor has none)."""
        finished = self.search_seconds is not None
        return {k: v for k, v in asdict(self).items() if v is not None or (k == "quality" and finished)}


@dataclass
class AdapterRecord:
    """One adapter of a plan: the block it follows, its kind, the specs it maps from and to, its parameters."""

    after_block: int
    kind: str
    src: TensorSpec = field(metadata={JSON_KEY: "in"})
    dst: TensorSpec = field(metadata={JSON_KEY: "out"})
    params: int

    def to_dict(self) -> dict:
        return {"after_block": self.after_block, "kind": self.kind, "in": asdict(self.src), "out": asdict(self.dst),
                "params": self.params}  # fmt: skip


@dataclass
class HeadRecord:
    """A plan's new head: the spec it reads and the classes it predicts."""

    src: TensorSpec = field(metadata={JSON_KEY: "in"})
    num_classes: int

    def to_dict(self) -> dict:
        return {"in": asdict(self.src), "num_classes": self.num_classes}


@dataclass
class PlanTask:
    """The task a plan was selected for: its data spec, content hash and class names in output order."""

    spec: str
    hash: str
    classes: list[str]


@dataclass
class FinalistMeasurement:
    """A finalist measured end to end on its target, in the one pass that measured every finalist:
    `latency_ms` is the per-call percentile over all calls (the statistic the shipped file is judged by)
    and `quiet_ms` the quiet-window estimate at it; the target's runtime settings it ran with; whether
    it lies within two standard errors of the budget (`near_budget`, set when it is kept or dropped)."""

    latency_ms: float
    percentile: int
    uncertainty: float
    quiet_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    stable: bool
    noise: float
    pass_noise_index: float | None
    pass_busy: str
    backend: str
    precision: str
    batch: int
    threads: int | None
    device: str
    near_budget: bool = False


# a trial's worker where the run read it back instead of training it again: the same network, start weights, rung
# recipe and fold trained under a smaller budget (`train.select.trial`)
REUSED = "reused"


@dataclass
class Trial:
    """One unit of work: a finalist trained at a rung on one fold's train split, scored on its held-out images."""

    finalist: str
    rung: int
    val_accuracy: float
    seconds: float
    worker: str
    fold: int = 0
    # "0"/"1" per held-out image, for the paired test (written to the study, not to selection.json: the
    # pooled evidence has it, so a fold trial read back from there has none)
    correct: str = ""


@dataclass
class Evidence:
    """A finalist at a rung over every fold that rung trains: its accuracy on all their held-out images."""

    finalist: str
    rung: int
    val_accuracy: float  # out of fold, %
    correct: str  # "0"/"1" per held-out image, fold after fold: the same images in the same order for every finalist
    seconds: float
    folds: list[int] = field(default_factory=lambda: [0])
    workers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, trials: list[Trial]) -> Evidence:
        correct = "".join(t.correct for t in trials)
        return cls(
            trials[0].finalist,
            trials[0].rung,
            round(100 * correct.count("1") / max(1, len(correct)), 3),
            correct,
            round(sum(t.seconds for t in trials), 2),
            [t.fold for t in trials],
            sorted({t.worker for t in trials}),
        )


@dataclass
class Selection:
    pick: str  # the finalist's name
    rule: str  # why it was picked, in words
    best_donor: str | None
    best_mix: str | None
    difference: float | None  # best mix - best donor out of fold, points
    noise: float | None  # the threshold the difference had to beat, points
    trials: list[Evidence] = field(default_factory=list)  # per (finalist, rung), pooled over its folds
    study: str = ""
    storage: str = "memory"
    folds: int = 1  # k of the cross-validation the last rung decides on (1: the task's validation split)
    images: int | None = None  # held-out images the pick's comparison rests on
    fold_trials: list[Trial] = field(default_factory=list)  # every (finalist, rung, fold) trained

    def to_dict(self) -> dict[str, Any]:
        """selection.json's `selection`; its key order is not the fields' (it predates `folds` and
        `images`), and a fold trial leaves out its per-image `correct` (the pooled evidence has it)."""
        return {
            "pick": self.pick,
            "rule": self.rule,
            "best_donor": self.best_donor,
            "best_mix": self.best_mix,
            "difference": self.difference,
            "noise": self.noise,
            "folds": self.folds,
            "images": self.images,
            "study": self.study,
            "storage": self.storage,
            "trials": [asdict(t) for t in self.trials],
            "fold_trials": [{k: v for k, v in asdict(t).items() if k != "correct"} for t in self.fold_trials],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Selection:
        """The inverse of `to_dict`; a fold trial read back has an empty `correct` (it was not written)."""
        return cls(
            d["pick"],
            d["rule"],
            d["best_donor"],
            d["best_mix"],
            d["difference"],
            d["noise"],
            [Evidence(**t) for t in d["trials"]],
            d["study"],
            d["storage"],
            d["folds"],
            d["images"],
            [Trial(**t) for t in d["fold_trials"]],
        )


# a plan's records by key, as plan.json writes them
RECORDS: dict[str, type] = {
    "budget": PlanBudget,
    "predicted": Prediction,
    "proxy": ProxyScore,
    "solver": PlanSolver,
    "head": HeadRecord,
    "measured": FinalistMeasurement,
    "task": PlanTask,
    "selection": Selection,
}


def known(cls: type, d: dict) -> dict:
    """`d` without the keys older versions wrote that the record `cls` no longer has (a solver's `requested_top`)."""
    keys = {json_key(f) for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in keys}


def older_measurement(m: dict, plan: dict) -> dict | None:
    """A plan's measurement as `FinalistMeasurement` holds it, from any plan.json of schema 2: before 3 Dec
    `latency_ms` was the quiet-window figure and the pass's load was not kept; before 30 Nov a finalist had
    only its median and p90, its runtime settings being the plan's. None where it lacks what the record needs
    (its uncertainty and p99 were not measured then)."""
    m = {"latency_ms": m.get("median_ms"), "percentile": 50, "pass_noise_index": None, "pass_busy": "", **m}
    m.setdefault("quiet_ms", m["latency_ms"])
    for k in ("backend", "precision", "batch", "threads", "device"):
        m.setdefault(k, plan.get(k))
    m = known(FinalistMeasurement, m)
    needed = {f.name for f in dataclasses.fields(FinalistMeasurement) if f.default is dataclasses.MISSING}
    return m if needed <= set(m) else None


def plan_as_written_now(d: dict) -> dict:
    """A plan's content as this version writes it, from any plan.json of schema 2 (or a plan embedded in
    run.json): keys older versions wrote that its records no longer have left out, fields they lacked
    filled as they meant them (no zoo reference: the zoo's name)."""
    out = {**d, "zoo_ref": d.get("zoo_ref", d["zoo"])}
    for k, cls in RECORDS.items():
        if out.get(k):
            out[k] = known(cls, out[k])
    model = (out.get("predicted") or {}).get("latency_model")
    if model:
        out["predicted"] = {**out["predicted"], "latency_model": known(PlanningModel, model)}
    if out.get("measured"):
        out["measured"] = older_measurement(out["measured"], d) or {}
    out["adapters"] = [known(AdapterRecord, a) for a in out.get("adapters") or []]
    return out
