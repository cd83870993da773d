"""The rule that leaves a target out of selection: dominated at every budget by the profiles and their errors.

Figures are shaped like a run's: the donors' predicted latencies and the latency checks' largest errors are
those of the default run on a 2-core Xeon (shared/evidence/xeon-host-2026-12: onnxruntime/fp32 12.7%,
openvino/fp32 18.6%, openvino/int8 15.1%); the mixed networks' are made up around them.
"""

from dery_deploy.pipeline.targets import TargetFigures, dominated_targets, sure_win

ORT, OV, INT8 = "onnxruntime/fp32", "openvino/fp32", "openvino/int8"
CNX, TINY, R10, MNV3 = (
    "convnext_atto (whole donor)",
    "tinynet_e (whole donor)",
    "resnet10t (whole donor)",
    "mobilenetv3_small_050 (whole donor)",
)
MIX = "resnet10t[0:2] + convnext_atto[2:4]"


def ort(pools, err=0.12678):
    return TargetFigures(ORT, err, pools)


def ov(pools, err=0.18563):
    return TargetFigures(OV, err, pools)


def test_a_target_slower_on_every_network_beyond_both_errors_is_dropped():
    # at 1.2 ms: convnext_atto 0.762 ms on onnxruntime, 1.109 ms on openvino (the Xeon's profiles)
    a = ort({1.2: {CNX: 0.7617, TINY: 0.5893, MIX: 0.61}})
    b = ov({1.2: {CNX: 1.1085, TINY: 0.9348, MIX: 0.95}})
    p = dominated_targets([a, b], [1.2])
    assert p.kept == [ORT]
    [d] = p.dropped
    assert d.target == OV and d.by == {"1.2": ORT}
    # one sentence with the figures: the closest call and both errors
    assert "closest: convnext_atto (whole donor) 1.1085 ms vs 0.7617 ms, errors 18.6% and 12.7%" in d.why
    assert d.why.startswith("openvino/fp32 not searched in selection, dominated at every budget")


def test_a_close_call_within_the_errors_is_kept():
    # resnet10t: 0.498 ms on onnxruntime, 0.685 ms on openvino: 37% slower, yet 0.685 x (1 - 0.186) = 0.558 is not
    # above 0.498 x (1 + 0.127) = 0.561, so a measurement could still find openvino the faster
    a = ort({0.8: {R10: 0.4979, MNV3: 0.45}})
    b = ov({0.8: {R10: 0.685, MNV3: 0.5855}})
    assert sure_win(a, b, R10, 0.8) is None
    p = dominated_targets([a, b], [0.8])
    assert p.kept == [ORT, OV] and p.dropped == []


def test_a_target_without_a_latency_check_is_kept():
    a = ort({1.2: {CNX: 0.5}})
    b = ov({1.2: {CNX: 1.5}}, err=None)
    assert dominated_targets([a, b], [1.2]).dropped == []


def test_an_int8_target_is_never_dropped_on_latency_alone():
    # openvino/int8 three times slower than onnxruntime/fp32 on each network: without its measured accuracy
    # change the run cannot say the pick would never choose it
    a = ort({1.0: {R10: 0.2, CNX: 0.3}})
    q = TargetFigures(INT8, 0.15078, {1.0: {R10: 0.6, CNX: 0.9}})
    assert dominated_targets([a, q], [1.0]).kept == [ORT, INT8]
    # nor an fp32 target by an int8 one, however much faster int8 is
    slow = ov({1.0: {R10: 0.9, CNX: 0.95}})
    fast8 = TargetFigures(INT8, 0.15078, {1.0: {R10: 0.2, CNX: 0.25}})
    assert dominated_targets([slow, fast8], [1.0]).kept == [OV, INT8]


def test_with_its_accuracy_figures_int8_loses_as_the_pick_rule_has_it():
    # the pick: accuracy first (int8's is the network's plus its change, a gain counted as none), then fp32
    a = ort({1.0: {R10: 0.4, CNX: 0.8}})
    q = TargetFigures(INT8, 0.15078, {1.0: {R10: 0.3, CNX: 0.7}}, int8_change={R10: -0.4, CNX: 0.2})
    p = dominated_targets([a, q], [1.0])
    assert p.kept == [ORT] and "more accurate on all 2 networks" in p.dropped[0].why
    # a network int8 fits and fp32 does not: int8 may ship it, so it is kept
    q2 = TargetFigures(INT8, 0.15078, {1.0: {R10: 0.3, CNX: 0.7, MIX: 0.9}}, int8_change={R10: -0.4, CNX: 0.2})
    assert dominated_targets([a, q2], [1.0]).kept == [ORT, INT8]


