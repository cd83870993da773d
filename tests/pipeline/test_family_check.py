"""A family's paths measured before training (`pipeline.family_check`): the replace rule over the real family
program with real `Measurement`s from a device whose latencies differ from the model's, and a real pass of
the tiny zoo's untrained paths in the measurement worker."""

import pytest

from dery_deploy.assemble.candidates import plan_from_choice
from dery_deploy.assemble.family import solve_family
from dery_deploy.assemble.program import Budget, ProgramData, fastest
from dery_deploy.assemble.program_data import Scores, program_data
from dery_deploy.network.plan import BlockRef, Plan
from dery_deploy.pipeline.family_check import (
    MAX_RESOLVES,
    CheckedFamily,
    PathCheck,
    check_paths,
    lowered,
    measure_plans,
    solver,
)
from dery_deploy.profile.latency_model import budget_us, us_to_ms
from dery_deploy.runtime.harness import Measurement, PassSummary
from tests.assemble.test_program import random_instance


def measurement(ms: float, se: float = 0.01) -> Measurement:
    """A pass's figure as the harness records it: the per-call p50 over all calls and its relative SE."""
    return Measurement(ms, ms * 1.1, ms * 1.3, se, 2000, 20, True, 0.02, [ms] * 20, {},
                       {"p50": ms, "p90": ms * 1.1, "p99": ms * 1.3}, {"p50": se, "p90": se, "p99": se})  # fmt: skip


def chain_plan(choice: tuple[int, ...], budget_ms: float) -> Plan:
    """A random instance's assembly as a plan: set k's option o is donor "d<o>"'s block k."""
    return Plan("z", "h", [BlockRef(k, f"d{o}", k, k + 1) for k, o in enumerate(choice)], 10)


def choice_of(plan: Plan) -> tuple[int, ...]:
    return tuple(int(b.donor[1:]) for b in plan.blocks)


class Device:
    """Measures a plan as the program predicts it, except the assemblies in `slow`, which it measures at the
    given figure (the latency model's error on them); records its passes."""

    def __init__(self, data: ProgramData, slow: dict[tuple[int, ...], float] | None = None):
        self.data, self.slow, self.passes = data, slow or {}, []

    def __call__(self, plans: list[Plan]) -> tuple[list[Measurement], PassSummary]:
        self.passes.append([choice_of(p) for p in plans])
        out = []
        for p in plans:
            c = choice_of(p)
            out.append(measurement(self.slow.get(c, us_to_ms(self.data.evaluate(c).latency_us))))
        return out, PassSummary(len(plans), 20, 1.0, 0.02, 0, 1, "now")


def a_family(seed: int = 0):
    data = random_instance(seed, sets=3, donors=4)
    lo = fastest(data).latency_us
    planned = [Budget(int(lo * 1.3)), Budget(int(lo * 2.2))]
    return data, planned, [us_to_ms(b.latency_us) for b in planned], solve_family(data, planned)


def test_lowered_takes_the_measured_excess_off_the_planned_budget():
    check = PathCheck.of(measurement(1.1), 1.0, 50)
    assert check.within is False and check.excess == pytest.approx(0.1)
    planned = Budget(budget_us(0.96))
    assert lowered(planned, check, predicted_ms=0.95) == Budget(int(budget_us(0.96) / 1.1))
    # the path itself no longer admitted
    assert lowered(planned, check, predicted_ms=0.8) == Budget(budget_us(0.8) - 1)
    # a measurement within its standard error of the budget is within (deploy.bench's rule), and never lowers
    assert PathCheck.of(measurement(1.005, se=0.01), 1.0, 50).within is True


def test_paths_within_their_budgets_are_kept_after_one_pass():
    data, planned, budgets_ms, fam = a_family()
    device = Device(data)
    checked = check_paths(fam, planned, budgets_ms, chain_plan, [None, None], device, solver(data), 50)
    assert len(device.passes) == 1 and checked.family is fam and not checked.fallbacks and not checked.lines
    assert [choice_of(p) for p in checked.plans] == [p.choice for p in fam.paths]
    assert all(c.within for c in checked.checks)
    assert [c.latency_ms for c in checked.checks] == [round(p.latency_ms, 5) for p in fam.paths]


