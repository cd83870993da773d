"""The benchmark scripts' readers of a run folder, on the captured run (`report/fixtures/tiny-quick`, a
schema-2 run.json the scripts read through `RunManifest.from_dict` as they read older runs): each reads the
typed records by attribute, and these are the figures it takes from them."""

import sys
from pathlib import Path

import pytest

from dery_deploy.pipeline.records import GroupTime, Part, RunEstimate
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import bench_common  # noqa: E402
import bench_estimate  # noqa: E402

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
