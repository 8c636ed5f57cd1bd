r"""TRS (ALGORITHMS.md 2.2) against closed forms, quadrature and explicit enumeration, in float64.

Oracle: with proposal pi = N(0, 1), acceptance a = sigmoid(f), f(x) = 1.5 sin(2x) - 0.5,
Z = E_pi[a] and E_pi[log(1 - a)] by quadrature, the truncated sampler's density is

    q_T(x) = pi(x) [ a(x) sum_{t=0}^{T-2} (1-Z)^t + (1-Z)^{T-1} ],

and the ELBO for the truncated geometric r(t|x) is the explicit finite sum over t = 0..T-1 of

    r(t|x) [ log pi(x) + 1[t < T-1] log a(x) + t E_pi log(1 - a) - log r(t|x) ]

(the authors' form drops the indicator). Both are computed here in numpy, term by term.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from scipy.integrate import trapezoid
from torch import nn

import oracles
from eim_lightning.bounds import trs_lower_bound, trs_posterior_stats
from eim_lightning.densities import TRS, Normal
from eim_lightning.nn import MLP

GRID = np.linspace(-8.0, 8.0, 3201)
PI = stats.norm.pdf(GRID)
LOG_PI = stats.norm.logpdf(GRID)
F = 1.5 * np.sin(2 * GRID) - 0.5
LOG_A = special.log_expit(F)
Z = float(trapezoid(PI * np.exp(LOG_A), GRID))
E_LOG1M_A = float(trapezoid(PI * special.log_expit(-F), GRID))
LOGIT_ZS = [-6.0, -0.5, float(special.logit(Z)), 1.5, 8.0]  # 8.0: Z_v = 0.9997, badly wrong


class SinLogit(nn.Module):
    """The fixed acceptance logit ``f(x) = 1.5 sin(2x) - 0.5``, ``[..., 1] -> [...]``."""

    def forward(self, x):
        return 1.5 * torch.sin(2 * x[..., 0]) - 0.5


def make_trs(T: int, logit_z: float = 0.0, bound: str = "exact", **kwargs) -> TRS:
    trs = TRS(Normal(1), SinLogit(), T=T, bound=bound, **kwargs).double()
    with torch.no_grad():
        trs.logit_z.fill_(logit_z)
    return trs


def q_T(T: int, a: np.ndarray | None = None) -> np.ndarray:
    """The exact truncated density on GRID for the acceptance ``a`` on GRID (default sigmoid(F)),
    the geometric sum written out term by term."""
    a = np.exp(LOG_A) if a is None else a
    z = float(trapezoid(PI * a, GRID))
    return PI * (a * sum((1 - z) ** t for t in range(T - 1)) + (1 - z) ** (T - 1))


def enumerated_elbo(log_pi, log_a, e_log1m_a, logit_z, T, form="exact"):
    """ELBO, r(T-1|x), E_r[t] and H[r] by explicit enumeration over t (numpy, float64)."""
    log_pi, log_a = np.atleast_1d(log_pi)[:, None], np.atleast_1d(log_a)[:, None]
    t = np.arange(T)[None, :]
    log1m_zv = special.log_expit(-logit_z)
    not_last = (t < T - 1).astype(float)
    logits = t * log1m_zv + not_last * log_a
    log_r = logits - special.logsumexp(logits, axis=1, keepdims=True)
    r = np.exp(log_r)
    weight = not_last if form == "exact" else np.ones_like(not_last)
    elbo = (r * (log_pi + weight * log_a + t * e_log1m_a - log_r)).sum(1)
    return elbo, r[:, -1], (r * t).sum(1), -(r * log_r).sum(1)


def chisquare_pvalue(samples: np.ndarray, density: np.ndarray, bins: int = 40) -> float:
    return oracles.chisquare_pvalue(samples, density, GRID, bins)


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


# -- the oracle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 5, 50])
def test_oracle_density_integrates_to_one(T):
    assert trapezoid(q_T(T), GRID) == pytest.approx(1.0, abs=1e-10)


# -- the bound as a pure function: enumeration ---------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 5, 50])
@pytest.mark.parametrize("logit_z", LOGIT_ZS)
@pytest.mark.parametrize("form", ["exact", "authors"])
def test_bound_equals_explicit_enumeration(T, logit_z, form):
    idx = np.arange(0, len(GRID), 100)
    log_pi = np.concatenate([LOG_PI[idx], [-1.0, -2.0, -3.0]])
    log_a = np.concatenate([LOG_A[idx], [-1e-9, -30.0, -200.0]])  # include extreme acceptances
    elbo, p_last, mean_t, ent = enumerated_elbo(log_pi, log_a, E_LOG1M_A, logit_z, T, form)
    lz = torch.tensor(logit_z, dtype=torch.float64)
    got_p, got_mean, got_ent = trs_posterior_stats(lz, t64(log_a), T)
    torch.testing.assert_close(got_p, t64(p_last), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_mean, t64(mean_t), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_ent, t64(ent), rtol=1e-10, atol=1e-10)
    got = trs_lower_bound(t64(log_pi), t64(log_a), torch.tensor(E_LOG1M_A, dtype=torch.float64), lz, T, form)
    torch.testing.assert_close(got, t64(elbo), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", [1, 2, 5, 50])
def test_zero_acceptance_gives_the_finite_forced_last_draw_term(T):
    # a(x) = 0: r(T-1|x) = 1, so the exact ELBO is log pi(x) + (T-1) E log(1-a) (before: NaN
    # from 0 * log 0); the authors' form adds log a(x) = -inf
    lz = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    log_a = torch.tensor([-math.inf, -1.0], dtype=torch.float64, requires_grad=True)
    args = (torch.tensor([-1.5, -1.5], dtype=torch.float64), log_a, torch.tensor(E_LOG1M_A, dtype=torch.float64), lz, T)
    p_last, mean_t, ent = trs_posterior_stats(lz, log_a, T)
    assert p_last[0] == 1 and mean_t[0] == T - 1 and ent[0] == 0
    got = trs_lower_bound(*args)
    assert got[0].item() == pytest.approx(-1.5 + (T - 1) * E_LOG1M_A, rel=1e-14)
    assert got[1].item() == pytest.approx(enumerated_elbo(-1.5, -1.0, E_LOG1M_A, 0.3, T)[0][0], rel=1e-12)
    got.sum().backward()
    assert torch.isfinite(log_a.grad).all() and (T == 1 or torch.isfinite(lz.grad))
    assert trs_lower_bound(*args, "authors")[0] == -math.inf


def test_bound_is_differentiable_in_logit_z_and_matches_finite_differences():
    lz = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    log_a = t64(LOG_A[::400])
    args = (t64(LOG_PI[::400]), log_a, torch.tensor(E_LOG1M_A, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda z: trs_lower_bound(*args, z, 5), (lz,))
    assert torch.autograd.gradcheck(
        lambda la: trs_lower_bound(args[0], la, args[2], lz.detach(), 5), (log_a.clone().requires_grad_(),)
    )


# -- the bound is a bound ----------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 5, 50])
@pytest.mark.parametrize("logit_z", LOGIT_ZS)
def test_expected_bound_is_below_log_q_T_at_every_x(T, logit_z):
    log_q = np.log(q_T(T))
    lz = torch.tensor(logit_z, dtype=torch.float64)
    args = (t64(LOG_PI), t64(LOG_A), torch.tensor(E_LOG1M_A, dtype=torch.float64), lz, T)
    exact = trs_lower_bound(*args, "exact").numpy()
    authors = trs_lower_bound(*args, "authors").numpy()
    assert np.all(exact <= log_q + 1e-12), (exact - log_q).max()
    assert np.all(authors <= exact + 1e-12), (authors - exact).max()
    if T == 1:
        np.testing.assert_allclose(exact, LOG_PI, rtol=0, atol=1e-12)
    elif T <= 5 and logit_z < 1.0:  # looser by r(T-1|x) (-log a(x)): visible when r(T-1|x) is not tiny
        assert np.max(exact - authors) > 0.1
    # the oracle has the sharpness to see a too-large bound: at the right Z_v the bound is close
    if logit_z == LOGIT_ZS[2]:
        assert np.max(exact - log_q) > -0.5


@pytest.mark.parametrize("bound", ["exact", "authors"])
@pytest.mark.parametrize("logit_z", [LOGIT_ZS[0], LOGIT_ZS[2], LOGIT_ZS[4]])
def test_density_bound_averages_to_the_expected_bound_and_below_log_q(bound, logit_z):
    T, R = 5, 4000
    trs = make_trs(T, logit_z, bound)
    idx = np.arange(800, 2401, 40)  # x in [-4, 4]
    x = torch.from_numpy(GRID[idx]).unsqueeze(-1)
    with torch.no_grad():
        est = trs.log_prob_replicas(x, R).numpy()  # [R, G]
    mean, se = est.mean(0), est.std(0, ddof=1) / math.sqrt(R)
    expected = trs_lower_bound(
        t64(LOG_PI[idx]),
        t64(LOG_A[idx]),
        torch.tensor(E_LOG1M_A, dtype=torch.float64),
        torch.tensor(logit_z, dtype=torch.float64),
        T,
        bound,
    ).numpy()
    assert np.all(np.abs(mean - expected) < 5 * se + 1e-12), np.abs((mean - expected) / se).max()
    assert np.all(mean < np.log(q_T(T)[idx]) + 5 * se)


@pytest.mark.parametrize("T", [2, 5])
@pytest.mark.parametrize("logit_z", [LOGIT_ZS[2], LOGIT_ZS[4]])
def test_exp_bound_is_below_q_T_not_unbiased(T, logit_z):
    """E[exp L_TRS(x)] <= q_T(x), and strictly so even at Z_v = Z (densities/base.py): the ELBO
    over t is not tight and E_r[t] <= T - 1 < T weights the average over T negatives (Jensen).
    Unlike SNIS, whose exp(L) averages to q_SNIS (test_snis.py)."""
    R = 20_000
    idx = np.arange(800, 2401, 200)  # x in [-4, 4]
    x = torch.from_numpy(GRID[idx]).unsqueeze(-1)
    with torch.no_grad():
        est = make_trs(T, logit_z).log_prob_replicas(x, R).numpy()  # [R, G]
    ratio = np.exp(est - np.log(q_T(T)[idx]))  # exp(L_TRS(x)) / q_T(x), q_T by quadrature
    mean, se = ratio.mean(0), ratio.std(0, ddof=1) / math.sqrt(R)
    assert np.all(se < 0.01), se
    assert np.all(mean + 5 * se < 1.0), (mean, se)


def test_T1_exact_form_is_log_pi():
    x = torch.randn(30, 1, dtype=torch.float64) * 3
    log_pi = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0])
    for logit_z in (-3.0, 0.0, 5.0):
        torch.testing.assert_close(make_trs(1, logit_z).log_prob_lower_bound(x, 4), log_pi, rtol=0, atol=1e-13)
        log_a = torch.nn.functional.logsigmoid(SinLogit()(x))
        torch.testing.assert_close(
            make_trs(1, logit_z, "authors").log_prob_lower_bound(x), log_pi + log_a, rtol=0, atol=1e-13
        )


def test_authors_form_is_below_the_exact_form_on_the_same_draws():
    x = torch.from_numpy(GRID[800:2401:20]).unsqueeze(-1)
    for logit_z in LOGIT_ZS:
        torch.manual_seed(7)
        exact = make_trs(5, logit_z, "exact").log_prob_lower_bound(x, 3)
        torch.manual_seed(7)
        authors = make_trs(5, logit_z, "authors").log_prob_lower_bound(x, 3)
        assert bool((authors <= exact).all())
        if logit_z < 1.0:
            assert (exact - authors).max().item() > 0.1


def test_acceptance_network_sees_mean_centred_input():
    trs = make_trs(5, data_mean=torch.tensor([0.75]))
    x = torch.from_numpy(GRID[::100]).unsqueeze(-1)
    torch.testing.assert_close(trs.logit(x), 1.5 * torch.sin(2 * (x[:, 0] - 0.75)) - 0.5, rtol=1e-14, atol=1e-14)
    expected = stats.norm.logpdf(x[:, 0].numpy()) + special.log_expit(1.5 * np.sin(2 * (x[:, 0].numpy() - 0.75)) - 0.5)
    np.testing.assert_allclose(trs.log_unnormalized_density(x).numpy(), expected, rtol=1e-13, atol=1e-13)


# -- sampling ----------------------------------------------------------------------------------


def test_sample_matches_q_T():
    T, n = 5, 20_000
    trs = make_trs(T, sample_chunk_size=5 * 3000)  # several chunks
    x = trs.sample(n)
    assert x.shape == (n, 1) and x.dtype == torch.float64
    x = x[:, 0].numpy()
    assert chisquare_pvalue(x, q_T(T)) > 1e-3
    # power: the same samples reject the untruncated rejection sampler pi a / Z and T = 3
    assert chisquare_pvalue(x, PI * np.exp(LOG_A) / Z) < 1e-6
    assert chisquare_pvalue(x, q_T(3)) < 1e-6


class ShiftedSinLogit(nn.Module):
    """``f(x) + c``: the acceptance logit shifted by the context's first feature."""

    def forward(self, x, context):
        return 1.5 * torch.sin(2 * x[..., 0]) - 0.5 + context[..., 0]


