"""The typed records run.json holds beside its per-budget results: the task, the teacher and the recipe,
the time estimate and what its stages took, and what a time limit cut. Light on purpose (no torch): the
report and the schema read them too."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dery_deploy.assemble.candidates import CandidateRecord
from dery_deploy.assemble.stage import SolverSummary
from dery_deploy.export.report import ExportRecord
from dery_deploy.network.plan import Plan
from dery_deploy.runtime.disturbance import BUSY_CORES
from dery_deploy.schema import load_dataclass
from dery_deploy.train.recipe import Recipe
from dery_deploy.train.results import SeamEpoch
from dery_deploy.train.select.evidence import Selection

STEPS_TIMED = 5  # training steps timed per donor and batch by the estimate, after its untimed warm-up steps


@dataclass
class TaskRecord:
    """The task a run was made for: its data spec, content hash, class names in output order, and a
    one-line summary of its splits."""

    spec: str
    hash: str
    classes: list[str]
    summary: str


@dataclass
class LatencyFigure:
    """A latency at the run's percentile and its standard error, in ms."""

    ms: float
    uncertainty: float


@dataclass
class DonorResult:
    """A whole donor trained with a run's recipe: its validation accuracy, its latency (the profile's, then
    the final pass's on its fastest target), its run folder, and, where it was evaluated, its test
    accuracy, per-class accuracy, parameters and confusion matrix."""

    val_accuracy: float | None
    latency_ms: float
    run: str
    top1: float | None = None
    per_class: dict[str, float] = field(default_factory=dict)
    params_m: float | None = None
    confusion_png: str | None = None
    # from the final pass: the profile's figure kept, every target's measurement, the fastest target's
    profile_latency_ms: float | None = None
    latency_by_target: dict[str, LatencyFigure] = field(default_factory=dict)
    latency_uncertainty: float | None = None
    fastest_target: str | None = None


@dataclass
class SelectionFile:
    """selection.json: a budget's candidates on every target, its measured (network, target) finalists
    with their plan files, those dropped as measured over the budget, the solver's summary, the planning
    margin and the selection among the finalists; reused while its key (what they depend on) holds."""

    key: dict
    candidates: list[CandidateRecord]
    finalists: list[CandidateRecord]
    rejected_over_budget: list[CandidateRecord]
    solver: SolverSummary
    margin: float
    selection: Selection

    def to_dict(self) -> dict:
        d = asdict(self)
        d["selection"] = self.selection.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SelectionFile:
        return cls(
            d["key"],
            [CandidateRecord.of(c) for c in d["candidates"]],
            [CandidateRecord.of(c) for c in d["finalists"]],
            [CandidateRecord.of(c) for c in d["rejected_over_budget"]],
            load_dataclass(SolverSummary, d["solver"]),
            d["margin"],
            Selection.from_dict(d["selection"]),
        )


@dataclass
class MixResult:
    """A budget's best mixed plan, healed with the final recipe (even where a donor ships: the report
    compares them trained alike), evaluated on the test split and exported as ONNX; its latency from the
    final pass on its fastest target; or a smaller budget's best mix carried here as the better one."""

    plan: Plan
    val_accuracy: float | None
    phase1_top1: float | None  # adapters and head trained alone (blocks frozen), on the test split
    kept: str | None  # which of phase 1 and end to end was kept
    seam_matching: list[SeamEpoch]
    top1: float
    per_class: dict[str, float]
    params_m: float
    confusion_png: str
    export: ExportRecord | None = None
    selection_accuracy: float | None = None  # the selection's validation accuracy of this plan
    measured_ms: float | None = None  # the final pass's, on `measured_target`
    measured_uncertainty: float | None = None
    measured_target: str | None = None
    carried_from: float | None = None  # the smaller budget whose best mix this is
    replaced: str | None = None  # this budget's own best mix, which the carried one replaced


@dataclass
class Triple:
    """A measured (network, runtime, precision) finalist of one budget: its validation accuracy on that
    target (the selection's, plus the int8 change measured on validation, a gain counted as none) and its
    latency as a finalist."""

    network: str
    target: str
    kind: str  # donor | mix
    selection_accuracy: float
    int8_change: float
    val_accuracy: float
    measured_ms: float
    uncertainty: float | None


@dataclass
class Pick(Triple):
    """The triple a budget ships, and the rule that picked it, naming its evidence."""

    rule: str = ""


