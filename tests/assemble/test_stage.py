import json

import pytest

from dery_deploy.errors import DeryError
from tests.conftest import TINY_ZOO, assert_one_line_error, run_dery


def test_assemble_cli_writes_plans_per_budget(tiny_ws, tmp_path):
    p = run_dery("assemble", "--zoo", str(TINY_ZOO), "--device", "cpu", "--latency-ms", "0.3,5", "--top", "3",
                 "--partition", str(tiny_ws.partition_path), "--profile", str(tiny_ws.profile_path),
                 "--cache", str(tiny_ws.root), "-o", str(tmp_path / "plan.json"), "--json")
    assert p.returncode == 0, p.stderr
    plans = json.loads(p.stdout)
    assert [pl["budget"]["latency_ms"] for pl in plans] == [0.3, 5.0]
    for pl in plans:
        assert pl["predicted"]["latency_ms"] <= pl["budget"]["latency_ms"]
        assert pl["solver"]["status"] in ("OPTIMAL", "FEASIBLE") and pl["proxy"]["name"] == "probe"
        assert (tmp_path / f"plan-{pl['budget']['latency_ms']:g}ms.safetensors").is_file()


def test_optuna_search_respects_budget(tiny_ws):
    from dery_deploy.assemble.stage import assemble

    res = assemble(tiny_ws.zoo, tiny_ws.partition, tiny_ws.dis, tiny_ws.sim, tiny_ws.profile, "p", 1.0, top=3,
                   search="optuna")
    assert len(res["candidates"]) == 3 and all(c.predicted_ms <= 1.0 for c in res["candidates"])


@pytest.mark.parametrize("budget,needle", [("0.00001", "fastest assembly is predicted at"),
                                           ("0", "must be positive"), ("-2", "must be positive")])
def test_bad_budgets(tiny_ws, budget, needle):
    p = run_dery("assemble", "--zoo", str(TINY_ZOO), "--device", "cpu", f"--latency-ms={budget}", "--partition",
                 str(tiny_ws.partition_path), "--profile", str(tiny_ws.profile_path), "--cache", str(tiny_ws.root),
                 "-o", "/tmp/never.json")
    assert_one_line_error(p, needle)


def test_profile_missing_an_item_names_it(tiny_ws):
    from dery_deploy.assemble.stage import program_data

    prof = json.loads(tiny_ws.profile_path.read_text())
    key = next(k for k in prof["records"] if k.startswith("adapter|"))
    del prof["records"][key]
    with pytest.raises(DeryError) as e:
        program_data(tiny_ws.zoo, tiny_ws.partition, tiny_ws.dis, tiny_ws.sim, prof, "p.json")
    assert key in str(e.value) and "dery profile" in str(e.value)


def test_partition_of_another_zoo_refused(tiny_ws, fashion_zoo):
    from dery_deploy.partition.stage import load_partition

    with pytest.raises(DeryError, match="not of 'fashion'"):
        load_partition(tiny_ws.partition_path, fashion_zoo)