def test_conditional_samples_match_q_T_per_context_column():
    """Runs go in rounds of 1, 2, 4, ... proposals; a column that accepts early must not end the
    runs of another column of the same sample row (context shifts the logit by 0 and -3)."""
    T, n, shifts = 12, 20_000, [0.0, -3.0]
    trs = TRS(Normal(1), ShiftedSinLogit(), T=T).double()
    trs.sample_chunk_size = 2 * 3000  # several chunks of rows, rounds cut to fit
    x = trs.sample(n, context=torch.tensor(shifts, dtype=torch.float64).unsqueeze(-1))
    assert x.shape == (n, 2, 1)
    for column, shift in enumerate(shifts):
        a = special.expit(F + shift)
        samples = x[:, column, 0].numpy()
        assert chisquare_pvalue(samples, q_T(T, a)) > 1e-3, shift
        assert chisquare_pvalue(samples, q_T(4 if shift else 2, a)) < 1e-6, shift  # power


def test_T1_samples_are_the_proposal():
    p = stats.kstest(make_trs(1).sample(20_000)[:, 0].numpy(), stats.norm.cdf).pvalue
    assert p > 1e-3


def test_conditional_trs_shapes_and_T1():
    trs = TRS(Normal(1), MLP(1, [8], 1, context_dim=3), T=4).double()
    x = torch.randn(5, 1, dtype=torch.float64)
    ctx = torch.randn(5, 3, dtype=torch.float64)
    assert trs.log_prob_lower_bound(x, 2, context=ctx).shape == (5,)
    assert trs.sample(7, context=ctx).shape == (7, 5, 1)
    trs1 = TRS(Normal(1), MLP(1, [8], 1, context_dim=3), T=1).double()
    torch.testing.assert_close(
        trs1.log_prob_lower_bound(x, context=ctx), Normal(1).double().log_prob(x), rtol=0, atol=1e-13
    )


