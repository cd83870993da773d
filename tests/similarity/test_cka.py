import pytest
import torch

from dery_deploy.similarity.cka import MinibatchCKA, gram, hsic1_matrix, linear_cka, minibatch_cka, self_hsic


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(40, 25, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(
        300, 25, generator=g, dtype=torch.float64
    )
    return x, y


def _gram_cka(x, y):
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((kx * ky).sum() / (kx.norm() * ky.norm()))


def test_identical_is_one(xy):
    x, _ = xy
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_matches_direct_gram_computation(xy):
    x, y = xy
    assert abs(linear_cka(x, y) - _gram_cka(x, y)) < 1e-6
    wide = torch.randn(50, 400, dtype=torch.float64)  # d > n takes the Gram branch
    assert abs(linear_cka(wide, wide[:, :200] ** 2) - _gram_cka(wide, wide[:, :200] ** 2)) < 1e-6


def test_invariances(xy):
    x, y = xy
    base = linear_cka(x, y)
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-9)
    assert linear_cka(x * 7.5, y * 0.01) == pytest.approx(base, abs=1e-9)
    a = torch.randn(40, 40, dtype=torch.float64) @ torch.diag(torch.logspace(-2, 2, 40, dtype=torch.float64))
    assert abs(linear_cka(x @ a, y) - base) > 1e-3  # not invariant to arbitrary invertible maps


def test_minibatch_estimator_converges_to_full():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6000, 30, generator=g, dtype=torch.float64)
    y = x @ torch.randn(30, 30, generator=g, dtype=torch.float64) + 2 * torch.randn(
        6000, 30, generator=g, dtype=torch.float64
    )
    full = linear_cka(x, y)
    errs = [abs(minibatch_cka(x, y, b) - full) for b in (32, 512)]
    assert errs[1] < 0.01 and errs[1] < errs[0]


def test_stacked_hsic_matches_pairwise(xy):
    x, y = xy
    ka = torch.stack([gram(x[:64]), gram(x[:64, :10])])
    kb = torch.stack([gram(y[:64]), gram(x[:64]), gram(y[:64, :5])])
    m = hsic1_matrix(ka, kb)
    for i in range(2):
        for j in range(3):
            assert m[i, j] == pytest.approx(float(hsic1_matrix(ka[i : i + 1], kb[j : j + 1])), rel=1e-12)
    assert torch.allclose(self_hsic(ka), torch.diagonal(hsic1_matrix(ka, ka)))
    acc = MinibatchCKA()
    acc.update(ka, kb)
    assert acc.value()[0, 1] == pytest.approx(1.0, abs=1e-9)  # x vs x across the two stacks


def test_works_on_cuda_when_present():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    x = torch.randn(128, 16, device="cuda")
    assert linear_cka(x, x) == pytest.approx(1.0)