@dataclass
class DonorFit:
    """A donor that fits a budget on some target: the target it is compared on there and its test accuracy
    on it (int8's, measured, where only int8 fits)."""

    target: str
    top1: float


@dataclass
class BudgetRaise:
    """A budget the run chose itself, raised after its shipped file measured over it (`own_budget.py`):
    from what to what, the slowest figure of the file it was raised over, and why, in words."""

    from_ms: float
    to_ms: float
    slowest_ms: float
    why: str


@dataclass
class BudgetResult:
    """One budget of a run: either why nothing fits it (`infeasible`), or what was assembled, selected,
    picked, shipped and measured for it, and which donors fit it. Fields a budget did not reach are None
    and left out of run.json."""

    budget_ms: float
    infeasible: str | None = None
    fastest_measured_ms: float | None = None  # the fastest finalist, where none kept the budget
    # assembly and selection (selection.json's content)
    candidates: list[CandidateRecord] | None = None
    finalists: list[CandidateRecord] | None = None
    rejected_over_budget: list[CandidateRecord] | None = None
    solver: SolverSummary | None = None
    margin: float | None = None
    selection: Selection | None = None
    # the best mixed plan, healed with the final recipe, evaluated and exported, and its run folder
    mix: MixResult | None = None
    run_mix: str | None = None
    mix_not_healed: str | None = None  # why the best mix was not healed: selection rules it out (`mix_ruled_out`)
    # the measured (network, runtime, precision) triples and the pick among them
    triples: list[Triple] | None = None
    pick_triple: Pick | None = None
    pick_kind: str | None = None  # mix | donor
    run: str | None = None  # the picked network's run folder
    top1: float | None = None  # test accuracy of what ships (int8's where it ships int8)
    val_accuracy: float | None = None
    params_m: float | None = None
    per_class: dict[str, float] | None = None
    confusion_png: str | None = None
    fp32_top1: float | None = None  # where int8 ships: the fp32 network's test accuracy
    plan: Plan | None = None  # the shipped plan
    export_format: str | None = None
    export_dir: str | None = None
    export: ExportRecord | None = None  # the shipped file's export (whatever its format)
    measured_ms: float | None = None  # the shipped file: the export's figure, then the final pass's
    aoti: ExportRecord | None = None  # --aoti: the AOTInductor package's export
    # the final pass: every figure of the shipped file, how far it was from its admission, fitting donors
    measured_uncertainty: float | None = None
    measured_history_ms: list[float] | None = None
    # how many of measured_history_ms's figures (the last ones) are looks at the shipped package alone, as `dery
    # bench` measures it (`second_look.look_at_ships`), which the verdict reads
    measured_looks: int = 0
    admitted_disagreement: float | None = None
    donors_within_budget: list[str] | None = None
    donor_fit: dict[str, DonorFit] | None = None
    raised: BudgetRaise | None = None  # a budget the run chose itself, raised to what its pick measured

    @property
    def promised_ms(self) -> float:
        """The budget the shipped file is promised and judged against: the raised one, where it was raised.
        `budget_ms` stays the budget's name (its folder, its final-pass keys)."""
        return self.raised.to_ms if self.raised else self.budget_ms

    @property
    def verdict_figures(self) -> list[float]:
        """The shipped file's figures its verdict reads the slowest of: its looks at the package alone where it had
        them (the final pass's figure, first in the history, reads a file among other files high), else all."""
        history = self.measured_history_ms or []
        return history[-self.measured_looks :] if self.measured_looks else history

    @property
    def feasible(self) -> bool:
        """Something ships at this budget."""
        return self.plan is not None

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if self.plan is not None:
            d["plan"] = self.plan.to_dict()  # as plan.json has it
        if self.mix is not None:
            d["mix"]["plan"] = self.mix.plan.to_dict()
        if self.selection is not None:
            d["selection"] = self.selection.to_dict()  # as selection.json has it (fold trials without images)
        return d


@dataclass
class TeacherRecord:
    """The distillation teacher: the donor whose cross-entropy run validated best, that accuracy, its run
    folders, the key of its cached logits, and how many unlabelled images they cover."""

    donor: str
    val_accuracy: float | None
    runs: list[str]
    key: str
    images: int


@dataclass
class RecipeRecord:
    """What every compared network was trained with: the final recipe, the selection's rungs (epochs),
    mixed finalists per budget, the teacher's pool of unlabelled images, and the recipe in words."""

    final: Recipe
    selection_rungs_epochs: list[int]
    mixed_finalists: int
    teacher_images: int
    cut_to_fit: str


