"""A budget the run chose itself is raised when its shipped file measures over it, unless a better donor then
fits or it would reach the next budget; a user's budget never is (the run asks `opts.budgets`)."""

from types import SimpleNamespace

from dery_deploy.export.report import ExportRecord
from dery_deploy.export.verdict import BudgetVerdict
from dery_deploy.network.plan import BlockRef, Plan
from dery_deploy.pipeline.own_budget import proposed_raise, raise_own_budget
from dery_deploy.pipeline.records import BudgetRaise, BudgetResult, DonorFit
from dery_deploy.report.answers import Answer

PLAN = Plan(
    "fashion", "h", [BlockRef(0, "mnv3_rot", 0, 1), BlockRef(1, "resnet10t_tops", 2, 5)], 10, "cpu", "onnxruntime"
)


def shipped(budget: float, history: list[float], over: bool, top1: float = 77.7) -> BudgetResult:
    verdict = BudgetVerdict(
        True, budget_ms=budget, measured_ms=sorted(history)[len(history) // 2], within_budget=not over
    )
    return BudgetResult(
        budget,
        plan=PLAN,
        export=ExportRecord("onnx", budget=verdict),
        measured_history_ms=history,
        top1=top1,
        measured_ms=verdict.measured_ms,
        pick_kind="mix",
    )


def run_with(budgets: list[float]):
    said: list[str] = []
    return SimpleNamespace(manifest=SimpleNamespace(budgets=budgets), say=said.append), said


def test_an_own_budget_over_which_its_file_measured_is_raised_over_the_slowest_figure():
    # the figures of the stop-35 default run on this VM: finalist 0.0845, final pass 0.1257, alone 0.0872, 0.1149
    res = shipped(0.108, [0.1257, 0.0872, 0.1149], over=True)
    r, said = run_with([0.108, 0.149, 0.387])
    assert raise_own_budget(r, res, lambda ms: {}) is True
    assert res.raised is not None
    assert (res.raised.from_ms, res.raised.slowest_ms) == (0.108, 0.1257)
    assert res.raised.to_ms == 0.132  # 0.1257 * 1.05 = 0.13199, rounded up to three digits
    assert res.promised_ms == 0.132 and res.budget_ms == 0.108  # the folder's name stays
    assert "0.1257, 0.0872, 0.1149" in said[0] and "promised at 0.132 ms" in said[0]


def test_a_raise_reads_the_looks_at_the_package_alone_not_the_final_pass_among_others():
    # the final pass read the file among other files (first figure), then two looks alone
    res = shipped(0.108, [0.1257, 0.1149, 0.1172], over=True)
    res.measured_looks = 2
    r, said = run_with([0.108, 0.387])
    assert raise_own_budget(r, res, lambda ms: {}) is True and res.raised is not None
    assert res.raised.slowest_ms == 0.1172 and res.raised.to_ms == 0.124  # 0.1172 * 1.05 = 0.12306, up
    assert "0.1149, 0.1172 ms alone" in said[0] and "0.1257" not in said[0]


def test_a_file_within_its_budget_is_not_raised():
    res = shipped(0.149, [0.1537, 0.1152, 0.1445], over=False)
    assert proposed_raise(res, [0.108, 0.149]) is None
    r, said = run_with([0.149])
    assert raise_own_budget(r, res, lambda ms: {}) is False and res.raised is None and said == []


def test_no_raise_when_a_more_accurate_donor_would_fit_the_raised_budget():
    res = shipped(0.108, [0.1257, 0.1149], over=True, top1=77.7)
    r, said = run_with([0.108, 0.387])
    fits = {"mnv3_rot": DonorFit("onnxruntime/fp32", 80.1)}
    assert raise_own_budget(r, res, lambda ms: fits if ms >= 0.13 else {}) is False
    assert res.raised is None
    assert "donor mnv3_rot (80.10%) fits 0.132 ms and beats the pick" in said[0]
    # a fitting donor less accurate than the pick does not stop it
    fits["mnv3_rot"] = DonorFit("onnxruntime/fp32", 70.0)
    assert raise_own_budget(r, res, lambda ms: fits) is True


def test_no_raise_that_would_reach_the_next_budget():
    res = shipped(0.108, [0.1257, 0.1149], over=True)
    why = proposed_raise(res, [0.108, 0.13])
    assert why == "raising it to 0.132 ms would reach the run's next budget, 0.13 ms"


def test_the_answer_states_the_raised_budget_and_what_the_run_chose():
    res = shipped(0.108, [0.1257, 0.1149], over=False)
    res.raised = BudgetRaise(0.108, 0.132, 0.1257, "why")
    m = SimpleNamespace(final_pass=None, donors={})
    a = Answer.of(res, m)  # type: ignore[arg-type]
    assert a.budget_ms == 0.132 and a.budget_text() == "0.132 (raised from 0.108)"
