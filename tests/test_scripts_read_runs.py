"""The benchmark scripts' readers of a run folder, on the captured run (`report/fixtures/tiny-quick`, a
schema-2 run.json the scripts read through `RunManifest.from_dict` as they read older runs): each reads the
typed records by attribute, and these are the figures it takes from them."""

import json
import shutil
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from dery_deploy.pipeline.final_pass_file import FinalPassFile
from dery_deploy.pipeline.records import GroupTime, Part, RunEstimate
from dery_deploy.runtime.harness import PassSummary
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import bench_common  # noqa: E402
import bench_estimate  # noqa: E402
import bench_latency_model  # noqa: E402
import bench_quality  # noqa: E402
import bench_repeatability  # noqa: E402
import bench_reproduce  # noqa: E402
import bench_runtimes  # noqa: E402
import bench_stitch_lr  # noqa: E402
import gpu_check_summary  # noqa: E402

RUN = Path(__file__).parent / "report" / "fixtures" / "tiny-quick"


@pytest.fixture
def run():
    return bench_common.read_run(RUN)


def test_an_older_run_json_reads_as_the_typed_manifest(run):
    assert run.status == "done" and run.seconds == 1319.7
    assert run.results[0].pick_triple.network == "cnx (whole donor)"


def test_the_estimate_bench_reads_a_run_without_an_estimate_as_none_made(run):
    row = bench_estimate.estimate_row(run)
    assert row["run_s"] == 1319.7 and row["actual_rest_s"] == 1319.7
    assert row["estimate_made_after_s"] == 0.0 and row["total_error_pct"] is None and row["parts"] == []


def test_the_estimate_bench_matches_each_estimated_part_to_the_stage_that_did_it(run):
    parts = [Part("fine-tune donor res (ce", "training", 20.0), Part("assemble and select under", "selection", 600.0)]
    run.estimate = RunEstimate(180.0, parts, {}, 0.1, actual={"selection": GroupTime(600.0, 622.85)})
    row = bench_estimate.estimate_row(run)
    assert row["parts"] == [
        {"stage": "fine-tune donor res (ce, 0.104 ms)", "group": "training", "estimated_s": 20.0, "actual_s": 21.72},
        {"stage": "assemble and select under 0.5 ms", "group": "selection", "estimated_s": 600.0, "actual_s": 622.85},
    ]
    assert row["estimated_total_s"] == 800.0 and row["total_error_pct"] == 65.0 and row["rest_error_pct"] == 83.8
    assert row["groups"] == {"selection": {"estimated_s": 600.0, "actual_s": 622.85}}


def test_the_quality_bench_reads_the_pick_the_best_donor_and_the_best_mix(run):
    [row] = bench_quality.summarise(run)
    assert (row["pick"], row["pick_target"], row["pick_kind"]) == ("cnx (whole donor)", "openvino/fp32", "donor")
    assert (row["selection_folds"], row["selection_images"], row["selection_noise"]) == (5, 200, 5.362)
    assert (row["best_donor"], row["best_donor_top1"], row["shipped_top1"]) == ("cnx", 64.333, 64.333)
    assert (
        row["best_reassembled"] == "vit[0:2] > cnx[2:5] > cnx[5:9] > cnx[9:13]" and row["best_reassembled_seams"] == 1
    )
    assert (row["best_reassembled_top1"], row["best_reassembled_val"], row["reassembled_minus_donor"]) == (
        61.0,
        65.0,
        -3.33,
    )
    # the shipped file's timing and verdict, from the older run's flat export report migrated to ExportRecord
    assert (row["shipped_measured_ms"], row["shipped_within_budget"], row["shipped_budget_checked"]) == (
        0.23549,
        True,
        True,
    )
    assert (row["finalists"], row["dropped_over_budget"], row["planning_margin"]) == (12, 0, 0.03243)


def test_the_quality_bench_reads_an_infeasible_budget_as_its_reason(run):
    from dery_deploy.pipeline.records import BudgetResult

    run.results.insert(0, BudgetResult(0.05, infeasible="no network fits 0.05 ms"))
    rows = bench_quality.summarise(run)
    assert rows[0] == {"budget_ms": 0.05, "infeasible": "no network fits 0.05 ms"} and rows[1]["budget_ms"] == 0.5
    assert bench_quality.plain(run.teacher)["donor"] == "cnx"


@pytest.fixture
def run_folder(tmp_path, run):
    """The captured run folder with its final_pass.json, written from the final pass run.json records (the
    capture kept run.json alone)."""
    shutil.copy(RUN / "run.json", tmp_path / "run.json")
    fp = run.final_pass
    summary = PassSummary(**{f.name: getattr(fp, f.name) for f in fields(PassSummary)})
    (tmp_path / "final_pass.json").write_text(json.dumps(FinalPassFile({}, summary, fp.measurements).to_dict()))
    return tmp_path


def test_the_reproduce_bench_reads_each_shipped_file_and_its_final_pass_figures(run_folder):
    run, fp = bench_common.read_run(run_folder), bench_common.read_final_pass(run_folder)
    [row] = bench_reproduce.shipped_rows(run, fp, [1, 28, 28])
    assert (row["budget_ms"], row["target"], row["network"]) == (0.5, "openvino/fp32", "cnx (whole donor)")
    assert row["file"] == "@RUN@/budget-0.5ms/export/model.xml" and row["report_top1"] == 64.333
    assert (row["runtime"], row["threads"], row["shape"]) == ("openvino", 1, [1, 1, 28, 28])
    # the final pass's per-call p50 / p90 over all calls, and its openvino/t1 reference
    assert row["recorded"] == {"p50": 0.24017, "p90": 0.84497, "reference": 0.30593}
    assert row["recorded_se"] == {"p50": 0.03951, "p90": 0.05761, "p99": 0.12704} and row["pass_load_cores"] == 1.62


