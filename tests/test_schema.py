"""run.json's schema is generated from the dataclasses that write it (`dery_deploy.schema`,
`python -m dery_deploy.pipeline.run_schema`): the committed
docs/run.schema.json is the code's, a captured run validates against it, and the fields that still have no
schema beyond "an object" may only become fewer (issue 25)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dery_deploy.pipeline.manifest import RunManifest
from dery_deploy.pipeline.records import RunEstimate
from dery_deploy.pipeline.run_schema import main
from dery_deploy.schema import artifact_schema, load_dataclass, untyped_fields

# the [dev] extra has it; the GPU image does not, and a collection error there stops every GPU test
jsonschema = pytest.importorskip("jsonschema")

CAPTURED = Path(__file__).parent / "report" / "fixtures" / "tiny-quick" / "run.json"
# fields whose shape changed since CAPTURED was written (read back by RunManifest.from_dict, checked below)
MOVED = ("verify", "verify_by_target", "results")

# run.json's fields still typed `dict`: each may only leave this list (typed), never join it
UNTYPED: set[str] = set()


def test_the_committed_schema_is_the_codes():
    assert main(["--check"]) == 0, "docs/run.schema.json is stale: run python -m dery_deploy.pipeline.run_schema"


def test_a_captured_run_validates_and_reads_back_the_same():
    data = json.loads(CAPTURED.read_text())
    schema = artifact_schema(RunManifest)
    jsonschema.Draft202012Validator.check_schema(schema)
    # captured at schema 2: the fields whose shape changed since are read back below
    jsonschema.validate({**{k: v for k, v in data.items() if k not in MOVED}, "schema": RunManifest.SCHEMA}, schema)
    m = RunManifest.from_dict(data)
    assert (
        m.options.seed == data["options"]["seed"] and m.task is not None and m.task.classes == data["task"]["classes"]
    )
    again = m.to_dict()
    # what the code writes back is what it read (older runs wrote {} for "no estimate, no time limit")
    # the final pass's slow-spell counts (runtime/disturbance.py) came later: read back at 0, nothing left out
    fp = again["final_pass"]
    assert fp.pop("rounds") == 0 and fp.pop("spell_rounds") == 0
    assert all(m.pop("spell_windows") == 0 for m in fp["measurements"].values())
    for k in set(data) - {"schema", "kind", "options", *MOVED}:
        if k not in ("estimate", "time_limit") or data[k]:
            assert again[k] == data[k], k
    # the latency checks are LatencyCheck records now (fields added since this run was captured read back
    # at their defaults) and each target's profile file is filed beside its check
    checks = data["verify_by_target"]
    assert again["profile_by_target"] == {t: v["profile"] for t, v in checks.items()}
    for t, v in checks.items():
        assert {k: x for k, x in v.items() if k != "profile"}.items() <= again["verify_by_target"][t].items()
    assert data["verify"].items() <= again["verify"].items() and again["verify"]["assemblies"] == []
    # options added since it was made read back at their defaults
    assert data["options"].items() <= again["options"].items()
    jsonschema.validate({"schema": RunManifest.SCHEMA, "kind": "run", **again}, schema)


def test_a_field_the_schema_does_not_know_is_refused():
    data = json.loads(CAPTURED.read_text())
    schema = artifact_schema(RunManifest)
    with pytest.raises(jsonschema.ValidationError, match="nonsense"):
        jsonschema.validate({**data, "nonsense": 1}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "budgets": ["fast"]}, schema)
    with pytest.raises(TypeError, match="RunOptions has no field.*nonsense"):
        RunManifest.from_dict({**data, "options": {**data["options"], "nonsense": 1}})


def test_nested_records_are_built_from_their_dicts():
    est = RunEstimate.from_dict(
        {
            "after_s": 10.0,
            "parts": [{"stage": "heal", "group": "training", "seconds": 5.0}],
            "step_s": {"a": 0.1},
            "item_s": 0.4,
            "actual": {"training": {"estimated_s": 5.0, "actual_s": 6.5}},
        }
    )
    assert est.parts[0].seconds == 5.0 and est.actual["training"].actual_s == 6.5 and est.seconds == 5.0

    @dataclass
    class Box:
        items: list[RunEstimate] = field(default_factory=list)
        maybe: RunEstimate | None = None

    box = load_dataclass(Box, {"items": [est.to_dict()], "maybe": None})
    assert box.items == [est] and box.maybe is None


def test_the_untyped_fields_only_become_fewer():
    now = set(untyped_fields(RunManifest))
    assert now <= UNTYPED, f"new fields without a schema (type them): {sorted(now - UNTYPED)}"
    assert UNTYPED <= now, f"typed now: drop them from UNTYPED: {sorted(UNTYPED - now)}"
