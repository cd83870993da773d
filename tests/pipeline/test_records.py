"""selection.json read back typed: what a budget's stage wrote (captured in a real run's run.json) is the
SelectionFile the rest of the budget reads, and writes itself back the same."""

import json
from pathlib import Path

from dery_deploy.pipeline.records import SelectionFile

CAPTURED = Path(__file__).parents[1] / "report" / "fixtures" / "tiny-quick" / "run.json"


def captured_selection() -> dict:
    """selection.json as the captured run's first budget wrote it (run.json holds the same fields)."""
    res = json.loads(CAPTURED.read_text())["results"][0]
    keys = ("candidates", "finalists", "rejected_over_budget", "solver", "margin", "selection")
    return {"key": {"task": "captured"}, **{k: res[k] for k in keys}}


def test_a_written_selection_reads_back_typed():
    d = captured_selection()
    sel = SelectionFile.from_dict(d)
    assert sel.selection.pick == d["selection"]["pick"] and sel.margin == d["margin"]
    assert [f.plan for f in sel.finalists] == [f["plan"] for f in d["finalists"]]
    assert all(f.path and f.path.startswith("finalists/") for f in sel.finalists)
    assert all(f.measured is not None and f.measured.latency_ms > 0 for f in sel.finalists)
    # a candidate never measured was written with `measured` {}: read as None
    unmeasured = [c for c, raw in zip(sel.candidates, d["candidates"]) if not raw.get("measured")]
    assert all(c.measured is None for c in unmeasured)
    again = SelectionFile.from_dict(json.loads(json.dumps(sel.to_dict())))
    assert again == sel and again.to_dict()["selection"] == d["selection"]
