"""Thread counts as targets: which a run searches, how it names them, and that each is profiled, assembled for
and measured at its own count, the plan recording it (issue 26, item 3)."""

import os

import pytest

from dery_deploy.assemble.pool import target_of
from dery_deploy.assemble.stage import AssembleRequest, assemble
from dery_deploy.pipeline.options import RunOptions
from dery_deploy.pipeline.run import resolve_targets
from dery_deploy.pipeline.target_profiles import target_names
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.profile.run import run_profile
from dery_deploy.profile.store import read_profile
from dery_deploy.runtime.devices import get_device, load_device
from dery_deploy.runtime.harness import TimingOptions
from tests.conftest import ROOT

SEARCH = ["onnxruntime/fp32", "openvino/fp32", "openvino/int8"]  # devices/cpu.yaml's `search`


def test_a_run_searches_each_target_at_each_count_and_names_the_counts_only_then(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text((ROOT / "devices" / "cpu.yaml").read_text().replace("threads: [1, all]", "threads: [1, 2]"))
    two = resolve_targets(load_device(spec), RunOptions())
    # each count's targets after the previous count's: a time limit cuts the extra count first
    assert target_names(two) == [f"{t}/t{n}" for n in (1, 2) for t in SEARCH]
    assert [b.threads for b, _ in two] == [1, 1, 1, 2, 2, 2]
    cpu = get_device("cpu")
    cores = len(os.sched_getaffinity(0))
    default = resolve_targets(cpu, RunOptions())
    if cores == 1:  # 1 is every core: one count, named as before counts were searched
        assert target_names(default) == SEARCH and {b.threads for b, _ in default} == {1}
    else:
        assert target_names(default) == [f"{t}/t{n}" for n in (1, cores) for t in SEARCH]
        assert [b.threads for b, _ in default] == [1] * 3 + [cores] * 3
    quick = resolve_targets(load_device(spec), RunOptions(quick=True))  # --quick: the first count alone
    assert target_names(quick) == SEARCH and [b.threads for b, _ in quick] == [1, 1, 1]
    assert target_names(resolve_targets(load_device(spec), RunOptions(quick=True, threads=2))) == SEARCH
    pinned = resolve_targets(cpu, RunOptions(threads=2))  # --threads pins one count
    assert target_names(pinned) == SEARCH and [b.threads for b, _ in pinned] == [2, 2, 2]
    asked = resolve_targets(cpu, RunOptions(targets=["onnxruntime/fp32/t2", "openvino/int8"], threads=1))
    assert target_names(asked) == ["onnxruntime/fp32/t2", "openvino/int8/t1"]
    again = resolve_targets(cpu, RunOptions(targets=["onnxruntime/fp32", "onnxruntime/fp32/t1"], threads=1))
    assert target_names(again) == ["onnxruntime/fp32"]  # the same target asked twice is searched once


def test_two_counts_are_distinct_targets_and_each_plan_records_its_count(tiny_ws, fashion_task, tmp_path):
    cpu = get_device("cpu")
    short = TimingOptions(min_windows=5, max_s=0.5)  # the figures only need to exist
    [t2_path] = run_profile(
        tiny_ws.zoo, cpu, "onnxruntime", "fp32", [1], tiny_ws.partition, tiny_ws.dis, tmp_path, num_classes=10,
        threads=2, timing=short,
    )  # fmt: skip
    t2 = read_profile(t2_path)
    assert t2_path.name == "tiny-onnxruntime-fp32-b1-t2.json" and tiny_ws.profile_path.name.endswith("-b1-t1.json")
    assert (tiny_ws.profile.threads, t2.threads) == (1, 2) and set(t2.records) == set(tiny_ws.profile.records)
    m1, m2 = LatencyModel.of(tiny_ws.profile), LatencyModel.of(t2)
    m1.threads_named = m2.threads_named = True  # as `profile_targets` names them where a run searches two counts
    assert [target_of(m1), target_of(m2)] == ["onnxruntime/fp32/t1", "onnxruntime/fp32/t2"]

    res = assemble(
        tiny_ws.zoo, tiny_ws.partition, tiny_ws.dis, m1, fashion_task, AssembleRequest(2.0, top=2), more_models=(m2,)
    )
    count = {"onnxruntime/fp32/t1": 1, "onnxruntime/fp32/t2": 2}
    assert {c.target for c in res.candidates} == set(count)  # both counts proposed, as two targets
    assert set(res.solver.targets) == set(count)
    for c in res.candidates:  # every plan ships with the count it was planned and measured at
        assert c.plan.threads == count[c.target] and c.plan.backend == "onnxruntime", c.key
    for c in res.finalists:
        assert c.measured["threads"] == count[c.target] and c.measured["median_ms"] <= 2.0, c.key
    # the same network on the two counts: two (network, target) pairs, measured apart
    names = [c.name for c in res.finalists]
    assert len({c.key for c in res.finalists}) == len(res.finalists) and len(set(names)) < len(names)
    assert res.plan.threads == count[res.finalists[0].target]


@pytest.mark.parametrize("gap_s", [None, 0.0])
def test_a_further_count_is_screened_on_its_donors_or_profiled_and_every_target_is_accounted_for(
    tiny_ws, fashion_task, tmp_path, monkeypatch, gap_s
):
    """`profile_targets` on the tiny zoo at one and two threads: the first count's profile is the fixture's own
    (copied, so reused); the second count is timed on its whole donors first and then either screened out with
    its figures or profiled and checked in full; which one depends on this machine, the record does not. The
    first count reused, its second spell check comes after its latency check (less than `SPELL_GAP_S` after the
    first); with no gap required (`gap_s` 0), before its full profile, which a count that does not repeat skips."""
    import shutil

    from dery_deploy.pipeline import target_profiles
    from dery_deploy.pipeline.manifest import RunManifest
    from dery_deploy.pipeline.runner import Run
    from dery_deploy.pipeline.target_profiles import profile_targets
    from dery_deploy.pipeline.thread_screen import DONOR

    opts = RunOptions(targets=["onnxruntime/fp32/t1", "onnxruntime/fp32/t2"], verify=3, out=str(tmp_path / "run"))
    r = Run(opts)
    cpu = get_device("cpu")
    targets = resolve_targets(cpu, opts)
    r.manifest = RunManifest(tiny_ws.zoo.name, tiny_ws.zoo.hash(), cpu.id, "onnxruntime", "fp32", opts)
    r.manifest.targets = target_names(targets)
    t1 = r.cache / "profiles" / "cpu" / "tiny-onnxruntime-fp32-b1-t1.json"
    t1.parent.mkdir(parents=True)
    shutil.copy(tiny_ws.profile_path, t1)
    if gap_s is not None:
        monkeypatch.setattr(target_profiles, "SPELL_GAP_S", gap_s)
    models = profile_targets(r, tiny_ws.zoo, cpu, targets, tiny_ws.partition, tiny_ws.dis, fashion_task)
    m = r.manifest
    stages = {s.stage: s.status for s in m.stages}
    order = [s.stage for s in m.stages]
    assert (
        stages["profile onnxruntime/fp32/t1"] == "reused"
        and "screen onnxruntime/fp32/t1 on its whole donors" not in stages
    )
    assert stages["screen onnxruntime/fp32/t2 on its whole donors"] == "computed"
    t2 = read_profile(t1.with_name("tiny-onnxruntime-fp32-b1-t2.json"))
    assert t2.threads == 2 and sum(k.startswith(DONOR) for k in t2.records) == len(tiny_ws.zoo.donor_names)
    kept = [target_of(x) for x in models]
    left_out = [s.target for s in m.screened] + [u.target for u in m.unrepeatable]
    assert sorted(kept + left_out) == ["onnxruntime/fp32/t1", "onnxruntime/fp32/t2"] and "onnxruntime/fp32/t1" in kept
    spells = m.thread_spells  # made only where the count passed its donors' screen (`thread_spells.py`)
    assert [c.extra for c in spells] == (["onnxruntime/fp32/t2"] if spells else [])
    if spells:  # once before the full profile, and where it held, once more after the latency check, pooled
        c = spells[0]
        assert stages["thread spells onnxruntime/fp32/t2 (1 of 2)"] == "computed"
        profiled = "profile onnxruntime/fp32/t2" in stages
        assert len(c.ratios) == 8 * c.checks and (c.checks == 2 or not profiled) and (profiled or not c.repeats)
        if c.checks == 2 and profiled:  # the second check after the latency check, or (no gap required) before it
            second = order.index("thread spells onnxruntime/fp32/t2 (2 of 2)")
            assert (second < order.index("profile onnxruntime/fp32/t2")) == (gap_s == 0.0)
    if m.screened:  # left out on its donors, or on its spells before or after its profile
        [s] = m.screened
        assert s.against == "onnxruntime/fp32/t1"
        if spells and not spells[0].repeats:
            assert s.why == spells[0].why("onnxruntime/fp32/t2") and "do not repeat on this machine" in s.why
        else:
            assert s.why.startswith("onnxruntime/fp32/t2 not profiled beyond its 3")
        if not spells or spells[0].checks == 1 or gap_s == 0.0:  # not profiled further, no latency check
            assert "profile onnxruntime/fp32/t2" not in stages
            assert len(t2.records) == 1 + len(tiny_ws.zoo.donor_names)
        assert "onnxruntime/fp32/t2" not in [target_of(x) for x in models]
    else:  # profiled in full and checked, like any target, and its spells held twice
        assert set(t2.records) == set(tiny_ws.profile.records) and "onnxruntime/fp32/t2" in m.verify_by_target
        assert spells and spells[0].repeats and spells[0].checks == 2


def test_a_spell_check_times_the_gaining_donor_at_both_counts_in_turn(tiny_ws, monkeypatch):
    """`check_spells` on the tiny zoo's donors at OpenVINO fp32, one thread against two, in a real (shortened)
    pass: the donor that may fit and gains most is timed, and every stretch has its ratio."""
    from dataclasses import replace

    from dery_deploy.pipeline import thread_spells
    from dery_deploy.pipeline.thread_screen import DONOR

    monkeypatch.setattr(thread_spells, "SPELL_S", 3.0)
    first = replace(tiny_ws.profile, backend="openvino", threads=1)
    donors = sorted(k for k in first.records if k.startswith(DONOR))
    # the profiles' medians only choose the donor: the second gains most at two threads; the last is the slowest
    gain = dict(zip(donors, (0.95, 0.7, 0.5), strict=True))
    extra = replace(
        first,
        threads=2,
        records={k: replace(r, median_ms=r.median_ms * gain.get(k, 1.0)) for k, r in first.records.items()},
    )
    slowest = max(donors, key=lambda k: first.records[k].median_ms)
    check = thread_spells.check_spells(tiny_ws.zoo, "cpu", first, extra, 10, None)
    assert check is not None and (check.first, check.extra, check.threads) == (
        "openvino/fp32/t1",
        "openvino/fp32/t2",
        2,
    )
    fit = [k for k in donors if k != slowest]
    best = min(fit, key=lambda k: gain[k])
    assert check.donor == first.records[best].info["donor"]
    assert len(check.ratios) == 8 and all(0.2 < v < 5 for v in check.ratios) and check.seconds >= 3.0


def test_a_time_limit_its_profiles_used_up_leaves_the_further_targets_out_and_says_so(tiny_ws, fashion_task, tmp_path):
    """`profile_targets` under a limit already spent once the first target is profiled (the fixture's profile,
    reused): every further target the device spec lists is not searched, the run's targets are cut to the first
    and the cut is recorded as a time-limit cut (`time_limit.keeps_profiling`)."""
    import shutil

    from dery_deploy.pipeline.manifest import RunManifest
    from dery_deploy.pipeline.runner import Run
    from dery_deploy.pipeline.target_profiles import profile_targets

    opts = RunOptions(time_limit=0.0001, verify=3, out=str(tmp_path / "run"))
    r = Run(opts)
    cpu = get_device("cpu")
    targets = resolve_targets(cpu, opts)
    names = target_names(targets)
    assert len(names) > 1 and names[0].startswith("onnxruntime/fp32")
    r.manifest = RunManifest(tiny_ws.zoo.name, tiny_ws.zoo.hash(), cpu.id, "onnxruntime", "fp32", opts)
    r.manifest.targets = list(names)
    first = r.cache / "profiles" / "cpu" / "tiny-onnxruntime-fp32-b1-t1.json"
    first.parent.mkdir(parents=True)
    shutil.copy(tiny_ws.profile_path, first)
    models = profile_targets(r, tiny_ws.zoo, cpu, targets, tiny_ws.partition, tiny_ws.dis, fashion_task)
    assert [target_of(m) for m in models] == [names[0]] and r.manifest.targets == [names[0]]
    assert r.manifest.time_limit is not None
    assert r.manifest.time_limit.cuts == [
        f"targets {', '.join(names[1:])} not searched (the profiles used the time for them)"
    ]
    assert not r.manifest.screened  # cut by time, not screened
