import numpy as np
import pytest

from dery_deploy.runtime.disturbance import SPELL, spell_masks, spell_rounds
from dery_deploy.runtime.harness import TimingOptions, measure_interleaved
from tests.runtime.test_harness import spin


def medians(slow: dict[str, set[int]], rounds: int = 12, factor: float = 1.4) -> dict[str, list[float]]:
    """Per item, window medians of 1 ms, `factor` times that in its rounds listed in `slow`."""
    return {k: [factor if r in s else 1.0 for r in range(rounds)] for k, s in slow.items()}


def every_round(items, rounds: int = 12) -> dict[str, list[int]]:
    return {k: list(range(rounds)) for k in items}


def test_a_round_where_most_items_ran_slow_at_once_is_a_spell():
    m = medians({"a": {3, 4, 7}, "b": {3, 4}, "c": {4, 9}, "ref": {3, 4}})
    # round 3: three of four slow; round 4: all; round 7 and 9: one item alone (its own, not the machine's)
    assert spell_rounds(m, every_round(m)) == {3, 4}
    masks = spell_masks(m, every_round(m))
    assert masks["c"].tolist() == [r in (3, 4) for r in range(12)]  # c's own slow round 9 is kept


def test_with_two_items_both_must_be_slow():
    m = medians({"file": {2, 5}, "ref": {5, 6}})
    assert spell_rounds(m, every_round(m)) == {5}


def test_a_slowdown_just_inside_the_threshold_or_over_most_of_the_pass_is_not_left_out():
    small = medians({"a": {1, 2}, "b": {1, 2}}, factor=1 + SPELL * 0.8)
    assert spell_rounds(small, every_round(small)) == set()
    most = medians({"a": set(range(7)), "b": set(range(7))})  # 7 of 12 rounds: the machine's speed then
    assert spell_rounds(most, every_round(most)) != set()
    assert not any(mask.any() for mask in spell_masks(most, every_round(most)).values())


def test_items_timed_in_only_some_rounds_are_judged_by_the_rounds_they_were_in():
    m = {"a": [1.0] * 10 + [1.5, 1.5], "b": [1.0] * 10 + [1.5, 1.5], "c": [1.0] * 10}
    r = {"a": list(range(12)), "b": list(range(12)), "c": list(range(10))}
    assert spell_rounds(m, r) == {10, 11}
    assert spell_masks(m, r)["c"].sum() == 0


def test_a_machine_wide_spell_is_left_out_of_the_promise_and_counted():
    """Rounds 10-15 of 40 run every item 1.6x slower at once (a host's slow spell); without the rule the
    p90 over all calls is the spell's. Item b is also slow on its own in a few rounds: those stay in."""
    state = {"factor": 1.0, "round": 0}

    def after_round(done: int, planned: int) -> None:
        state["round"] = done // 3
        state["factor"] = 1.6 if 10 <= state["round"] < 16 else 1.0

    def b():
        spin(0.2 * state["factor"] * (1.6 if state["round"] in (30, 31, 32, 33, 34) else 1.0))

    res, summary = measure_interleaved(
        {
            "a": (lambda: spin(0.1 * state["factor"]), False, None),
            "b": (b, False, None),
            "ref": (lambda: spin(0.05 * state["factor"]), False, None),
        },
        TimingOptions(min_windows=40, window_s=0.002, max_s=0, statistic="all"),
        progress=after_round,
    )
    assert summary.rounds == 40 and 5 <= summary.spell_rounds <= 7, summary
    assert "slow spell" in summary.line()
    assert res["a"].spell_windows == summary.spell_rounds
    assert res["a"].promise_at(90) == pytest.approx(0.1, rel=0.15)  # the spell's 0.16 ms left out
    # b's own slow rounds (it alone, 5 of its 34 windows outside the spell) are the network's: they stay in,
    # and at 15% of its calls they are its p90
    assert res["b"].promise_at(90) == pytest.approx(0.32, rel=0.15)
    assert np.isclose(res["ref"].promise_at(50), 0.05, rtol=0.2)
