"""The run's decisions that need no training: default budgets, and the pick among measured triples."""

import pytest

from dery_deploy.pipeline.budgets import (
    CLEARANCE,
    DOMINATED_POINTS,
    choose_budgets,
    dominated_donors,
    expected_dominated,
    expected_unhealed,
)
from dery_deploy.pipeline.pick import pick_triple
from dery_deploy.pipeline.records import Triple
from dery_deploy.train.select.evidence import Selection

DONORS = {"a": 0.10, "b": 0.14, "c": 0.20, "d": 0.60}


def test_default_budgets_sit_in_the_gaps_between_donors():
    budgets, notes = choose_budgets(DONORS, quick=False)
    assert budgets == [0.085, 0.12, 0.4] and notes == []
    assert choose_budgets(DONORS, quick=True) == ([0.12], [])


def test_a_default_budget_keeps_clear_of_every_donor():
    """A gap narrower than the measurement's disagreement between passes holds no budget: there a donor fits or
    not by the pass (the embedded zoo's two fastest donors lie 4-8% apart)."""
    fashion = {"mnv3_rot": 0.0795, "resnet10t_tops": 0.084, "convnext_lower": 0.1201, "tinynet_rot": 0.1216}
    fashion |= {"mobilevit_lower": 0.2424, "vit_tops": 0.4388}
    budgets, notes = choose_budgets(fashion, quick=True)
    assert budgets == [0.102]
    assert notes == [
        "no budget between mnv3_rot (0.0795 ms) and resnet10t_tops (0.0840 ms): any budget there lies within 5% of "
        "one of them, where a measurement could put it on either side"
    ]
    budgets, _ = choose_budgets(fashion, quick=False)
    assert budgets == [0.0676, 0.102, 0.182]
    for b in budgets:
        assert all(abs(b / ms - 1) >= CLEARANCE for ms in fashion.values()), b
    # no clear gap at all: one budget every donor meets, and one below them all
    assert choose_budgets({"a": 0.1, "b": 0.104}, quick=True)[0] == [0.156]
    assert choose_budgets({"a": 0.1, "b": 0.104}, quick=False)[0] == [0.085, 0.156]
    assert choose_budgets({"a": 0.1, "b": 0.104, "c": 0.108}, quick=False)[0] == [0.085, 0.162]


def test_a_default_budget_is_never_below_the_fastest_assembly_plus_the_margin():
    budgets, notes = choose_budgets(DONORS, quick=False, floor_ms=0.0923)
    assert budgets == [0.12, 0.4] and "0.085 ms is below" in notes[0] and "dropped" in notes[0]
    # with one budget only (--quick) it is raised to the floor, rounded up, never dropped
    budgets, notes = choose_budgets(DONORS, quick=True, floor_ms=0.1234)
    assert budgets == [0.124] and "raised to 0.124 ms" in notes[0]
    # a family needs two: where only one is left above the floor, the floor is the other
    budgets, notes = choose_budgets(DONORS, quick=False, floor_ms=0.1234, least=2)
    assert budgets == [0.124, 0.4] and len(notes) == 2
    assert "0.085 ms is below" in notes[0] and "dropped" in notes[0] and "0.12 ms is below" in notes[1]
    assert "raised to 0.124 ms" in notes[1]
    assert choose_budgets(DONORS, quick=False, floor_ms=0.1234)[0] == [0.4]  # one is enough elsewhere


def test_a_donor_far_behind_a_faster_one_after_the_short_recipe_is_left_out():
    ce = {"a": 90.5, "b": 61.5, "c": 78.5, "d": 90.5 - DOMINATED_POINTS}
    left = dominated_donors(DONORS, ce)
    # b (29 points behind a, 40% slower) and d (exactly the margin behind a) are left out, with why;
    # c is 12 points behind: the final recipe was seen to close 11.5, so it is trained
    assert sorted(left) == ["b", "d"]
    # vit_tops after the short recipe, 16.5 points behind resnet10t_tops (10.5 after the final recipe): left out
    assert sorted(dominated_donors(DONORS, {"a": 90.5, "d": 74.0})) == ["d"]
    assert left["b"].startswith("a is faster (0.100 against 0.140 ms) and validated 29.0 points better")
    # a faster donor only dominates by at least 10% of latency: a near tie in speed is no evidence
    assert dominated_donors({"a": 0.10, "b": 0.105}, {"a": 90.0, "b": 50.0}) == {}
    # never the faster one, and never a donor the short recipe did not train (no accuracy to compare)
    assert dominated_donors(DONORS, {"a": 50.0, "b": 90.0, "c": None}) == {}