def test_diagnostics_report_the_variational_and_monte_carlo_acceptance_rates():
    trs = make_trs(8192, logit_z=-1.0)
    bound, diag = trs.bound_and_diagnostics(torch.zeros(3, 1, dtype=torch.float64))
    assert bound.shape == (3,)
    zv = 1 / (1 + math.exp(1.0))
    assert diag["z_variational"].item() == pytest.approx(zv, rel=1e-12)
    assert diag["expected_trials"].item() == pytest.approx(1 / zv, rel=1e-12)
    sd_a = math.sqrt(trapezoid(PI * np.exp(2 * LOG_A), GRID) - Z**2)
    assert abs(diag["acceptance_rate"].item() - Z) < 5 * sd_a / math.sqrt(8192)


# -- clear errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [0, -1, 2.5])
def test_bad_T_raises(T):
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        TRS(Normal(1), SinLogit(), T=T)


def test_bad_bound_form_and_pure_function_arguments_raise():
    with pytest.raises(ValueError, match="bound must be 'exact' or 'authors'"):
        TRS(Normal(1), SinLogit(), T=3, bound="tight")
    z = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="form must be 'exact' or 'authors'"):
        trs_lower_bound(z, z, z, z[0], 3, "tight")
    with pytest.raises(ValueError, match="T must be >= 1"):
        trs_posterior_stats(z[0], z, 0)


