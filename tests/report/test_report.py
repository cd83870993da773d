"""The run report and the terminal answer rendered from a captured run are byte for byte the captured ones.

The fixture `fixtures/tiny-quick/` is a real run's artifacts, captured once with

    dery run --zoo tests/tiny_zoo.yaml --quick --budgets 0.5 \
        --data fashion-mnist:labels_per_class=20,test_per_class=30 --verify 3 -o /tmp/rs-golden/run

(tests/cli/test_run.py's arguments): run.json, zoo.json, partition.json, the first target's profile, the
CKA matrices of the pairs the report draws, and the zoo YAML the run was made from. The goldens
(report.md, report.html, answer.txt and their "infeasible-first" variants, where a budget nothing fits
comes first) were rendered from this fixture by the code of that day (main at 1e50d73), before the
report was split into sections; report.md and report.html were rendered again on 2026-12-07 (6d4cade), when
the candidates table gained its target column and shows the figure the budget is judged by (the per-call
percentile over all calls, `latency_ms`, not the quiet-window median), and the latency paragraph said
which measurement each figure reads (nothing else of them changed). They differ from the report the run
itself wrote in two places only:
the total time and the "report" stage's row, which run.json records after the report is written.

The run folder's absolute path in run.json (where the exports lie) is written as RUN_TOKEN and put back
as the folder the test renders into, so the artifact paths come out relative exactly as in the run.
Nothing is masked: every number in the report comes from the fixture's files.
"""

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from dery_deploy.cli import run as cli_run
from dery_deploy.partition.stage import Partition
from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.profile.store import read_profile
from dery_deploy.report.report import write_report
from dery_deploy.similarity.compute import Similarity
from dery_deploy.zoo.load import get_zoo
from dery_deploy.zoo.summary import DonorRow

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-quick"
RUN_TOKEN = "@RUN@"


# what stage_budget records for a budget nothing fits (a budget's "infeasible" entry)
INFEASIBLE = {"budget_ms": 0.05, "infeasible": "no assembly fits 0.05 ms; the fastest is predicted at 0.0812 ms"}
VARIANTS = ["as-run", "infeasible-first"]


def captured_run(out: Path, variant: str) -> dict:
    """The captured run.json, as if the run had been made in `out`."""
    run = json.loads((FIXTURE / "run.json").read_text().replace(RUN_TOKEN, str(out)))
    if variant == "infeasible-first":
        run["results"].insert(0, INFEASIBLE)
    return run


def golden(name: str, variant: str) -> Path:
    stem, suffix = name.split(".")
    return FIXTURE / (name if variant == "as-run" else f"{stem}-{variant}.{suffix}")


def similarity(zoo) -> Similarity:
    """The captured CKA matrices (only the pairs the report draws: nothing else reads them)."""
    matrices = {}
    for f in sorted((FIXTURE / "similarity").glob("*__*.json")):
        a, b = f.stem.split("__")
        matrices[(a, b)] = torch.tensor(json.loads(f.read_text())["matrix"], dtype=torch.float64)
    return Similarity(zoo.name, zoo.hash(), "captured", "captured", matrices)


def render(out: Path, variant: str) -> Path:
    out.mkdir()
    zoo = get_zoo(FIXTURE / "zoo.yaml")
    manifest = RunManifest.from_dict(captured_run(out, variant))
    rows = [DonorRow.from_dict(d) for d in json.loads((FIXTURE / "zoo.json").read_text())["donors"]]
    part = Partition.read(FIXTURE / "partition.json")
    prof = read_profile(FIXTURE / "profile.json")
    return write_report(out, manifest, zoo, similarity(zoo), part, prof, rows)


@pytest.mark.parametrize("variant", VARIANTS)
def test_report_md_is_the_captured_one_byte_for_byte(tmp_path, variant):
    rendered = render(tmp_path / "run", variant)
    assert rendered.read_bytes() == golden("report.md", variant).read_bytes()


def test_report_html_is_the_captured_one_and_the_figures_are_drawn(tmp_path):
    """report.html is the same Markdown through the `markdown` package (a new version of it may change
    these bytes: then recapture report.html from report.md, nothing else)."""
    out = render(tmp_path / "run", "as-run").parent
    assert (out / "report.html").read_bytes() == (FIXTURE / "report.html").read_bytes()
    for png in ("pareto.png", "cka-res-vit.png", "cka-cnx-vit.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG"), png


def terminal_answer(out: Path, variant: str, monkeypatch) -> str:
    """`dery run`'s closing lines, printed from the run folder (artifact paths are relative to the
    working directory), on a console of fixed width and no colour."""
    out.mkdir()
    monkeypatch.chdir(out)
    buf = io.StringIO()
    monkeypatch.setattr(cli_run, "console", Console(file=buf, width=200, highlight=False, color_system=None))
    cli_run.show_answer(RunManifest.from_dict(captured_run(out, variant)))
    return buf.getvalue()


@pytest.mark.parametrize("variant", VARIANTS)
def test_terminal_answer_is_the_captured_one(tmp_path, monkeypatch, variant):
    assert terminal_answer(tmp_path / "run", variant, monkeypatch) == golden("answer.txt", variant).read_text()


def test_the_report_names_the_donors_the_run_left_out_and_why(tmp_path):
    """A donor the short recipe found dominated is named with why where a budget could have trained it; one
    too slow for every budget is not (it was never a candidate)."""
    out = tmp_path / "run"
    out.mkdir()
    run = captured_run(out, "as-run")
    why = "res is faster (0.104 against 0.164 ms) and validated 45.0 points better after the short recipe"
    run["dominated_donors"] = {"cnx": why, "vit": "cnx is faster"}
    manifest = RunManifest.from_dict(run)
    assert manifest.dominated_donors["cnx"] == why
    zoo = get_zoo(FIXTURE / "zoo.yaml")
    rows = [DonorRow.from_dict(d) for d in json.loads((FIXTURE / "zoo.json").read_text())["donors"]]
    part, prof = Partition.read(FIXTURE / "partition.json"), read_profile(FIXTURE / "profile.json")
    text = write_report(out, manifest, zoo, similarity(zoo), part, prof, rows).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("Not trained with the final recipe"))
    assert f"cnx: {why}" in line and "vit" not in line


def test_the_report_says_which_rungs_were_read_back_not_trained(tmp_path):
    """A rung whose trials the run trained under a smaller budget (the same network, start and recipe) is read
    back: its seconds were not spent here, and the selection table says so instead of repeating them."""
    from dery_deploy.network.plan_records import REUSED

    out = tmp_path / "run"
    out.mkdir()
    run = captured_run(out, "as-run")
    trials = next(r["selection"]["trials"] for r in run["results"] if r.get("selection"))
    trials[0]["workers"], trials[1]["workers"] = [REUSED], [REUSED, "vm:1"]
    zoo = get_zoo(FIXTURE / "zoo.yaml")
    rows = [DonorRow.from_dict(d) for d in json.loads((FIXTURE / "zoo.json").read_text())["donors"]]
    part, prof = Partition.read(FIXTURE / "partition.json"), read_profile(FIXTURE / "profile.json")
    text = write_report(out, RunManifest.from_dict(run), zoo, similarity(zoo), part, prof, rows).read_text()
    first, second = (f"| {t['rung']} | {t['finalist']} | {t['val_accuracy']:.2f} |" for t in trials[:2])
    assert next(ln for ln in text.splitlines() if ln.startswith(first)).endswith("| read back |")
    assert next(ln for ln in text.splitlines() if ln.startswith(second)).endswith(
        f"| {trials[1]['seconds']} (some folds read back) |"
    )