def test_the_estimate_expects_the_same_rule_on_the_probe_among_the_teacher_candidates():
    probe = {"a": 82.5, "b": 53.0, "c": 77.9, "d": 40.0}
    # b is 29.5 points behind a by probe; d is further behind but not a teacher candidate (never short-trained)
    assert expected_dominated(DONORS, probe, ["a", "b", "c"]) == ["b"]
    assert expected_dominated(DONORS, probe, ["a", "b", "c", "d"]) == ["b", "d"]
    assert expected_dominated(DONORS, {"a": 82.5}, ["a", "b"]) == []  # no probe for b: nothing expected
    # the probe's gaps run smaller than the short recipe's: vit_tops was 12.0 points behind by probe and
    # 16.5 after the short recipe (left out); convnext_lower 4.6 by probe and 12.0 after it (trained)
    assert expected_dominated(DONORS, {"a": 82.5, "b": 70.5, "c": 77.9}, ["a", "b", "c"]) == ["b"]


def test_a_heal_is_expected_skipped_where_the_donor_the_probe_rates_best_fits():
    probe = {"a": 82.5, "b": 53.0, "c": 77.9, "d": 40.0}
    # a (0.10 ms) is rated best: every budget it fits expects selection to keep it over every mix
    assert expected_unhealed(DONORS, probe, [0.08, 0.1, 0.3]) == [0.1, 0.3]
    # where a slower donor is rated best, only the budgets it fits do: a mix may use its blocks below it
    assert expected_unhealed(DONORS, {**probe, "c": 90.0}, [0.08, 0.15, 0.5]) == [0.5]  # c: 0.20 ms
    assert expected_unhealed(DONORS, {}, [0.1]) == []  # no probe: every heal is counted


def noise(points: float) -> Selection:
    """A selection whose noise threshold is `points` (what the pick rule reads of it)."""
    return Selection("", "", None, None, None, points)


def triple(network, target, kind, val, ms, change=0.0):
    return Triple(network, target, kind, val, change, val + change, ms, None)


def test_the_donor_ships_unless_the_mix_wins_beyond_the_noise():
    ts = [triple("r10", "onnxruntime/fp32", "donor", 80.0, 0.10), triple("mix", "onnxruntime/fp32", "mix", 83.0, 0.09)]
    assert pick_triple(ts, noise(4.0)).network == "r10"
    won = pick_triple(ts, noise(2.0))
    assert won.network == "mix" and "beats the best donor" in won.rule


def test_int8_accuracy_is_measured_not_assumed_and_can_decide_the_pick():
    ts = [
        triple("r10", "onnxruntime/fp32", "donor", 80.0, 0.12),
        triple("r10", "openvino/int8", "donor", 80.0, 0.08, change=-0.5),
        triple("mix", "openvino/int8", "mix", 84.0, 0.07, change=-6.0),  # int8 costs this network 6 points
    ]
    pick = pick_triple(ts, noise(2.0))
    assert (pick.network, pick.target) == ("r10", "onnxruntime/fp32")  # the more accurate of its targets


def test_between_equally_accurate_targets_the_faster_ships():
    ts = [triple("r10", "onnxruntime/fp32", "donor", 80.0, 0.12), triple("r10", "openvino/fp32", "donor", 80.0, 0.09)]
    assert pick_triple(ts, noise(2.0)).target == "openvino/fp32"


def test_of_a_networks_thread_counts_the_fewest_ships_unless_more_are_measurably_faster():
    # a run's figures (tiny zoo, openvino/fp32 on one core): two threads 0.1363 ms ±1.6%, one 0.1367 ms ±1.6%
    t1 = Triple("cnx", "openvino/fp32/t1", "donor", 68.5, 0.0, 68.5, 0.13666, 0.01603)
    t2 = Triple("cnx", "openvino/fp32/t2", "donor", 68.5, 0.0, 68.5, 0.1363, 0.01621)
    assert pick_triple([t1, t2], noise(2.0)).target == "openvino/fp32/t1"
    # faster by more than both standard errors (0.0022 + 0.0018 ms): two threads ship
    fast = Triple("cnx", "openvino/fp32/t2", "donor", 68.5, 0.0, 68.5, 0.1100, 0.01621)
    assert pick_triple([t1, fast], noise(2.0)).target == "openvino/fp32/t2"
    # another runtime's one thread is no reason: the faster target ships
    ort = Triple("cnx", "onnxruntime/fp32/t1", "donor", 68.5, 0.0, 68.5, 0.14848, 0.0109)
    assert pick_triple([ort, t2], noise(2.0)).target == "openvino/fp32/t2"


