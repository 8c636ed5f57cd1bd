r"""SNIS (ALGORITHMS.md 2.1) against an exact 1-D oracle, in float64.

The oracle: with proposal pi = N(0, 1), energy U and w = e^U, the SNIS density is

    q_K(x) = pi(x) K w(x) E[ 1 / (w(x) + S) ],   S = sum of K-1 i.i.d. w(x'), x' ~ pi,

and 1/(a + S) = int_0^inf e^{-(a + S) t} dt turns the (K-1)-dimensional expectation into

    q_K(x) = pi(x) K w(x) int_0^inf e^{-w(x) t} phi(t)^{K-1} dt,   phi(t) = E_pi[e^{-t w(x')}],

a one-dimensional integral over t of a quadrature over x' (both done by scipy in float64). The
oracle is checked against K = 1 (pi itself) and the direct K = 2 integral before it is used.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import quad_vec, trapezoid
from torch import nn

import oracles
from eim_lightning.densities import SNIS, Density, Normal
from eim_lightning.nn import MLP
from eim_lightning.ops import log_mean_exp

GRID = np.linspace(-8.0, 8.0, 3201)
GRID_T = torch.from_numpy(GRID).unsqueeze(-1)
LOG_PI = stats.norm.logpdf(GRID)
AMP = 1.5


class Sin(nn.Module):
    """A fixed smooth energy ``U(x) = amp * sin(2 x)`` (log-weight), ``[..., 1] -> [...]``."""

    def __init__(self, amp: float = AMP) -> None:
        super().__init__()
        self.amp = amp

    def forward(self, x):
        return self.amp * torch.sin(2 * x[..., 0])


class ContextSin(nn.Module):
    """``U(x, c) = c * 1.5 sin(2 x)``: a conditional energy with a scalar context."""

    def forward(self, x, context):
        return context[..., 0] * AMP * torch.sin(2 * x[..., 0])


class ConditionalNormal(Density):
    """A test-local conditional proposal ``pi(x | c) = N(x; c, 1)`` over ``[1]``."""

    def __init__(self) -> None:
        super().__init__((1,))
        self.register_buffer("dummy", torch.zeros((), dtype=torch.float64))

    def log_prob_replicas(self, x, num_replicas, context=None):
        assert context is not None and context.shape[0] == x.shape[0], "the proposal needs its context"
        lp = torch.distributions.Normal(context[:, 0], 1.0).log_prob(x[:, 0])
        return lp.expand(num_replicas, x.shape[0])

    def rsample(self, n, context=None):
        return context[:, :1] + torch.randn(n, context.shape[0], 1, dtype=torch.float64)


def make_snis(K: int, share: bool = True, amp: float = AMP, **kwargs) -> SNIS:
    return SNIS(Normal(1), Sin(amp), num_proposals=K, share_proposal_samples=share, **kwargs).double()


@functools.cache
def oracle_density(K: int, amp: float = AMP, loc: float = 0.0) -> np.ndarray:
    """Exact ``q_K`` on GRID for proposal N(loc, 1) and energy amp * sin(2x)."""
    pi = stats.norm.pdf(GRID, loc=loc)
    w = np.exp(amp * np.sin(2 * GRID))

    def integrand(t):
        phi = trapezoid(pi * np.exp(-t * w), GRID)
        return K * w * np.exp(-t * w) * phi ** (K - 1)

    value, _ = quad_vec(integrand, 0.0, np.inf, epsabs=1e-14, epsrel=1e-12)
    return pi * value


def interp(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.interp(x, GRID, values)


def chisquare_pvalue(samples: np.ndarray, density: np.ndarray, bins: int = 40) -> float:
    return oracles.chisquare_pvalue(samples, density, GRID, bins)


def entropy_term(q: np.ndarray) -> float:
    """``E_q[log q]`` by quadrature."""
    return float(trapezoid(q * np.log(np.maximum(q, 1e-300)), GRID))


# -- the oracle itself --------------------------------------------------------------------------


def test_oracle_is_a_density_and_reduces_to_known_cases():
    np.testing.assert_allclose(oracle_density(1), np.exp(LOG_PI), rtol=1e-9, atol=1e-14)
    pi, w = np.exp(LOG_PI), np.exp(AMP * np.sin(2 * GRID))
    idx = np.arange(0, len(GRID), 80)
    direct_k2 = pi[idx] * np.array([trapezoid(pi * 2 * w[i] / (w[i] + w), GRID) for i in idx])
    np.testing.assert_allclose(oracle_density(2)[idx], direct_k2, rtol=1e-9, atol=1e-14)
    for K in (2, 4, 8):
        assert trapezoid(oracle_density(K), GRID) == pytest.approx(1.0, abs=1e-9)
    # the K = 4 model is far from its proposal, so matching it is not automatic
    assert np.abs(oracle_density(4) - pi).max() > 0.05


# -- K = 1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [True, False])
def test_k1_is_exactly_the_proposal(share):
    snis = make_snis(1, share)
    x = torch.randn(20, 1, dtype=torch.float64) * 2
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0])
    for S in (1, 5, 100):
        torch.testing.assert_close(snis.log_prob_lower_bound(x, S), expected, rtol=0, atol=1e-13)
    p = stats.kstest(snis.sample(20_000)[:, 0].numpy(), stats.norm.cdf).pvalue
    assert p > 1e-3, p


class Step(nn.Module):
    """``U(x) = 60 [x > 7]``: points far above every proposal sample's energy (P(x' > 7) = 1e-12)."""

    def forward(self, x):
        return 60.0 * (x[..., 0] > 7).to(x.dtype)


@pytest.mark.parametrize("K", [2, 16, 1024])
def test_the_bound_exceeds_log_pi_by_at_most_log_K(K):
    """``log pi + log K - log(1 + sum_j e^{U(x_j) - U(x)})`` is at most ``log pi + log K`` on every
    replica, for any energy (the results pages use it: SNIS adds at most log K to its proposal), and
    reaches it where U(x) is far above the negatives'."""
    x = torch.linspace(-4.0, 8.0, 49, dtype=torch.float64).unsqueeze(-1)
    log_pi = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0])
    step = SNIS(Normal(1), Step(), num_proposals=K).double()
    for snis in (make_snis(K, amp=30.0), make_snis(K, share=False), step):
        gain = snis.log_prob_replicas(x, 20) - log_pi
        assert (gain <= math.log(K) + 1e-12).all(), gain.max().item()
    far = (step.log_prob_replicas(x, 20) - log_pi)[:, x[:, 0] > 7]
    assert far.shape == (20, 4)
    torch.testing.assert_close(far, torch.full_like(far, math.log(K)), rtol=0, atol=1e-12)


