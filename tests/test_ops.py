"""Layer-1 log-space primitives against direct float64 evaluation."""

import math

import numpy as np
import pytest
import torch

from eim_lightning import ops as eim_ops
from eim_lightning.bounds import snis_lower_bound
from eim_lightning.ops import chunked_log_mean_exp, log1mexp, log_mean_exp, log_sigmoid, logsumexp


def test_logsumexp_matches_direct_sum():
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(logsumexp(x, 0), torch.log(torch.exp(x).sum(0)))
    torch.testing.assert_close(log_mean_exp(x, 1), torch.log(torch.exp(x).mean(1)))


def test_logsumexp_all_neg_inf_and_empty_are_neg_inf_not_nan():
    x = torch.full((4, 3), -math.inf, requires_grad=True)
    out = logsumexp(x, 0)
    assert torch.equal(out, torch.full((3,), -math.inf))
    out.sum().backward()
    assert not torch.isnan(x.grad).any()
    assert torch.equal(logsumexp(torch.empty(0, 3), 0), torch.full((3,), -math.inf))
    assert torch.equal(log_mean_exp(torch.full((2,), -math.inf), 0), torch.tensor(-math.inf))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_nan_reaches_the_output_and_inf_gives_inf(dtype):
    x = torch.randn(1023, 3, dtype=dtype)
    x[17, 1] = math.nan
    x[5, 2] = math.inf
    out = logsumexp(x, 0)
    assert torch.isnan(out[1]) and out[2] == math.inf
    torch.testing.assert_close(out[0], torch.log(torch.exp(x[:, 0].double()).sum()).to(dtype))
    assert torch.isnan(log_mean_exp(x, 0)[1]) and torch.isnan(logsumexp(x, 0, keepdim=True)[0, 1])
    # streamed: a NaN in a middle chunk survives the running log-sum-exp
    chunks = iter(x.split(100))
    assert torch.isnan(chunked_log_mean_exp(lambda m: next(chunks), 1023, 100)[1])
    # the -inf rule is unchanged next to a NaN column: all -inf is -inf with gradient 0
    y = torch.stack([torch.full((4,), -math.inf, dtype=dtype), torch.tensor([0.0, math.nan, 1.0, 2.0], dtype=dtype)], 1)
    y.requires_grad_(True)
    out = logsumexp(y, 0)
    assert out[0] == -math.inf and torch.isnan(out[1])
    out[0].backward()
    assert torch.equal(y.grad[:, 0], torch.zeros(4, dtype=dtype))


def test_one_nan_energy_among_1023_snis_negatives_gives_a_nan_bound():
    # before: NaN was dropped by logsumexp, leaving exactly log pi + log K (a flattering number)
    u_neg = torch.zeros(1023, 2)
    u_neg[400, 0] = math.nan
    out = snis_lower_bound(torch.zeros(2), torch.zeros(2), u_neg)
    assert torch.isnan(out[0]) and out[1] == 0.0  # equal energies: L = log pi exactly


def test_logsumexp_large_values_do_not_overflow():
    x = torch.tensor([1000.0, 1000.0])
    assert logsumexp(x, 0).item() == pytest.approx(1000 + math.log(2))


def test_low_precision_is_promoted_to_float32():
    x = torch.randn(10, dtype=torch.bfloat16)
    assert logsumexp(x, 0).dtype == torch.float32


def test_log1mexp_accurate_at_both_ends():
    a = torch.tensor([-1e-10, -1e-3, -0.5, -1.0, -20.0, -800.0], dtype=torch.float64)
    import mpmath as mp

    mp.mp.dps = 50
    expected = torch.tensor([float(mp.log(1 - mp.exp(mp.mpf(v)))) for v in a.tolist()], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(a), expected, rtol=1e-12, atol=0)
    assert log1mexp(torch.tensor(0.0)).item() == -math.inf
    assert log1mexp(torch.tensor(-math.inf)).item() == 0.0


