import itertools

import numpy as np
import pytest

from dery_deploy.errors import DeryError
from dery_deploy.partition.cover_set import PartitionProblem, best_cut, local_cut, objective, optimise


def planted(seed=0, K=4, sizes=(9, 12, 7, 14, 10)):
    """Similarity with a planted partition: boundary depths are integers exactly at the planted
    cuts (identical across donors, CKA 1) and jittered fractions elsewhere."""
    rng = np.random.default_rng(seed)
    donors = [f"d{i}" for i in range(len(sizes))]
    depth, truth = {}, {}
    for d, n in zip(donors, sizes):
        inner = np.sort(rng.choice(np.arange(1, n), K - 1, replace=False))
        cut = [0, *inner.tolist(), n]
        truth[d] = tuple(cut)
        t = np.zeros(n + 1)
        for k in range(K):
            a, b = cut[k], cut[k + 1]
            t[a : b + 1] = k + np.linspace(0, 1, b - a + 1)
            t[a + 1 : b] += rng.uniform(-0.2, 0.2, b - a - 1) / (b - a)
        depth[d] = t
    sim = {(a, b): np.exp(-2.0 * np.abs(depth[a][:, None] - depth[b][None, :])) for a in donors for b in donors}
    return PartitionProblem(donors, dict(zip(donors, sizes)), sim, K, eps=1.0), truth


def test_recovers_planted_partition():
    p, truth = planted()
    res = optimise(p, restarts=20, seed=0)
    assert res.cuts == truth
    assert res.objective == pytest.approx(2.0 * p.K * len(p.donors))


def test_dp_step_is_exact_against_brute_force():
    rng = np.random.default_rng(3)
    for _trial in range(25):
        n, K = int(rng.integers(4, 10)), int(rng.integers(2, 4))
        p = PartitionProblem(["a"], {"a": n}, {("a", "a"): np.eye(n + 1)}, K, eps=float(rng.choice([0.0, 0.5])))
        in_s, out_s = rng.normal(size=(K, n + 1)), rng.normal(size=(K, n + 1))
        L = p.max_len("a")
        best = -np.inf
        for inner in itertools.combinations(range(1, n), K - 1):
            cut = (0, *inner, n)
            if all(1 <= b - a <= L for a, b in zip(cut, cut[1:])):
                best = max(best, sum(in_s[k, cut[k]] + out_s[k, cut[k + 1]] for k in range(K)))
        if best == -np.inf:
            continue
        cut = best_cut(p, "a", in_s, out_s)
        assert sum(in_s[k, cut[k]] + out_s[k, cut[k + 1]] for k in range(K)) == pytest.approx(best)
        local = local_cut(p, "a", tuple(round(i * n / K) for i in range(K + 1)), in_s, out_s)
        assert sum(in_s[k, local[k]] + out_s[k, local[k + 1]] for k in range(K)) <= best + 1e-9


def test_constraints_hold():
    p, _ = planted(seed=5)
    p.eps = 0.0
    res = optimise(p, restarts=10, seed=1)
    for d, cut in res.cuts.items():
        n = p.units[d]
        assert len(cut) == p.K + 1 and cut[0] == 0 and cut[-1] == n
        sizes = np.diff(cut)
        assert (sizes >= 1).all() and (sizes <= int(np.ceil(n / p.K))).all()
    assert res.objective == pytest.approx(objective(p, res.cuts))


def test_dp_not_worse_than_paper_heuristic():
    p, _ = planted(seed=7, sizes=(11, 13, 8, 15, 9, 12))
    for d in p.donors:  # blur the planted structure so the search has work to do
        for e in p.donors:
            p.sim[(d, e)] = p.sim[(d, e)] ** 0.3
    ours = optimise(p, restarts=10, seed=0, method="dp")
    theirs = optimise(p, restarts=10, seed=0, method="local")
    assert ours.objective >= theirs.objective - 1e-9


def test_bad_input():
    p, _ = planted()
    with pytest.raises(DeryError, match=r"donor 'd2' \(7 units\)"):
        PartitionProblem(p.donors, p.units, p.sim, K=8)
    with pytest.raises(DeryError, match="--eps must be >= 0"):
        PartitionProblem(p.donors, p.units, p.sim, K=3, eps=-0.1)


def test_cli_partition_writes_sets(tmp_path):
    import json

    from tests.conftest import TINY_ZOO, run_dery

    out = tmp_path / "partition.json"
    p = run_dery(
        "partition",
        "--zoo",
        str(TINY_ZOO),
        "-K",
        "3",
        "--probe",
        "32",
        "--restarts",
        "5",
        "--cache",
        str(tmp_path),
        "-o",
        str(out),
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads(out.read_text())
    assert rec["K"] == 3 and len(rec["sets"]) == 3
    for s in rec["sets"]:
        assert sorted(b["donor"] for b in s["blocks"]) == ["cnx", "res", "vit"]
    for _d, cut in rec["cuts"].items():
        assert cut[0] == 0 and len(cut) == 4


def test_cli_partition_bad_k(tmp_path):
    from tests.conftest import TINY_ZOO, assert_one_line_error, run_dery

    p = run_dery("partition", "--zoo", str(TINY_ZOO), "-K", "9", "--probe", "32", "--cache", str(tmp_path))
    assert_one_line_error(p, "K=9 is larger than donor 'res'", "5 units")
    p = run_dery(
        "partition", "--zoo", str(TINY_ZOO), "-K", "2", "--eps", "-1", "--probe", "32", "--cache", str(tmp_path)
    )
    assert_one_line_error(p, "--eps must be >= 0")
