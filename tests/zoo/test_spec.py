import pytest
import yaml

from dery_deploy.errors import DeryError
from dery_deploy.zoo.spec import parse_zoo

GOOD = {
    "name": "z",
    "input": {"channels": 1, "size": 32, "mean": [0.2], "std": [0.3]},
    "donors": [{"name": "a", "arch": "test_resnet", "weights": "none", "source": "x", "num_classes": 3}],
}


def test_good_spec_parses():
    z = parse_zoo(GOOD, "good")
    assert z.donor("a").arch == "test_resnet" and z.input.size == 32 and z.donor("a").num_classes == 3


def test_every_bad_field_reported_at_once():
    bad = {
        "name": "bad zoo!",
        "input": {"channels": "one", "size": -4, "mean": [0.1, 0.2], "std": "x"},
        "donors": [
            {"name": "a", "arch": 5, "weights": "http:foo", "num_classes": "ten"},
            {"name": "a", "arch": "resnet18", "kwargs": [1, 2], "colour": "red"},
        ],
        "extra": 1,
    }
    with pytest.raises(DeryError) as e:
        parse_zoo(bad, "bad.yaml")
    msg = str(e.value)
    for needle in (
        "name:",
        "input.channels",
        "input.size",
        "input.std",
        "donors[0] (a).arch",
        "donors[0] (a).weights",
        "donors[0] (a).num_classes",
        "duplicate donor name",
        "donors[1] (a).kwargs",
        "unknown field(s) ['colour']",
        "unknown top-level field(s) ['extra']",
    ):
        assert needle in msg, f"{needle!r} missing from: {msg}"
    assert msg.count(";") >= 10


def test_lists_become_tuples_for_timm():
    spec = dict(GOOD, donors=[dict(GOOD["donors"][0], kwargs={"channels": [8, 16, 32, 64]})])
    assert parse_zoo(spec, "x").donor("a").kwargs["channels"] == (8, 16, 32, 64)


def test_unknown_donor_names_the_fix():
    with pytest.raises(DeryError, match="Run `dery zoo show z`"):
        parse_zoo(GOOD, "x").donor("nope")


def test_embedded_zoo_specs_valid(fashion_zoo):
    assert len(fashion_zoo.donors) >= 6
    assert len({d.source for d in fashion_zoo.donors}) >= 3
    text = yaml.safe_dump(fashion_zoo.raw)
    assert "embedded:" in text