def test_conditional_k1_equals_the_proposal():
    proposal = Normal(1)
    snis = SNIS(proposal, MLP(1, [8], 1, context_dim=2), num_proposals=1).double()
    x = torch.randn(6, 1, dtype=torch.float64)
    ctx = torch.randn(6, 2, dtype=torch.float64)
    torch.testing.assert_close(snis.log_prob_lower_bound(x, 3, context=ctx), proposal.log_prob(x), rtol=0, atol=1e-13)
    assert snis.sample(5, context=ctx).shape == (5, 6, 1)
    # with a conditional proposal the context must reach the proposal too, in the bound and in
    # the particles' upper bounds (K = 1: both are log pi(x | c) exactly)
    cond = SNIS(ConditionalNormal(), MLP(1, [8], 1, context_dim=2), num_proposals=1).double()
    ctx1 = torch.randn(6, 2, dtype=torch.float64)
    expected = torch.distributions.Normal(ctx1[:, 0], 1.0).log_prob(x[:, 0])
    torch.testing.assert_close(cond.log_prob_lower_bound(x, 2, context=ctx1), expected, rtol=0, atol=1e-13)
    particles = cond.rsample_particles(4, context=ctx1)
    assert particles.z.shape == (1, 4, 6, 1)
    expected_z = torch.distributions.Normal(ctx1[:, 0], 1.0).log_prob(particles.z[0, :, :, 0])
    torch.testing.assert_close(particles.log_q_upper[0], expected_z, rtol=0, atol=1e-13)
    torch.testing.assert_close(particles.log_s, torch.zeros(1, 4, 6, dtype=torch.float64), rtol=0, atol=0)


def test_energy_sees_mean_centred_input():
    snis = make_snis(4, data_mean=torch.tensor([0.75]))
    x = GRID_T[::100]
    torch.testing.assert_close(snis.log_weight(x), AMP * torch.sin(2 * (x[:, 0] - 0.75)), rtol=1e-14, atol=1e-14)
    expected = stats.norm.logpdf(x[:, 0].numpy()) + AMP * np.sin(2 * (x[:, 0].numpy() - 0.75))
    np.testing.assert_allclose(snis.log_unnormalized_density(x).numpy(), expected, rtol=1e-13, atol=1e-13)


# -- unbiasedness of exp(L) --------------------------------------------------------------------


