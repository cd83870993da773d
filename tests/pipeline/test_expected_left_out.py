"""Donors the time estimate expected the short recipe to leave out: where it keeps one after all, the run's line
counts its final training again; where it leaves out one the estimate counted, that is recorded."""

import pytest

from dery_deploy.pipeline.estimate import Eta
from dery_deploy.pipeline.expected import put_back_heal
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.pipeline.options import RunOptions
from dery_deploy.pipeline.records import Part, RunEstimate
from dery_deploy.pipeline.run import leave_out_dominated
from dery_deploy.pipeline.runner import Run


def a_run(tmp_path, dominated: dict[str, str]) -> Run:
    opts = RunOptions(out=str(tmp_path / "run"))
    r = Run(opts)
    r.manifest = RunManifest("tiny", "h", "cpu", "onnxruntime", "fp32", opts)
    r.manifest.dominated_donors = dominated
    held = [Part("fine-tune donor b (final", "training", 40.0), Part("evaluate donor b", "evaluation", 2.0)]
    parts = [
        Part("fine-tune donor a (final", "training", 10.0),
        Part("evaluate donor a", "evaluation", 1.0),
        Part("fine-tune donor c (final", "training", 30.0),
        Part("evaluate donor c", "evaluation", 3.0),
        Part("assemble and select under", "selection", 50.0),
    ]
    est = RunEstimate(100.0, parts, {}, 0.2, expected_left_out=["b"], held_out=held)
    r.manifest.estimate, r.eta = est, Eta(est)
    return r


def test_a_donor_expected_left_out_but_kept_is_put_back_into_the_runs_line(tmp_path):
    r = a_run(tmp_path, {})
    assert r.eta is not None and r.manifest.estimate is not None
    before = r.eta.left_s()
    assert leave_out_dominated(r, {"a": 0.1, "b": 0.2, "c": 0.3}, ["a", "b", "c"]) == ["a", "b", "c"]
    assert r.eta.left_s() - before == 42.0 and r.manifest.estimate.put_back_s == 42.0
    assert r.manifest.estimate.left_out_s == 0.0
    # its stages now match a part of the line, as any other finished stage does
    assert r.eta.finished("fine-tune donor b (final, 0.200 ms)", 41.0)


def test_a_donor_expected_and_left_out_changes_nothing_and_a_counted_one_is_recorded(tmp_path):
    r = a_run(tmp_path, {"b": "a is faster", "c": "a is faster"})
    assert r.eta is not None and r.manifest.estimate is not None
    before = r.eta.left_s()
    assert leave_out_dominated(r, {"a": 0.1, "b": 0.2, "c": 0.3}, ["a", "b", "c"]) == ["a"]
    est = r.manifest.estimate
    assert est.put_back_s == 0.0 and est.left_out_s == 33.0  # c's 30 + 3 s were counted; b's never were
    assert r.eta.left_s() == before - 33.0  # the line drops c's parts as its skipped stages are recorded
    skipped = [s.stage for s in r.manifest.stages if s.status == "skipped"]
    assert skipped == [
        "fine-tune donor b (final, 0.200 ms)",
        "evaluate donor b",
        "fine-tune donor c (final, 0.300 ms)",
        "evaluate donor c",
    ]


def test_a_heal_expected_skipped_but_done_is_put_back_for_its_own_budget(tmp_path):
    """The estimate held out the heals at 0.2 and 0.3 ms; the run heals at 0.3 ms after all: that budget's three
    parts (not 0.2 ms's) go back into the line, once per budget; a budget the estimate counted changes nothing."""
    r = a_run(tmp_path, {})
    est, eta = r.manifest.estimate, r.eta
    assert est is not None and eta is not None
    est.expected_unhealed = [0.2, 0.3]
    mixes = [
        Part("heal", "training", 20.0),
        Part("evaluate best mix", "evaluation", 2.0),
        Part("export", "measurement", 1.0),
        Part("heal", "training", 30.0),
        Part("evaluate best mix", "evaluation", 3.0),
        Part("export", "measurement", 1.5),
    ]
    est.held_out += mixes
    before = eta.left_s()
    put_back_heal(r, 0.1)
    assert eta.left_s() == before and est.put_back_s == 0.0
    put_back_heal(r, 0.3)
    assert eta.left_s() - before == 34.5 and est.put_back_s == 34.5
    assert eta.finished("heal mnv3_rot[0:1] > a[1:2] (0.3 ms)", 31.0)
    # a heal expected read back (0.25 ms, between the two) but trained: its own three parts, in budget order
    est.expected_unhealed, est.expected_read_back = [0.2, 0.3], [0.25]
    est.held_out += [Part("heal", "training", 25.0), Part("evaluate best mix", "evaluation", 2.5)]
    est.held_out += [Part("export", "measurement", 1.5)]
    est.held_out[-6:-3], est.held_out[-3:] = est.held_out[-3:], est.held_out[-6:-3]  # 0.2, 0.25, 0.3 ms
    put_back_heal(r, 0.25)
    assert est.put_back_s == pytest.approx(34.5 + 29.0) and [p.seconds for p in eta.todo[:3]] == [25.0, 2.5, 1.5]