def test_the_runtimes_bench_reads_what_ships_and_what_each_run_measured(run):
    [row] = bench_runtimes.shipped(run)
    assert row == {
        "budget_ms": 0.5,
        "network": "cnx (whole donor)",
        "kind": "donor",
        "target": "openvino/fp32",
        "measured_ms": 0.24017,
        "uncertainty": 0.03951,
        "within_budget": True,
        "test_top1": 64.333,
        "fp32_top1": 64.333,  # fp32 ships: its own top-1
        "int8_test_change": None,
    }
    done = bench_runtimes.RunDone(run, 1320.0, 0, [])
    c = bench_runtimes.compared(done, done)
    assert c["targets"] == ["onnxruntime/fp32", "openvino/fp32", "openvino/int8"] and c["budgets"] == [0.5]
    assert c["rows"][0]["top1_gain"] == 0.0 and c["final_pass_noise_index"]["all_targets"] == 0.19008
    assert c["profile_seconds"] == {"onnxruntime/fp32": 21.04, "openvino/fp32": 52.6, "openvino/int8": 50.75}
    assert c["donor_latency_ms"]["res"]["openvino/int8"] == {"ms": 0.17071, "uncertainty": 0.0337}
    first = bench_runtimes.first_run(done, done, "2026-12-03T10:00:00", "abc1234")
    assert first["run_seconds"] == {"all_targets": 1320.0, "onnxruntime_fp32_only": 1320.0}


def test_the_gpu_check_summary_reads_each_profile_as_a_typed_profile(tmp_path):
    (tmp_path / "cache" / "profiles" / "cpu").mkdir(parents=True)
    shutil.copy(RUN / "profile.json", tmp_path / "cache" / "profiles" / "cpu" / "onnxruntime.json")
    (tmp_path / "cache" / "profiles" / "cpu" / "torn.json").write_text('{"kind": "profile", "sch')
    out, donors = gpu_check_summary.profiles(str(tmp_path))
    p = out["onnxruntime.json"]
    assert (p["items"], p["passes"], p["unstable"], p["failed_items"]) == (35, 2, 6, {})
    assert p["donor_ms"] == {"res": 0.09446, "cnx": 0.14925, "vit": 0.78411}
    assert donors == {("onnxruntime", 1): p["donor_ms"]}
    assert p["verify"]["n"] == 3 and p["verify"]["speed"] == "raw"
    assert out["torn.json"].startswith("missing: DeryError")  # one torn file costs its own row only


def test_the_gpu_check_summary_reads_an_export_report_as_an_export_record(tmp_path, run):
    from dery_deploy.export.report import ExportReport

    rec = run.results[0].mix.export  # the captured ONNX export, written back as the export step writes it
    report = ExportReport(rec.format, rec.artifact, rec.precision, rec.device, rec.batch, rec.parity, rec.timing)
    report.latency_backend, report.budget = rec.latency_backend, rec.budget
    (tmp_path / "report-onnx.json").write_text(json.dumps({**report.to_dict(), "build_s": 1.5, "load_ok": True}))
    s = gpu_check_summary.export_summary(str(tmp_path / "report-onnx.json"))
    assert (s["format"], s["device"], s["precision"], s["batch"]) == ("onnx", "cpu", "fp32", 1)
    assert (s["latency_ms"], s["latency_stable"], s["error"]) == (0.39344, False, None)
    assert s["parity"]["max_abs_diff"] == 4.291534423828125e-06 and s["budget"]["within_budget"] is True
    assert (s["build_s"], s["load_ok"], s["bytes"]) == (1.5, True, None)
    assert gpu_check_summary.export_summary(str(tmp_path / "report-aoti.json")).startswith("missing")
    assert gpu_check_summary.finetune_summary(str(tmp_path / "metrics.json")).startswith("missing")


def test_the_stitch_lr_bench_names_a_plan_files_blocks(tmp_path, run):
    (tmp_path / "01.json").write_text(json.dumps(run.results[0].mix.plan.to_dict()))  # the captured best mix's plan
    assert bench_stitch_lr.blocks(str(tmp_path / "01.json")) == "vit[0:2] + cnx[2:5] + cnx[5:9] + cnx[9:13]"


def test_the_repeatability_bench_reads_what_an_assembly_picked(run):
    from dataclasses import replace

    # the shipped plan with the selection `dery assemble` files in it (run.json keeps it beside the plan)
    plan = replace(run.results[0].plan, selection=run.results[0].selection)
    a = bench_repeatability.assembly(plan)
    assert a["pick"] == "cnx (whole donor)" and a["rule"].startswith("the best donor")
    assert a["finalists"] == sorted(["cnx (whole donor)", "res (whole donor)", *MIXES])
    assert a["validation"]["cnx (whole donor)"] == 68.5 and a["validation"][MIXES[1]] == 65.0
    assert a["measured_ms"] == 0.20099


MIXES = ["res[0:1] > res[1:2] > cnx[5:9] > cnx[9:13]", "vit[0:2] > cnx[2:5] > cnx[5:9] > cnx[9:13]"]


def test_the_latency_model_bench_refits_a_profiles_own_check():
    """The captured profile's latency check (3 mixed assemblies) fitted again on its rows, blocks alone."""
    row = bench_latency_model.refit(RUN / "profile.json")
    assert row["assemblies"] == 3
    assert row["alone_median_max_pct"] == [3.14, 5.06] and row["alone_p90_median_max_pct"] == [24.02, 26.88]