@pytest.mark.parametrize("seed", [1, 3, 4, 5])  # instances whose two paths differ
def test_a_path_over_its_budget_is_re_solved_with_the_budget_lowered_by_its_excess(seed):
    data, planned, budgets_ms, fam = a_family(seed)
    large = fam.paths[1].choice
    device = Device(data, {large: budgets_ms[1] * 1.063})  # the large path measures 6.3% over its budget
    checked = check_paths(fam, planned, budgets_ms, chain_plan, [None, None], device, solver(data), 50)
    assert "by 6.3%" in checked.lines[0] and "solved again" in checked.lines[0]
    assert device.passes[0] == [p.choice for p in fam.paths] and len(device.passes) == 2 and not checked.fallbacks
    assert choice_of(checked.plans[1]) != large and checked.family is not fam
    assert all(c.within for c in checked.checks)
    # the program planned the replacement to the lowered budget: below the measured-over path's prediction
    assert checked.family.paths[1].latency_ms < fam.paths[1].latency_ms


def test_a_path_still_over_falls_back_to_the_separate_plan_and_is_measured_again():
    data, planned, budgets_ms, fam = a_family()
    device = Device(data)
    separate = [chain_plan(fam.paths[0].choice, 0), chain_plan(fam.paths[1].choice, 0)]
    tight = [budgets_ms[0] / 10, budgets_ms[1]]  # nothing measures within a tenth of the fast budget
    checked = check_paths(fam, planned, tight, chain_plan, separate, device, solver(data), 50)
    assert checked.fallbacks == [0] and "falls back to the run's separate plan" in checked.lines[-1]
    assert checked.plans[0].head_kind == "new" and choice_of(checked.plans[0]) == fam.paths[0].choice
    assert len(device.passes) == len(checked.passes) <= MAX_RESOLVES + 2
    assert checked.checks[0].within is False and checked.checks[1].within is True


def test_a_saved_check_is_reused_only_for_its_own_key(tmp_path):
    data, planned, budgets_ms, fam = a_family(1)
    device = Device(data, {fam.paths[1].choice: budgets_ms[1] * 1.063})
    checked = check_paths(fam, planned, budgets_ms, chain_plan, [None, None], device, solver(data), 50)
    path = tmp_path / "check.json"
    checked.save(path, "k1")
    again = CheckedFamily.reuse(path, "k1")
    # what a later run trains is what this one checked: the re-solved family, its plans, figures and lines
    assert again is not None and again.family == checked.family and again.checks == checked.checks
    assert [p.signature() for p in again.plans] == [p.signature() for p in checked.plans]
    assert again.passes == checked.passes and again.fallbacks == checked.fallbacks
    assert isinstance(again.family.paths[0].choice, tuple) and again.lines == checked.lines
    assert CheckedFamily.reuse(path, "k2") is None and CheckedFamily.reuse(tmp_path / "none.json", "k1") is None


def test_the_tiny_zoos_untrained_paths_are_measured_in_one_real_pass(tiny_ws):
    sets = tiny_ws.partition.sets
    seams = {(a.donor, a.end, b.donor, b.start): 0.0 for k in range(len(sets) - 1) for a in sets[k].blocks
             for b in sets[k + 1].blocks}  # fmt: skip
    scores = Scores({(b.donor, b.end): 0.0 for b in sets[-1].blocks}, seams)
    data = program_data(tiny_ws.zoo, tiny_ws.partition, tiny_ws.dis, tiny_ws.model, 10, scores)
    lo = fastest(data).latency_us
    planned = [Budget(int(lo * 1.2)), Budget(int(lo * 4))]
    fam = solve_family(data, planned)

    def plan_of(choice, budget_ms):
        return plan_from_choice(tiny_ws.zoo, tiny_ws.partition, choice, 10)

    def measure(plans):
        return measure_plans(plans, tiny_ws.zoo, tiny_ws.dis, 1, 50)

    budgets_ms = [1000.0, 1000.0]  # far above anything the tiny zoo runs in: both paths kept after one pass
    checked = check_paths(fam, planned, budgets_ms, plan_of, [None, None], measure, solver(data), 50)
    assert len(checked.passes) == 1 and checked.passes[0].items == 2 and checked.passes[0].seconds > 0
    for c, p in zip(checked.checks, fam.paths):
        assert c.within is True and 0 < c.latency_ms < 100 and 0 < c.se_ms < c.latency_ms
        assert c.latency_ms != round(p.latency_ms, 5)  # a measurement, not the model's prediction
    assert not any(p.adapters for p in checked.plans)  # building each path to export it left its plan as it was