@pytest.mark.parametrize("share", [True, False])
def test_exp_lower_bound_is_unbiased_for_the_density(share):
    K, R, every = 4, 4000, 4
    snis = make_snis(K, share)
    grid = GRID[::every]  # spacing 0.02: still far finer than q varies
    q = oracle_density(K)[::every]
    with torch.no_grad():
        est = snis.log_prob_replicas(GRID_T[::every], R).exp().numpy()  # [R, G]
    assert est.shape == (R, len(grid))
    # pointwise: the mean over fresh negatives is q(x), at every grid point (|z| < 5)
    mean, se = est.mean(0), est.std(0, ddof=1) / math.sqrt(R)
    inner = np.abs(grid) < 5  # outside, q and its estimate are both ~0
    z = (mean - q)[inner] / np.maximum(se[inner], 1e-12)
    assert np.abs(z).max() < 5, np.abs(z).max()
    # and it integrates to one: per replica when negatives are shared (one draw per replica),
    # per grid point otherwise
    weights = np.gradient(grid)  # trapezoid weights up to the end points (negligible here)
    integrals = est @ weights
    if share:
        se_int = integrals.std(ddof=1) / math.sqrt(R)
    else:
        se_int = math.sqrt(((weights * est.std(0, ddof=1)) ** 2).sum() / R)
    assert abs(integrals.mean() - 1.0) < 5 * se_int, (integrals.mean(), se_int)
    assert se_int < 0.01  # the test is sharp enough to see a wrong log K (a factor of 4)


def test_log_prob_lower_bound_exp_is_unbiased_with_chunks():
    # num_samples > eval_chunk_size: exp of the streamed log-mean-exp is still unbiased
    K, S, R = 4, 10, 3000
    snis = make_snis(K, share=False, eval_chunk_size=3)
    xs = np.array([-1.1, 0.4, 1.7])
    x = torch.from_numpy(np.repeat(xs, R)).unsqueeze(-1)
    with torch.no_grad():
        est = snis.log_prob_lower_bound(x, S).exp().reshape(3, R).numpy()
    q = interp(oracle_density(K), xs)
    z = (est.mean(1) - q) / (est.std(1, ddof=1) / math.sqrt(R))
    assert np.abs(z).max() < 5, z


# -- sampling ----------------------------------------------------------------------------------


def test_sample_matches_the_density():
    K, n = 4, 20_000
    snis = make_snis(K, sample_chunk_size=4 * 3000)  # several chunks
    x = snis.sample(n)
    assert x.shape == (n, 1) and x.dtype == torch.float64 and not x.requires_grad
    x = x[:, 0].numpy()
    assert chisquare_pvalue(x, oracle_density(K)) > 1e-3
    # power: the same samples reject the proposal and the K = 8 model
    assert chisquare_pvalue(x, np.exp(LOG_PI)) < 1e-6
    assert chisquare_pvalue(x, oracle_density(8)) < 1e-6


def test_conditional_model_matches_its_per_context_oracle():
    K, n = 4, 20_000
    snis = SNIS(Normal(1), ContextSin(), num_proposals=K).double()
    ctx = torch.tensor([[1.0], [-0.5]], dtype=torch.float64)
    x = snis.sample(n, context=ctx)
    assert x.shape == (n, 2, 1)
    for j, c in enumerate((1.0, -0.5)):
        assert chisquare_pvalue(x[:, j, 0].numpy(), oracle_density(K, AMP * c)) > 1e-3
    # and the conditional bound is unbiased for each q(x | c)
    R, xs = 4000, np.array([-0.8, 0.6])
    xb = torch.from_numpy(np.repeat(xs, 2)).unsqueeze(-1)  # [x0 c0, x0 c1, x1 c0, x1 c1]
    cb = ctx.repeat(2, 1)
    with torch.no_grad():
        est = snis.log_prob_replicas(xb, R, context=cb).exp().numpy()  # [R, 4]
    q = np.array([interp(oracle_density(K, AMP * c), np.array([xv]))[0] for xv in xs for c in (1.0, -0.5)])
    z = (est.mean(0) - q) / (est.std(0, ddof=1) / math.sqrt(R))
    assert np.abs(z).max() < 5, z


# -- upper bounds ------------------------------------------------------------------------------


