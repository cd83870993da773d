"""The latency model's choice of whether to subtract the per-call overhead per part, on synthetic
profiles where the answer is known: parts that each pay one constant call overhead, in networks that pay
it once (a CPU runtime's session call) or once per part (device-bound parts, as under CUDA graphs)."""

import pytest

from dery_deploy.profile.latency_model import UNITS_PER_MS, LatencyModel, budget_us, fit_latency_check, to_us
from dery_deploy.profile.store import Profile, Record, VerifyRow

OVERHEAD_MS = 0.012  # the near-empty item: what one call costs beyond its work


def profile_of(items_ms: dict[str, float]) -> Profile:
    """A profile whose items took `items_ms` each (their overhead included) plus its overhead item."""
    recs = {k: Record("block", ms, ms, ms, 0.0, 100, True) for k, ms in items_ms.items()}
    recs["overhead|x"] = Record("overhead", OVERHEAD_MS, OVERHEAD_MS, OVERHEAD_MS, 0.0, 100, True)
    return Profile("cpu", "cpu", {"start": {}, "end": None}, "onnxruntime", "1", "fp32", 1, "z", "h", recs)


# assemblies of 2 to 6 parts, so a per-part error cannot be absorbed by one scale
WORK = {f"b{i}": 0.02 + 0.013 * i for i in range(8)}  # each part's own work, ms
ASSEMBLIES = [["b0", "b1"], ["b2", "b3", "b4"], ["b5", "b6", "b7", "b0"], ["b1", "b3", "b5", "b7", "b2"],
              ["b0", "b2", "b4", "b6", "b1", "b3"], ["b4", "b5", "b6"], ["b7", "b1"]]  # fmt: skip


def rows_for(once: bool) -> tuple[Profile, list[VerifyRow]]:
    """Verify rows as `profile.run.verify` writes them; measured networks pay the overhead once (`once`) or per part."""
    prof = profile_of({k: w + OVERHEAD_MS for k, w in WORK.items()})
    sub, plain = LatencyModel(prof), LatencyModel(prof, subtract_overhead=False)
    rows = []
    for i, keys in enumerate(ASSEMBLIES):
        work = sum(WORK[k] for k in keys)
        measured = work + OVERHEAD_MS * (1 if once else len(keys))
        p, s = sub.predict_ms(keys), plain.predict_ms(keys)
        rows.append(VerifyRow(f"a{i}", len(keys) - 1, 0.0, measured, True, p, p, measured, None, 0.0, raw_sum_ms=s,
                              calibrated_sum_ms=s))  # fmt: skip
    return prof, rows


def test_device_bound_parts_choose_no_subtraction():
    """Networks that pay each part's overhead (GPU-bound parts) are predicted exactly only by the plain sum."""
    prof, rows = rows_for(once=False)
    check = fit_latency_check(rows, 0, "k")
    assert check.subtract_overhead is False
    assert check.median_abs_rel_error < 1e-3 and check.max_abs_rel_error < 1e-3
    # the rule the profiles used so far predicts these networks too fast, the more parts the more so
    assert check.raw_median_abs_rel_error > 0.05
    prof.verify = check
    model = LatencyModel.of(prof)
    assert not model.subtract_overhead and model.overhead_ms() == 0.0
    keys = ASSEMBLIES[4]
    assert model.predict_ms(keys) == pytest.approx(sum(WORK[k] + OVERHEAD_MS for k in keys) * check.scale, abs=2e-5)


def test_networks_that_pay_the_overhead_once_keep_the_subtraction():
    prof, rows = rows_for(once=True)
    check = fit_latency_check(rows, 0, "k")
    assert check.subtract_overhead is True and check.median_abs_rel_error < 1e-3
    prof.verify = check
    assert LatencyModel.of(prof).overhead_ms() == OVERHEAD_MS


def test_rows_without_plain_sums_try_only_the_subtraction():
    """A latency check fitted before the plain sums were recorded keeps the rule it was made with."""
    _, rows = rows_for(once=False)
    old = [VerifyRow(**{**r.__dict__, "raw_sum_ms": None, "calibrated_sum_ms": None}) for r in rows]
    assert fit_latency_check(old, 0, "k").subtract_overhead is True


def test_the_program_unit_is_finer_than_a_microsecond():
    """GPU items of a few microseconds keep their fractions: 1.234 us is not rounded to 1 us (which was
    up to 5% of a small assembly on a GPU); every item is off by at most 5 ns now."""
    for ms in (0.001234, 0.0015, 0.019999):
        assert abs(to_us(ms) / UNITS_PER_MS - ms) <= 5e-6 + 1e-12
        assert ms - 1e-5 <= budget_us(ms) / UNITS_PER_MS <= ms  # a budget is rounded down, by under 10 ns
    assert to_us(0.0012) != to_us(0.0008)  # two items whole microseconds rounded alike


def test_a_whole_donor_is_predicted_as_measured_whole_not_by_the_assemblies_scale():
    """Assemblies that run 1.4x their parts (as OpenVINO INT8's did on the Xeon host: scale 1.406) fit a
    scale of 1.4; a donor is one item measured whole, so it is predicted as its own median (at p90, times
    the check's p90 scale over its median scale), never times 1.4 (0.1008 ms measured was 0.142 predicted)."""
    prof = profile_of({k: w + OVERHEAD_MS for k, w in WORK.items()})
    prof.records["donor|d|x|10"] = Record("donor", 0.1008, 0.13, 0.15, 0.0, 100, True)
    sub = LatencyModel(prof)
    rows = []
    for i, keys in enumerate(ASSEMBLIES):
        measured = 1.4 * (sum(WORK[k] for k in keys) + OVERHEAD_MS)
        p = sub.predict_ms(keys)
        rows.append(VerifyRow(f"a{i}", len(keys) - 1, 0.0, measured, True, p, p, measured, None, 0.0,
                              measured_p90_ms=1.1 * measured, measured_p99_ms=1.2 * measured))  # fmt: skip
    prof.verify = fit_latency_check(rows, 0, "k")
    assert prof.verify.scale == pytest.approx(1.4, rel=1e-3)
    model = LatencyModel.of(prof)
    assert model.predict_ms(["donor|d|x|10"]) == pytest.approx(0.1008, abs=1e-5)
    assert model.predict_ms(ASSEMBLIES[0]) == pytest.approx(rows[0].measured_ms, rel=1e-3)  # mixes keep the scale
    p90 = LatencyModel.of(prof, percentile=90)
    assert p90.predict_ms(["donor|d|x|10"]) == pytest.approx(0.1008 * 1.1, abs=1e-5)
    assert p90.predict_ms(ASSEMBLIES[1]) == pytest.approx(1.1 * rows[1].measured_ms, rel=1e-3)
