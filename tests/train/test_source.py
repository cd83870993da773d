import json
from pathlib import Path

import pytest

from dery_deploy.artifacts import atomic_write_json
from dery_deploy.errors import DeryError
from dery_deploy.network.plan import Plan
from dery_deploy.train.run_folder import RunConfig
from dery_deploy.train.source import FinetuneSource

FIXTURES = Path(__file__).parent / "fixtures"
# a plan as `dery run` wrote it (the tiny zoo's quick run)
PLAN = json.loads((Path(__file__).parents[1] / "report/fixtures/tiny-quick/run.json").read_text())["results"][0]["plan"]
WEIGHTS = "/runs/tiny/budgets/0.05/finalists/00.safetensors"
START = "/runs/tiny/budgets/0.05/select/dery-select-0123456789ab-00-rung0-matched1.safetensors"


def written(d) -> str:
    """As config.json holds it: keys in order, values as JSON."""
    return json.dumps(d, indent=2)


def test_a_plans_source_writes_the_dict_it_always_has():
    src = FinetuneSource.of_plan(Plan.from_dict(PLAN), WEIGHTS)
    assert written(src.to_dict()) == written({"plan": PLAN, "adapter_weights": WEIGHTS})
    assert not src.is_donor and src.plan is not None and src.plan.describe() == Plan.from_dict(PLAN).describe()
    # `dery finetune PLAN` with no weights file beside the plan
    assert written(FinetuneSource.of_plan(Plan.from_dict(PLAN)).to_dict()) == written(
        {"plan": PLAN, "adapter_weights": None}
    )
    # selection's folds start from the seam-matched network: the key comes last, as `{**source, ...}` put it
    started = src.starting_from(START)
    assert written(started.to_dict()) == written({"plan": PLAN, "adapter_weights": WEIGHTS, "start_weights": START})
    for d in (src.to_dict(), started.to_dict()):
        assert FinetuneSource.from_dict(json.loads(json.dumps(d))).to_dict() == d


def test_a_donors_source_writes_the_dict_it_always_has():
    src = FinetuneSource.of_donor("res", "tests/tiny_zoo.yaml")
    assert written(src.to_dict()) == written({"donor": "res", "zoo_ref": "tests/tiny_zoo.yaml"})
    assert src.is_donor and src.plan is None
    assert FinetuneSource.from_dict({"donor": "res", "zoo_ref": "tests/tiny_zoo.yaml"}) == src
    # a donor built only to time its steps names no zoo file, and writes none
    assert FinetuneSource.of_donor("res").to_dict() == {"donor": "res"}


def test_a_plan_kept_is_the_plan_as_it_was_given():
    """The bare dict was the plan's dict at the time: the record does not follow later changes to it."""
    plan = Plan.from_dict(PLAN)
    src = FinetuneSource.of_plan(plan, WEIGHTS)
    plan.device = "elsewhere"
    assert src.to_dict()["plan"] == PLAN


@pytest.mark.parametrize("kind", ["donor", "plan", "trial"])
def test_config_json_written_before_the_record_reads_and_writes_byte_for_byte(kind, tmp_path):
    """config.json as the bare-dict code wrote it (a donor's run, a plan's, and a selection fold's with
    its seam-matched start) reads into a RunConfig that writes the same bytes."""
    old = FIXTURES / f"config-{kind}.json"
    cfg = RunConfig.from_dict(json.loads(old.read_text()))
    assert isinstance(cfg.source, FinetuneSource) and cfg.source.is_donor == (kind == "donor")
    atomic_write_json(tmp_path / "config.json", cfg.to_dict())
    assert (tmp_path / "config.json").read_bytes() == old.read_bytes()
    assert cfg.same_as(RunConfig.read(tmp_path))


def test_a_plans_source_written_before_selection_named_its_weights_reads():
    """Selection's finalists were once given as {"plan": ...} alone: read, the weights are None."""
    src = FinetuneSource.from_dict({"plan": PLAN})
    assert src.adapter_weights is None and src.start_weights is None and src.plan is not None


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"plan": PLAN, "adapter_weights": None, "recipe": {"epochs": 3}}, "fine-tune source has key(s) 'recipe'"),
        ({"donor": "res", "adapter_weights": WEIGHTS}, "fine-tune source has key(s) 'adapter_weights'"),
        ({"plan": PLAN, "donor": "res"}, "fine-tune source has key(s) 'donor'"),
        ({"zoo_ref": "fashion"}, "fine-tune source has no 'plan' or 'donor' key"),
        ({"plan": {"blocks": []}}, "fine-tune source's 'plan' is not a plan"),
        (["res"], "a fine-tune source is a JSON object, not list"),
    ],
)
def test_a_malformed_source_is_refused_in_one_line_naming_the_key(bad, words):
    with pytest.raises(DeryError) as e:
        FinetuneSource.from_dict(bad)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_source_is_a_plan_or_a_donor():
    with pytest.raises(DeryError, match="exactly one of the two"):
        FinetuneSource()
    with pytest.raises(DeryError, match="exactly one of the two"):
        FinetuneSource(plan=Plan.from_dict(PLAN), donor="res")


def test_a_family_paths_source_names_its_frozen_blocks_last_and_a_donor_refuses_them():
    """A family path (issue 28 option (a)) starts from its largest path's blocks and holds them frozen:
    `frozen_blocks` is written after the start state, read back, and kept by `starting_from`."""
    src = FinetuneSource.of_plan(Plan.from_dict(PLAN), WEIGHTS).starting_from(START).freezing([0, 2])
    assert list(src.to_dict()) == ["plan", "adapter_weights", "start_weights", "frozen_blocks"]
    assert src.to_dict()["frozen_blocks"] == [0, 2] and src.starting_from(START).frozen_blocks == (0, 2)
    assert FinetuneSource.from_dict(json.loads(json.dumps(src.to_dict()))) == src
    assert "frozen_blocks" not in FinetuneSource.of_plan(Plan.from_dict(PLAN), WEIGHTS).to_dict()
    with pytest.raises(DeryError, match="no frozen blocks"):
        FinetuneSource(donor="res", frozen_blocks=(0,))
