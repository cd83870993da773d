"""The rule that leaves out a thread count whose measurements do not repeat (`pipeline/repeatability.py`).

The noise indices are figures this project's profiles recorded: 0.269% for the tiny zoo's items at one thread
on the 2-core VM, 35.6% for the same items at two threads on a one-core affinity (the other core busy with
another process's benchmark, 2026-12-04); 3.49% and 6.15% for the Xeon host's onnxruntime/fp32 one-thread
profile and one of its passes, 31.6% for a pass of its openvino/int8 profile (shared/evidence/xeon-host-2026-12).
"""

import json
from pathlib import Path

from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.pipeline.repeatability import UnrepeatableTarget, noise_index, repeatable
from dery_deploy.profile.latency_model import LatencyModel
from dery_deploy.profile.store import Profile, Record
from dery_deploy.report.sections import targets_lines

QUIET_VM, ONE_CORE_T2, XEON, XEON_PASS, XEON_INT8_PASS = 0.00269, 0.35648, 0.03486, 0.06145, 0.31647


def model(backend: str, precision: str, threads: int, noise: list[float]) -> LatencyModel:
    """A latency model of a profile whose items recorded `noise` (one item each), named with its count."""
    records = {
        f"donor|d{i}": Record("donor", 0.5, 0.55, 0.6, 0.004, 100, True, windows=15, noise=n)
        for i, n in enumerate(noise)
    }
    prof = Profile("cpu", "cpu", {}, backend, "1", precision, 1, "tiny", "h", records, threads=threads)
    return LatencyModel(prof, threads_named=True)


def test_a_count_whose_measurements_do_not_repeat_is_dropped_with_its_figures():
    t1 = model("onnxruntime", "fp32", 1, [QUIET_VM, 0.0031, 0.0024])
    t2 = model("onnxruntime", "fp32", 2, [ONE_CORE_T2, 0.30, 0.41])
    assert noise_index(t1.profile) == QUIET_VM and noise_index(t2.profile) == ONE_CORE_T2
    kept, dropped = repeatable([t1, t2])
    assert kept == [t1]
    assert dropped == [
        UnrepeatableTarget(
            "onnxruntime/fp32/t2",
            ONE_CORE_T2,
            "onnxruntime/fp32/t1",
            QUIET_VM,
            "onnxruntime/fp32/t2 not searched: its measurements do not repeat (noise index 35.6%, above 5% and "
            "2x onnxruntime/fp32/t1's 0.3%)",
        )
    ]


def test_counts_that_repeat_alike_are_kept():
    # above 5% but not twice the other count's: the machine's noise, not the count's
    t1, t2 = model("onnxruntime", "fp32", 1, [XEON]), model("onnxruntime", "fp32", 2, [XEON_PASS])
    assert repeatable([t1, t2]) == ([t1, t2], [])
    # twice as noisy, but within 5%: both repeat well enough
    t1, t2 = model("onnxruntime", "fp32", 1, [QUIET_VM]), model("onnxruntime", "fp32", 2, [XEON])
    assert repeatable([t1, t2]) == ([t1, t2], [])


def test_the_least_noisy_count_of_a_runtime_always_stays():
    # every count noisy: the machine does not repeat, and the run still needs a count to ship
    t1, t2 = model("openvino", "int8", 1, [XEON_INT8_PASS]), model("openvino", "int8", 2, [ONE_CORE_T2])
    assert repeatable([t1, t2]) == ([t1, t2], [])
    # the rule is about the count, not about more threads: a noisy one-thread profile goes, two threads stay
    t1, t2 = model("onnxruntime", "fp32", 1, [ONE_CORE_T2]), model("onnxruntime", "fp32", 2, [QUIET_VM])
    kept, [d] = repeatable([t1, t2])
    assert kept == [t2] and (d.target, d.against) == ("onnxruntime/fp32/t1", "onnxruntime/fp32/t2")


def test_counts_are_compared_within_a_runtime_and_precision_only():
    ort = model("onnxruntime", "fp32", 1, [QUIET_VM])
    ov = model("openvino", "fp32", 1, [ONE_CORE_T2])  # the only openvino/fp32 count: nothing to hold it against
    ov_int8 = model("openvino", "int8", 2, [ONE_CORE_T2])
    assert repeatable([ort, ov, ov_int8]) == ([ort, ov, ov_int8], [])


def test_a_profile_without_noise_figures_is_kept():
    t1, t2 = model("onnxruntime", "fp32", 1, [QUIET_VM]), model("onnxruntime", "fp32", 2, [])
    assert noise_index(t2.profile) == 0.0 and repeatable([t1, t2]) == ([t1, t2], [])


def test_the_dropped_counts_read_back_from_run_json_and_the_report_states_them():
    run = json.loads((Path(__file__).parents[1] / "report" / "fixtures" / "tiny-quick" / "run.json").read_text())
    assert RunManifest.from_dict(run).unrepeatable == []  # a run from before the rule: nothing said
    assert targets_lines(RunManifest.from_dict(run)) == []
    _, dropped = repeatable([model("onnxruntime", "fp32", 1, [QUIET_VM]), model("onnxruntime", "fp32", 2, [0.2])])
    run["unrepeatable"] = [d.__dict__ for d in dropped]
    m = RunManifest.from_dict(json.loads(json.dumps(run)))
    assert m.unrepeatable == dropped
    assert targets_lines(m) == [f"- {dropped[0].why}", ""]
    assert m.to_dict()["unrepeatable"][0]["noise_index"] == 0.2