@pytest.mark.parametrize("n,chunk", [(1, 1), (10, 3), (10, 10), (10, 100), (1000, 64)])
def test_chunked_log_mean_exp_equals_unchunked(n, chunk):
    table = torch.randn(n, 6, dtype=torch.float64) * 3
    served = []

    def replicas(m):
        start = sum(served)
        served.append(m)
        assert m <= chunk
        return table[start : start + m]

    torch.testing.assert_close(chunked_log_mean_exp(replicas, n, chunk), log_mean_exp(table, 0))
    assert sum(served) == n


def test_chunked_log_mean_exp_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_samples"):
        chunked_log_mean_exp(lambda m: torch.zeros(m, 1), 0, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_log_mean_exp(lambda m: torch.zeros(m, 1), 4, 0)


# -- log_sigmoid ----------------------------------------------------------------------------------

LOG_SIGMOID_POINTS = np.concatenate([np.linspace(-120, 60, 36001), [-1e4, -80.0, -79.999, 1e-9, -1e-9, 1e4]])


@pytest.fixture(params=["composite", "torch"])
def log_sigmoid_path(request, monkeypatch):
    """Each accuracy test runs on both of log_sigmoid's CPU paths, whichever this machine's dispatch picks."""
    monkeypatch.setattr(eim_ops, "TORCH_LOGSIGMOID_ON_CPU", request.param == "torch")
    return request.param


def test_log_sigmoid_runs_torchs_kernel_exactly_where_torch_dispatches_to_avx2(log_sigmoid_path):
    x = torch.randn(7, requires_grad=True)
    expected = "LogSigmoidBackward0" if log_sigmoid_path == "torch" else "_LogSigmoidBackward"
    assert type(log_sigmoid(x).grad_fn).__name__ == expected


def test_log_sigmoid_dispatch_follows_torchs_cpu_capability():
    assert eim_ops.TORCH_LOGSIGMOID_ON_CPU == (torch.backends.cpu.get_cpu_capability() == "AVX2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_sigmoid_matches_scipy_to_a_few_eps(dtype, log_sigmoid_path):
    from scipy.special import log_expit

    x = torch.tensor(LOG_SIGMOID_POINTS, dtype=dtype)
    got = log_sigmoid(x)
    exact = log_expit(x.double().numpy())
    assert got.dtype == dtype
    # absolute error a few eps, relative error a few eps where the value is large (x << 0)
    err = np.abs(got.double().numpy() - exact)
    assert (err <= 4 * torch.finfo(dtype).eps * np.maximum(1.0, np.abs(exact))).all()


def test_log_sigmoid_gradient_is_one_minus_sigmoid_and_finite(log_sigmoid_path):
    from scipy.special import expit

    x = torch.tensor(LOG_SIGMOID_POINTS, dtype=torch.float64, requires_grad=True)
    log_sigmoid(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    np.testing.assert_allclose(x.grad.numpy(), expit(-x.detach().numpy()), rtol=1e-12, atol=1e-15)


def test_log_sigmoid_of_bfloat16_is_computed_in_float32(log_sigmoid_path):
    x = torch.linspace(-30, 30, 601, dtype=torch.bfloat16)
    got = log_sigmoid(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.nn.functional.logsigmoid(x.float()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_sigmoid_second_derivative_is_finite_and_exact(dtype, log_sigmoid_path):
    # HIS differentiates the Bernoulli likelihood's input gradient again; log(sigmoid(x)) left to autograd
    # divides by sigmoid(x)^2 there, which overflows float32 below x = -44 (inf * 0 = NaN)
    from scipy.special import expit

    x = torch.tensor(LOG_SIGMOID_POINTS, dtype=dtype, requires_grad=True)
    (first,) = torch.autograd.grad(log_sigmoid(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x)
    assert torch.isfinite(second).all()
    xs = x.detach().double().numpy()
    exact = -expit(xs) * expit(-xs)
    # absolute error a few eps (the values are at most 1/4 in size)
    eps = torch.finfo(dtype).eps
    np.testing.assert_allclose(second.double().numpy(), exact, rtol=8 * eps, atol=eps)


def test_log_sigmoid_under_vmap_matches_the_loop(log_sigmoid_path):
    x = torch.randn(3, 5, dtype=torch.float64) * 10
    torch.testing.assert_close(torch.func.vmap(log_sigmoid)(x), torch.stack([log_sigmoid(row) for row in x]))
