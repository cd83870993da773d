"""`dery run --family` (issue 28, option (a)): its record in run.json, the blocks a smaller path takes from the
largest, its refusals, and the report's section. The whole journey is `test_run_family` (slow)."""

import json
from pathlib import Path

import pytest

from dery_deploy.errors import DeryError
from dery_deploy.network.plan import BlockRef, Plan
from dery_deploy.pipeline.family import check_family_options, shared_blocks
from dery_deploy.pipeline.family_record import FamilyPathRecord, FamilyRecord
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.report.family import family_png, family_section
from tests.conftest import TINY_ZOO, assert_one_line_error, run_dery

CAPTURED = Path(__file__).parents[1] / "report" / "fixtures" / "tiny-quick" / "run.json"


def a_family() -> FamilyRecord:
    paths = [
        FamilyPathRecord("path-0", "res[0:1] > cnx[1:3]", 0.3, "r/0", "on 1 frozen block(s) shared", [0], 61.0, 0.21,
                         0.002, True, "within budget: p50 0.2100 ms", "res (whole donor)", 60.0, 0.1, 400_000),
        FamilyPathRecord("path-1", "res[0:1] > vit[1:3]", 0.5, "r/1", "largest path, the run's recipe", [], 70.0,
                         0.55, 0.003, False, "OVER BUDGET by 10.0%", "vit (whole donor)", 71.0, 0.45, 900_000),
    ]  # fmt: skip
    return FamilyRecord("RUN/family", "onnxruntime/fp32", 50, 0.05, 0.02, 0.05, "OPTIMAL", 0.1, paths,
                        1_000_000, 1_300_000, 1_300_000)  # fmt: skip


def test_a_run_without_family_writes_run_json_as_before_and_one_with_it_reads_back():
    data = json.loads(CAPTURED.read_text())
    m = RunManifest.from_dict(data)
    plain = m.to_dict()
    assert "family" not in plain and "family" not in plain["options"] and m.options.family is False
    m.options.family, m.family = True, a_family()
    d = json.loads(json.dumps(m.to_dict()))
    assert d["options"]["family"] is True and d["family"]["paths"][1]["within"] is False
    back = RunManifest.from_dict(d)
    assert back.family == m.family and back.family is not None
    assert back.family.ratio == round(1_000_000 / 1_300_000, 4) and [p.name for p in back.family.over] == ["path-1"]
    assert back.family.paths[0].difference == 1.0 and back.family.paths[1].difference == -1.0
    # a family built before --family-training existed trained frozen: its options say so, not today's default
    del d["options"]["family_training"]
    assert RunManifest.from_dict(d).options.family_training == "frozen" and m.options.family_training == "joint"
    assert RunManifest.from_dict(json.loads(CAPTURED.read_text())).options.family_training == "joint"


def test_a_smaller_path_shares_only_blocks_of_the_same_donor_and_range():
    def plan(*blocks):
        return Plan("z", "h", [BlockRef(i, *b) for i, b in enumerate(blocks)], 10)

    large = plan(("res", 0, 1), ("res", 1, 2), ("vit", 2, 4))
    small = plan(("res", 0, 1), ("cnx", 1, 2), ("vit", 2, 4), ("res", 1, 3))
    assert shared_blocks(small, large) == [(0, 0), (2, 2)]


@pytest.mark.parametrize(
    ("targets", "budgets", "batch", "needle"),
    [
        (["onnxruntime/fp32"], [0.3], 1, "two or more budgets"),
        (["openvino/fp32"], [0.3, 0.5], 1, "does not search (openvino/fp32)"),
        (["onnxruntime/fp32"], [0.3, 0.5], 8, "batch 8"),
    ],
)
def test_family_refuses_what_cannot_make_one(targets, budgets, batch, needle):
    with pytest.raises(DeryError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_family_options(targets, budgets, batch)
    check_family_options(["openvino/int8", "onnxruntime/fp32"], [0.3, 0.5], 1)
    check_family_options(["onnxruntime/fp32"], None, 1)  # the run chooses the budgets, two or more


def test_the_cli_refuses_in_one_line_before_any_folder(tmp_path):
    out = tmp_path / "run"
    proc = run_dery("run", "--zoo", str(TINY_ZOO), "--budgets", "0.3", "--family", "-o", str(out))
    assert_one_line_error(proc, "[run]", "--family needs two or more budgets")
    assert proc.returncode == 2 and not out.exists()
    for extra, needle in (([], "give --family too"), (["--family", "--budgets", "0.3,0.5"], "got 'all'")):
        proc = run_dery("run", "--zoo", str(TINY_ZOO), "--family-training", "all" if extra else "frozen", *extra,
                        "-o", str(out))  # fmt: skip
        assert_one_line_error(proc, "--family-training", needle)
        assert proc.returncode == 2 and not out.exists()


def test_the_report_section_compares_paths_with_the_separate_networks(tmp_path):
    m = RunManifest.from_dict(json.loads(CAPTURED.read_text()))
    assert family_section(m, None) == [] and family_png(tmp_path / "f.png", m) is None
    m.family = a_family()
    png = family_png(tmp_path / "family.png", m)
    assert png is not None and png.stat().st_size > 1000
    text = "\n".join(family_section(m, png))
    assert "## Family" in text and "![Family vs separate networks](family.png)" in text
    assert "| 0.3 | `res[0:1] > cnx[1:3]` | 61.00 | - | 0.2100 ± 0.0020 | yes |" in text
    m.family.paths[0].before_ms, m.family.paths[0].before_se_ms = 0.2, 0.003
    m.family.before_notes = ["0.3 ms: falls back to the run's separate plan res[0:2]"]
    text = "\n".join(family_section(m, png))
    assert "| 0.3 | `res[0:1] > cnx[1:3]` | 61.00 | 0.2000 ± 0.0030 | 0.2100 ± 0.0020 | yes |" in text
    assert "- 0.3 ms: falls back to the run's separate plan res[0:2]" in text
    assert "+1.00" in text and "-1.00" in text and "0.7692x" in text and "path-1 (OVER BUDGET by 10.0%)" in text
    m.family = FamilyRecord(target="onnxruntime/fp32", note="no family: 1 feasible budget(s)")
    assert family_section(m, None)[2] == "no family: 1 feasible budget(s)"
