"""The diagonal Gaussian proposal against torch.distributions and closed forms (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from eim_lightning.densities import Normal

# exactly representable in float32, so parameters built in float32 and cast with .double() are exact
LOC = torch.tensor([0.75, -2.0], dtype=torch.float64)
SCALE = torch.tensor([0.5, 3.0], dtype=torch.float64)


def _normal(learnable: bool = False) -> Normal:
    return Normal(2, loc=LOC, scale=SCALE, learnable=learnable).double()


@pytest.mark.parametrize("learnable", [False, True])
def test_log_prob_equals_torch_distributions(learnable):
    d = _normal(learnable)
    # the learnable scale goes through a float32 inverse softplus: equal to float32 precision
    torch.testing.assert_close(d.scale.detach(), SCALE, rtol=1e-6, atol=0)
    torch.testing.assert_close(d.loc.detach(), LOC, rtol=0, atol=0)
    loc, scale = d.loc.detach(), d.scale.detach()
    x = torch.randn(50, 2, dtype=torch.float64) * 4
    expected = torch.distributions.Normal(loc, scale).log_prob(x).sum(-1)
    torch.testing.assert_close(d.log_prob(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_samples", [1, 3, 1000])
def test_log_prob_lower_bound_is_exact(num_samples):
    d = _normal()
    x = torch.randn(9, 2, dtype=torch.float64)
    bound = d.log_prob_lower_bound(x, num_samples)
    assert bound.shape == (9,)
    torch.testing.assert_close(bound, d.log_prob(x), rtol=0, atol=0)
    torch.testing.assert_close(d.log_prob_replicas(x, 4), d.log_prob(x).expand(4, 9), rtol=0, atol=0)


def test_learnable_scale_stays_positive_and_has_the_right_gradient():
    d = _normal(learnable=True)
    assert {n for n, _ in d.named_parameters()} == {"loc", "raw_scale"}
    # the gradient of log N(x; mu, sigma) w.r.t. the raw parameter, by the chain rule by hand:
    # d/dsigma = (x - mu)^2 / sigma^3 - 1/sigma;  dsigma/draw = sigmoid(raw)
    x = torch.randn(7, 2, dtype=torch.float64)
    d.log_prob(x).sum().backward()
    sigma, raw = d.scale.detach(), d.raw_scale.detach()
    expected = (((x - LOC) ** 2 / sigma**3 - 1 / sigma) * torch.sigmoid(raw)).sum(0)
    torch.testing.assert_close(d.raw_scale.grad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d.loc.grad, ((x - LOC) / sigma**2).sum(0), rtol=1e-10, atol=1e-12)
    # whatever value an optimiser gives the raw parameter, the scale is finite and >= min_scale > 0
    for raw_value in (-1e4, -40.0, 0.0, 40.0, 1e4):
        with torch.no_grad():
            d.raw_scale.fill_(raw_value)
        scale = d.scale
        assert bool((scale >= d.min_scale).all()) and bool(torch.isfinite(scale).all()), (raw_value, scale)
        assert bool(torch.isfinite(d.log_prob(torch.zeros(3, 2, dtype=torch.float64))).all())


def test_invalid_scales_are_rejected():
    with pytest.raises(ValueError, match="scale must be > 0"):
        Normal(2, scale=0.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        Normal(2, scale=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="min_scale"):
        Normal(2, scale=1e-6, learnable=True)
    with pytest.raises(ValueError, match="dim"):
        Normal(0)


def test_sample_mean_std_and_distribution():
    d = _normal()
    n = 100_000
    x = d.sample(n)
    assert x.shape == (n, 2) and x.dtype == torch.float64 and not x.requires_grad
    # standard errors: sigma / sqrt(n) for the mean, about sigma / sqrt(2n) for the std
    assert bool(((x.mean(0) - LOC).abs() < 5 * SCALE / math.sqrt(n)).all()), x.mean(0)
    assert bool(((x.std(0) - SCALE).abs() < 5 * SCALE / math.sqrt(2 * n)).all()), x.std(0)
    for i in range(2):
        p = stats.kstest(x[:, i].numpy(), stats.norm(LOC[i].item(), SCALE[i].item()).cdf).pvalue
        assert p > 1e-3, p
    # the KS test has power: the same samples are far from a slightly wider Gaussian
    assert stats.kstest(x[:, 0].numpy(), stats.norm(LOC[0].item(), 1.05 * SCALE[0].item()).cdf).pvalue < 1e-6


def test_rsample_is_reparameterised_and_context_sets_the_shape():
    d = _normal(learnable=True)
    x = d.rsample(5)
    x.sum().backward()
    torch.testing.assert_close(d.loc.grad, torch.full((2,), 5.0, dtype=torch.float64))
    assert d.raw_scale.grad is not None and bool((d.raw_scale.grad != 0).all())
    ctx = torch.zeros(3, 4, dtype=torch.float64)
    assert d.sample(6, context=ctx).shape == (6, 3, 2)


def test_reflect_keeps_the_distribution():
    d = _normal()
    x = d.sample(50_000)
    y = d.reflect(x)
    torch.testing.assert_close(y, 2 * LOC - x, rtol=0, atol=1e-13)
    torch.testing.assert_close(d.log_prob(y), d.log_prob(x), rtol=1e-12, atol=1e-12)
    for i in range(2):
        p = stats.kstest(y[:, i].numpy(), stats.norm(LOC[i].item(), SCALE[i].item()).cdf).pvalue
        assert p > 1e-3, p
    # a reflection about 0 instead of the mean would be detected
    assert stats.kstest((-x[:, 0]).numpy(), stats.norm(LOC[0].item(), SCALE[0].item()).cdf).pvalue < 1e-6


BAD_INPUTS = [
    (lambda: torch.zeros(4, dtype=torch.float64), ValueError, r"expected input of shape \[B, 2\]"),
    (lambda: torch.zeros(4, 3, dtype=torch.float64), ValueError, r"expected input of shape \[B, 2\]"),
    (lambda: torch.zeros(4, 2, dtype=torch.int64), TypeError, "floating-point"),
    (
        lambda: torch.zeros(4, 2, dtype=torch.float32),
        TypeError,
        "torch.float64 parameters but got input of dtype torch.float32",
    ),
    (lambda: torch.tensor([[0.0, math.nan]], dtype=torch.float64), ValueError, "non-finite"),
    (lambda: torch.tensor([[math.inf, 0.0]], dtype=torch.float64), ValueError, "non-finite"),
]


@pytest.mark.parametrize("make_x,error,match", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(make_x, error, match):
    with pytest.raises(error, match=match):
        _normal().log_prob_lower_bound(make_x())


def test_float64_into_float32_model_and_bad_counts_raise():
    with pytest.raises(TypeError, match="torch.float32 parameters but got input of dtype torch.float64"):
        Normal(2).log_prob_lower_bound(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        _normal().log_prob_lower_bound(torch.zeros(3, 2, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        _normal().sample(0)


def test_log_prob_of_the_wrong_width_and_non_finite_inputs_are_clear_errors():
    d = Normal(2)
    with pytest.raises(ValueError, match=r"^Normal over \[2\] expected input of shape \[\.\.\., 2\], got \[4, 3\]$"):
        d.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"^Normal over \[2\] expected input of shape \[\.\.\., 2\], got \[5, 4, 1\]$"):
        d.log_prob(torch.zeros(5, 4, 1))
    assert d.log_prob(torch.zeros(5, 4, 2)).shape == (5, 4)  # any batch shape
    x = torch.tensor([[0.0, math.nan], [math.inf, 1.0], [0.0, 0.0]])
    with pytest.raises(
        ValueError, match=r"^Normal got 2 non-finite \(NaN/Inf\) values in its input of shape \[3, 2\]$"
    ):
        d.log_prob_lower_bound(x)


def test_fixed_scale_log_normalizer_follows_the_buffer():
    """The cached normaliser of a fixed scale is recomputed when the buffer changes in place or
    is replaced (``.to``); oracle: scipy's normal log-density."""
    from scipy import stats

    d = Normal(2, loc=0.5, scale=2.0)
    x = torch.tensor([[0.3, -1.2], [2.0, 0.1]])

    def oracle(scale):
        return stats.norm.logpdf(x.double().numpy(), 0.5, scale).sum(-1)

    np.testing.assert_allclose(d.log_prob(x).numpy(), oracle(2.0), rtol=1e-6)
    with torch.no_grad():
        d.fixed_scale.mul_(1.5)
    np.testing.assert_allclose(d.log_prob(x).numpy(), oracle(3.0), rtol=1e-6)
    d = d.double()
    np.testing.assert_allclose(d.log_prob(x.double()).numpy(), oracle(3.0), rtol=1e-13)