BAD_INPUTS = [
    (lambda: torch.zeros(4, dtype=torch.float64), ValueError, r"expected input of shape \[B, 1\]"),
    (lambda: torch.zeros(4, 1, 1, dtype=torch.float64), ValueError, r"expected input of shape \[B, 1\]"),
    (lambda: torch.zeros(4, 1, dtype=torch.int32), TypeError, "floating-point"),
    (
        lambda: torch.zeros(4, 1, dtype=torch.float32),
        TypeError,
        "float64 parameters but got input of dtype torch.float32",
    ),
    (lambda: torch.tensor([[math.nan]], dtype=torch.float64), ValueError, "non-finite"),
    (lambda: torch.tensor([[1.0], [math.inf]], dtype=torch.float64), ValueError, "non-finite"),
]


@pytest.mark.parametrize("make_x,error,match", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(make_x, error, match):
    trs = make_trs(5)
    with pytest.raises(error, match=match):
        trs.log_prob_lower_bound(make_x())
    with pytest.raises(error, match=match):
        trs.bound_and_diagnostics(make_x())


def test_float64_into_float32_model_raises():
    with pytest.raises(TypeError, match="float32 parameters but got input of dtype torch.float64"):
        TRS(Normal(1), SinLogit(), T=5).log_prob_lower_bound(torch.zeros(3, 1, dtype=torch.float64))