def test_a_target_whose_export_does_not_repeat_its_finalist_figure_is_set_aside_for_the_same_network():
    """A default run's figures (AMD EPYC, 2 cores): resnet10t at two OpenVINO threads won its budget at 0.1066 ms
    as a finalist, and its exported file measured 0.1596 ms (+50%), slower than the same network at one ONNX
    Runtime thread (0.1190 ms as a finalist). The export's figure is what a user gets: that network ships on
    the one thread; its int8 target, less accurate, and other networks are no choice."""
    from dery_deploy.pipeline.pick import retarget

    ts = [
        triple("r10", "openvino/fp32/t2", "donor", 85.0, 0.1066),
        triple("r10", "onnxruntime/fp32/t1", "donor", 85.0, 0.1190),
        triple("r10", "openvino/fp32/t1", "donor", 85.0, 0.1300),
        triple("r10", "openvino/int8/t1", "donor", 85.0, 0.0880, change=-0.5),
        triple("mix", "onnxruntime/fp32/t1", "mix", 84.0, 0.0650),
    ]
    pick = pick_triple(ts, noise(2.0))
    assert pick.target == "openvino/fp32/t2"
    again = retarget(pick, ts, 0.1596)
    assert again is not None and (again.network, again.target) == ("r10", "onnxruntime/fp32/t1")
    assert again.rule.startswith("openvino/fp32/t2 did not repeat: 0.1066 ms as a finalist, 0.1596 ms exported (+50%)")
    assert retarget(pick, ts, 0.1150) is None  # +8%: within what the final pass admits
    assert retarget(pick, ts, None) is None  # an export not timed here
    # no other target of the network runs under the exported figure: nothing better to ship, the final pass judges
    assert retarget(pick, ts, 0.1185 / 0.9) is not None and retarget(pick, [ts[0], ts[2]], 0.1250) is None


def test_no_triple_is_an_error_not_a_guess():
    from dery_deploy.errors import DeryError

    with pytest.raises(DeryError, match="no measured finalist"):
        pick_triple([], noise(1.0))


def test_int8_never_ships_a_network_that_fits_in_fp32():
    """A measured int8 gain is validation noise: between one network's targets fp32 ships when it fits,
    even where int8 is faster; int8 ships a network only fp32 cannot fit."""
    ts = [
        triple("mix", "onnxruntime/fp32", "mix", 80.0, 0.066),
        triple("mix", "openvino/int8", "mix", 80.0, 0.060),  # score_triples counts a measured gain as none
        triple("r10", "openvino/int8", "donor", 70.0, 0.09, change=-0.2),
    ]
    assert pick_triple(ts, noise(2.0)).target == "onnxruntime/fp32"
    ts = [
        triple("mix", "openvino/int8", "mix", 80.0, 0.060, change=-0.3),
        triple("r10", "onnxruntime/fp32", "donor", 70.0, 0.09),
    ]
    assert (pick_triple(ts, noise(2.0)).network, pick_triple(ts, noise(2.0)).target) == (
        "mix",
        "openvino/int8",
    )


def test_a_mix_is_healed_only_where_its_accuracy_could_change_the_pick():
    from dery_deploy.pipeline.pick import donor_whatever_the_mix

    donors = [
        triple("r10", "onnxruntime/fp32", "donor", 84.0, 0.20),
        triple("r10", "openvino/int8", "donor", 83.0, 0.1),
    ]
    # the mix's best selection accuracy is 10 points behind: no heal can change the pick (it reads that accuracy)
    ruled = donor_whatever_the_mix(donors, 74.0, "a[0:2] > b[2:4]", noise(2.7))
    assert ruled is not None and (ruled.network, ruled.target, ruled.kind) == ("r10", "onnxruntime/fp32", "donor")
    assert "10.00 points worse" in ruled.rule
    # it is what the pick rule gives with the mix scored at that accuracy
    full = pick_triple([*donors, triple("a[0:2] > b[2:4]", "onnxruntime/fp32", "mix", 74.0, 0.15)], noise(2.7))
    assert (full.network, full.target, full.rule) == (ruled.network, ruled.target, ruled.rule)
    # ahead within the noise: the donor ships whatever the heal gives; beyond it the mix may win, so it is healed
    assert donor_whatever_the_mix(donors, 85.0, "m", noise(2.7)) is not None
    assert donor_whatever_the_mix(donors, 87.0, "m", noise(2.7)) is None
    assert (
        donor_whatever_the_mix([], 70.0, "m", noise(2.7)) is None
        and donor_whatever_the_mix(donors, None, "m", noise(1)) is None
    )