def test_losing_particles_give_an_upper_bound_and_fresh_negatives_a_lower_bound():
    K, n = 4, 40_000
    snis = make_snis(K)
    q = oracle_density(K)
    h = entropy_term(q)  # E_q[log q]
    with torch.no_grad():
        z, log_s, upper = snis.rsample_particles(n)
    assert z.shape == (K, n, 1) and log_s.shape == upper.shape == (K, n)
    s = log_s.exp()
    torch.testing.assert_close(s.sum(0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)
    # summing the selected index analytically: E_q[g] = E[sum_k s_k g(z_k)] for test functions g
    for g in (lambda v: v, lambda v: v**2, lambda v: np.sin(2 * v)):
        per_run = (s * torch.from_numpy(g(z[..., 0].numpy()))).sum(0).numpy()
        exact = trapezoid(q * g(GRID), GRID)
        assert abs(per_run.mean() - exact) < 5 * per_run.std(ddof=1) / math.sqrt(n)
    per_run_upper = (s * upper).sum(0).numpy()
    up, se_up = per_run_upper.mean(), per_run_upper.std(ddof=1) / math.sqrt(n)
    assert up > h - 5 * se_up, (up, h, se_up)
    # the lower bound at exact samples, with fresh negatives, sits below E_q[log q]; independent
    # negatives per example (shared ones would make the n values one correlated draw)
    with torch.no_grad():
        lower = make_snis(K, share=False).log_prob_lower_bound(snis.sample(n)).numpy()
    lo, se_lo = lower.mean(), lower.std(ddof=1) / math.sqrt(n)
    assert lo < h + 5 * se_lo, (lo, h, se_lo)
    # non-vacuous: the two bounds are resolved apart
    assert up - lo > 10 * math.hypot(se_up, se_lo), (up, lo)


def test_reweighted_fresh_negatives_upper_bound_at_fixed_x():
    # E_pi[e^L L] / q(x) >= log q(x) >= E_pi[L], with E_pi[e^L] = q(x) (ALGORITHMS.md 2.1)
    K, R = 4, 20_000
    snis = make_snis(K, share=False)
    xs = np.array([-1.2, 0.3, 0.8, 2.0])
    q = interp(oracle_density(K), xs)
    with torch.no_grad():
        L = snis.log_prob_replicas(torch.from_numpy(xs).unsqueeze(-1), R).numpy()  # [R, 4]
    w = np.exp(L) / q
    for j in range(len(xs)):
        upper, lower = w[:, j] * L[:, j], L[:, j]
        se_u, se_l = upper.std(ddof=1) / math.sqrt(R), lower.std(ddof=1) / math.sqrt(R)
        assert abs(w[:, j].mean() - 1.0) < 5 * w[:, j].std(ddof=1) / math.sqrt(R)
        assert upper.mean() > math.log(q[j]) - 5 * se_u, (xs[j], upper.mean(), math.log(q[j]))
        assert lower.mean() < math.log(q[j]) + 5 * se_l, (xs[j], lower.mean(), math.log(q[j]))
        assert upper.mean() - lower.mean() > 10 * math.hypot(se_u, se_l)


# -- more samples, tighter bound ---------------------------------------------------------------


def test_lower_bound_is_non_decreasing_in_num_samples_on_average():
    K, R = 4, 3000
    snis = make_snis(K, share=False)
    xs = np.array([-1.0, 0.5, 2.2])
    x = torch.from_numpy(np.repeat(xs, R)).unsqueeze(-1)
    log_q = np.log(interp(oracle_density(K), xs))
    means, ses = [], []
    with torch.no_grad():
        for S in (1, 2, 8, 32):
            b = snis.log_prob_lower_bound(x, S).reshape(3, R).numpy()
            means.append(b.mean(1))
            ses.append(b.std(1, ddof=1) / math.sqrt(R))
    means, ses = np.array(means), np.array(ses)
    assert np.all(means < log_q + 5 * ses), (means, log_q)
    for i in range(len(means) - 1):
        assert np.all(means[i + 1] > means[i] - 5 * np.hypot(ses[i], ses[i + 1])), means
    # it does tighten (summed over the points: the gain is small where pi e^U is nearly flat)
    assert (means[-1] - means[0]).sum() > 5 * np.sqrt((ses[0] ** 2 + ses[-1] ** 2).sum()), means


# -- sharing negatives, chunking ---------------------------------------------------------------


def test_shared_and_independent_negatives_have_the_same_expectation():
    K, R = 4, 4000
    xs = torch.tensor([[-0.9], [0.2], [1.4]], dtype=torch.float64)
    means, ses = [], []
    for share in (True, False):
        with torch.no_grad():
            e = make_snis(K, share).log_prob_replicas(xs, R).exp().numpy()
        means.append(e.mean(0))
        ses.append(e.std(0, ddof=1) / math.sqrt(R))
    assert np.all(np.abs(means[0] - means[1]) < 5 * np.hypot(*ses)), means
    q = interp(oracle_density(K), xs[:, 0].numpy())
    for m, s in zip(means, ses):
        assert np.all(np.abs(m - q) < 5 * s)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_evaluation_equals_unchunked_on_the_same_draws(monkeypatch, chunk):
    S = 10
    snis = make_snis(4, share=False, eval_chunk_size=chunk)
    x = torch.tensor([[-0.5], [0.3], [1.9]], dtype=torch.float64)
    served = []
    real = snis.log_prob_replicas

    def spy(xx, m, context=None):
        out = real(xx, m, context)
        served.append(out)
        return out

    monkeypatch.setattr(snis, "log_prob_replicas", spy)
    result = snis.log_prob_lower_bound(x, S)
    assert [r.shape[0] for r in served] == [min(chunk, S - i) for i in range(0, S, chunk)]
    table = torch.cat(served, 0)  # the same draws, all at once
    direct = torch.log(torch.exp(table).mean(0))
    torch.testing.assert_close(result, direct, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result, log_mean_exp(table, 0), rtol=1e-12, atol=1e-12)


# -- clear errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("K", [0, -3, 2.5, True])
def test_bad_num_proposals_raise(K):
    with pytest.raises(ValueError, match=r"num_proposals \(K\) must be an integer >= 1"):
        SNIS(Normal(1), Sin(), num_proposals=K)


BAD_INPUTS = [
    (lambda: torch.zeros(4, dtype=torch.float64), ValueError, r"expected input of shape \[B, 1\]"),
    (lambda: torch.zeros(4, 2, dtype=torch.float64), ValueError, r"expected input of shape \[B, 1\]"),
    (lambda: torch.zeros(4, 1, dtype=torch.int64), TypeError, "floating-point"),
    (
        lambda: torch.zeros(4, 1, dtype=torch.float32),
        TypeError,
        "float64 parameters but got input of dtype torch.float32",
    ),
    (lambda: torch.tensor([[0.0], [math.nan]], dtype=torch.float64), ValueError, "non-finite"),
    (lambda: torch.tensor([[-math.inf]], dtype=torch.float64), ValueError, "non-finite"),
]


@pytest.mark.parametrize("make_x,error,match", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(make_x, error, match):
    snis = make_snis(4)
    with pytest.raises(error, match=match):
        snis.log_prob_lower_bound(make_x())
    with pytest.raises(error, match=match):
        snis.bound_and_diagnostics(make_x())


def test_float64_into_float32_model_and_bad_context_raise():
    snis = SNIS(Normal(1), Sin(), num_proposals=4)
    with pytest.raises(TypeError, match="float32 parameters but got input of dtype torch.float64"):
        snis.log_prob_lower_bound(torch.zeros(3, 1, dtype=torch.float64))
    cond = SNIS(Normal(1), MLP(1, [4], 1, context_dim=2), num_proposals=4)
    with pytest.raises(ValueError, match="context must be a tensor with the batch size of x"):
        cond.log_prob_lower_bound(torch.zeros(3, 1), context=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        snis.log_prob_lower_bound(torch.zeros(3, 1), 0)


def test_reparameterize_proposal_samples_false_trains_the_proposal_by_its_data_term_alone():
    """With the proposal samples' gradient stopped, the proposal's gradient is exactly that of
    log pi(x) (its data term), the energy's gradient is unchanged (same draws), and the bound's value
    is the same; with it on (the default) the proposal also learns through its samples."""
    torch.manual_seed(0)
    x = torch.randn(6, 2)
    grads = {}
    for reparameterize in (True, False):
        torch.manual_seed(1)
        proposal = Normal(2, loc=0.3, scale=1.2, learnable=True)
        snis = SNIS(proposal, MLP(2, [8], 1), num_proposals=16, reparameterize_proposal_samples=reparameterize)
        torch.manual_seed(2)
        bound, _ = snis.bound_and_diagnostics(x)
        grads[reparameterize] = (bound.detach(), torch.autograd.grad(bound.mean(), list(snis.parameters())))
        data_term = torch.autograd.grad(proposal.log_prob(x).mean(), list(proposal.parameters()))
    (b_on, g_on), (b_off, g_off) = grads[True], grads[False]
    torch.testing.assert_close(b_on, b_off)
    n_proposal = len(data_term)
    for g, expected in zip(g_off[:n_proposal], data_term):
        torch.testing.assert_close(g, expected)
    for g1, g2 in zip(g_on[n_proposal:], g_off[n_proposal:]):
        torch.testing.assert_close(g1, g2)
    assert any(not torch.allclose(g, e) for g, e in zip(g_on[:n_proposal], data_term))