@dataclass
class TimeLimitRecord:
    """A run made under --time-limit: its minutes, what was cut to fit them, and the whole run's estimate
    after the cuts (only `cuts` where the profiles alone used the time for further targets)."""

    minutes: float | None = None
    cuts: list[str] = field(default_factory=list)
    estimated_s: float | None = None


@dataclass
class Part:
    """One stage the estimate expects: the start of its name on the terminal and in run.json, its group
    and its seconds."""

    stage: str
    group: str  # training | selection | evaluation | measurement
    seconds: float


@dataclass
class GroupTime:
    """The estimated parts of one group that ran: their estimate and what they took, in seconds."""

    estimated_s: float = 0.0
    actual_s: float = 0.0


@dataclass
class RunEstimate:
    """The rest of a run, part by part, as estimated after `after_s` seconds of it; in run.json also how
    long estimating took, whether this run made it (or reused an earlier run's), and per group what the
    estimated stages took."""

    after_s: float
    parts: list[Part]
    step_s: dict[str, float]  # donor -> seconds per training image, timed here
    item_s: float  # seconds per item of a measurement pass, from the profiles
    distill_s: dict[str, float] = field(default_factory=dict)  # donor -> the same in a distilling step
    made_in_s: float | None = None
    this_run: bool | None = None
    actual: dict[str, GroupTime] = field(default_factory=dict)
    # other processes' CPU use while the training steps were timed (cores; None where /proc cannot say)
    other_load_cores: float | None = None
    steps_timed: int = STEPS_TIMED  # training steps timed per donor (fewer under --time-limit)
    # estimated seconds of the final training and evaluation of donors the short recipe found dominated
    left_out_s: float = 0.0
    # donors the estimate expected the short recipe to leave out, and their final training and evaluation,
    # held out of `parts`; the seconds of those put back because the short recipe kept the donor after all
    expected_left_out: list[str] = field(default_factory=list)
    held_out: list[Part] = field(default_factory=list)
    put_back_s: float = 0.0
    # budgets at which selection was expected to rule the mix out: their heal, its evaluation and export held out
    # (in `held_out` after the donors', three parts a budget, in this order)
    expected_unhealed: list[float] = field(default_factory=list)
    # budgets whose best mix was expected to be a smaller budget's, its heal read back: held out alike (in
    # `held_out`, the heals' parts in the order of the budgets, with those of `expected_unhealed`)
    expected_read_back: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.parts)

    def by_group(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.parts:
            out[p.group] = out.get(p.group, 0.0) + p.seconds
        return out

    def line(self) -> str:
        groups = ", ".join(f"{g} {minutes(s)}" for g, s in sorted(self.by_group().items(), key=lambda kv: -kv[1]))
        load = self.other_load_cores or 0.0
        busy = f"; other processes used {load:.1f} cores while the steps were timed, so training times are unreliable"
        return (
            f"the rest of this run: about {minutes(self.seconds)} on this machine ({groups}; training timed on "
            f"{self.steps_timed} steps of each donor here, measurement at {self.item_s:.1f} s per item as the profiles "
            f"took{busy if load >= BUSY_CORES else ''}"
            + (f"; not counting {expected}" if (expected := self.expected_line()) else "")
            + ")"
        )

    def expected_line(self) -> str:
        """What the estimate leaves out in advance, in words ('' where nothing)."""
        names = ", ".join(self.expected_left_out)
        said = [f"the final training of {names}, which the short recipe is expected to leave out"] if names else []
        if self.expected_unhealed:
            at = ", ".join(f"{b:g}" for b in self.expected_unhealed)
            said.append(f"healing a mix at {at} ms, where the donor the probe rates best fits")
        line = ", nor ".join(said) + " (by probe accuracy)" if said else ""
        if self.expected_read_back:
            at = ", ".join(f"{b:g}" for b in self.expected_read_back)
            again = f"healing a mix again at {at} ms, where a smaller budget's is expected back"
            line = f"{line}, nor {again}" if line else again
        return line

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def reuse(cls, path: Path, key: dict) -> RunEstimate | None:
        """The estimate an earlier run of this folder made for the same plan (its steps are not timed again)."""
        if not path.is_file():
            return None
        old = json.loads(path.read_text())
        return cls.from_dict(old["estimate"]) if old.get("key") == key else None

    @classmethod
    def from_dict(cls, d: dict) -> RunEstimate:
        return load_dataclass(cls, d)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