def test_a_target_that_wins_at_one_budget_is_kept():
    a = ort({0.8: {R10: 0.3}, 1.2: {R10: 0.3, CNX: 0.7617}})
    # at 0.8 ms openvino is dominated; at 1.2 ms it proposes a mix onnxruntime cannot fit
    b = ov({0.8: {R10: 0.9}, 1.2: {R10: 0.9, MIX: 1.05}})
    p = dominated_targets([a, b], [0.8, 1.2])
    assert p.kept == [ORT, OV] and p.dropped == []
    assert dominated_targets([a, b], [0.8]).kept == [ORT]


def test_a_network_a_smaller_budget_may_carry_counts_against_the_target_only():
    a = ort({1.2: {CNX: 0.7617}})
    # openvino may be carried a mix (a finalist at a smaller budget) that onnxruntime's pool does not surely hold
    b = TargetFigures(OV, 0.18563, {1.2: {CNX: 1.1085}}, carried={1.2: {MIX: 0.9}})
    assert dominated_targets([a, b], [1.2]).kept == [ORT, OV]
    # carried into onnxruntime too, it does not make onnxruntime sure to propose what openvino does
    a2 = TargetFigures(ORT, 0.12678, {1.2: {CNX: 0.7617}}, carried={1.2: {MIX: 0.5}})
    assert dominated_targets([a2, b], [1.2]).kept == [ORT, OV]
    b2 = ov({1.2: {CNX: 1.1085}})
    assert dominated_targets([a2, b2], [1.2]).kept == [ORT]


def test_a_dropped_target_names_a_kept_one_that_dominates_it():
    # a dominates b, b dominates c: c is dominated by a as well, and named so (b is not searched)
    a = ort({1.0: {R10: 0.1, MNV3: 0.1}})
    b = ov({1.0: {R10: 0.5, MNV3: 0.3}})
    c = TargetFigures("tensorrt/fp32", 0.05, {1.0: {MNV3: 0.9}})
    p = dominated_targets([a, b, c], [1.0])
    assert p.kept == [ORT] and {d.target: d.by for d in p.dropped} == {OV: {"1": ORT}, "tensorrt/fp32": {"1": ORT}}


def test_a_target_that_proposes_nothing_at_a_budget_is_dominated_there():
    a = ort({0.3: {MNV3: 0.2}, 1.0: {R10: 0.2}})
    b = ov({0.3: {}, 1.0: {R10: 0.9}})
    p = dominated_targets([a, b], [0.3, 1.0])
    assert p.kept == [ORT] and "at 0.3 ms it proposes nothing, onnxruntime/fp32 does" in p.dropped[0].why


def test_the_decision_reads_back_from_run_json_and_the_report_states_it():
    import json
    from pathlib import Path

    from dery_deploy.pipeline.manifest import RunManifest
    from dery_deploy.report.sections import targets_lines

    run = json.loads((Path(__file__).parents[1] / "report" / "fixtures" / "tiny-quick" / "run.json").read_text())
    assert RunManifest.from_dict(run).target_pruning is None  # a run from before the rule: nothing said
    a = ort({1.2: {CNX: 0.7617, TINY: 0.5893}})
    b = ov({1.2: {CNX: 1.1085, TINY: 0.9348}})
    pruning = dominated_targets([a, b], [1.2])
    run["target_pruning"] = {**pruning.__dict__, "dropped": [d.__dict__ for d in pruning.dropped]}
    m = RunManifest.from_dict(json.loads(json.dumps(run)))
    assert m.target_pruning == pruning
    lines = targets_lines(m)
    assert lines[0].startswith("Targets searched in selection: onnxruntime/fp32 (decided from the profiles")
    assert f"- {pruning.dropped[0].why}" in lines
