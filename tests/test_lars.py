r"""LARS (ALGORITHMS.md 2.4) against quadrature, its update rule and its saved state, in float64.

Oracle: proposal pi = N(0, 1) (or N(0.75, 1)), acceptance a = sigmoid(f) with a fixed f, Z = E_pi[a]
by quadrature, and the truncated density written out term by term,

    q_T(x) = pi(x) [ a(x) sum_{t=0}^{T-2} (1-Z)^t + (1-Z)^{T-1} ].
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from scipy.integrate import trapezoid
from torch import nn

import oracles
from eim_lightning.bounds import lars_log_prob
from eim_lightning.densities import LARS, Normal
from eim_lightning.nn import MLP

GRID = np.linspace(-8.0, 8.0, 3201)
GRID_T = torch.from_numpy(GRID).unsqueeze(-1)


class SinLogit(nn.Module):
    """Fixed acceptance logit ``f(x) = 1.5 sin(2 (x - centre)) + shift``, ``[..., 1] -> [...]``."""

    def __init__(self, shift: float = -0.5, centre: float = 0.0) -> None:
        super().__init__()
        self.shift, self.centre = shift, centre

    def forward(self, x):
        return 1.5 * torch.sin(2 * (x[..., 0] - self.centre)) + self.shift


def oracle(shift: float = -0.5, loc: float = 0.0, centre: float = 0.0):
    """``(pi, a, Z, Var_pi[a])`` on GRID by quadrature."""
    pi = stats.norm.pdf(GRID, loc=loc)
    a = special.expit(1.5 * np.sin(2 * (GRID - centre)) + shift)
    z = float(trapezoid(pi * a, GRID))
    return pi, a, z, float(trapezoid(pi * a**2, GRID)) - z**2


def q_T(T: int, pi, a, z) -> np.ndarray:
    geo = sum((1 - z) ** t for t in range(T - 1))
    return pi * (a * geo + (1 - z) ** (T - 1))


def make_lars(T: int = 5, shift: float = -0.5, loc: float = 0.0, centre: float = 0.0, **kwargs) -> LARS:
    return LARS(Normal(1, loc=loc), SinLogit(shift, centre), T=T, **kwargs).double()


def chisquare_pvalue(samples: np.ndarray, density: np.ndarray, bins: int = 40) -> float:
    return oracles.chisquare_pvalue(samples, density, GRID, bins)


# -- the density given Z --------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 5, 50, 1024])
def test_log_prob_given_true_z_is_q_T_and_integrates_to_one(T):
    pi, a, z, _ = oracle()
    lars = make_lars(T)
    with torch.no_grad():
        got = lars.log_prob_given_z(GRID_T, torch.tensor(z, dtype=torch.float64), num_replicas=2)
    assert got.shape == (2, len(GRID))
    expected = q_T(T, pi, a, z)
    np.testing.assert_allclose(got[0].exp().numpy(), expected, rtol=1e-11, atol=1e-300)
    np.testing.assert_allclose(got[1].numpy(), got[0].numpy(), rtol=0, atol=0)
    assert trapezoid(got[0].exp().numpy(), GRID) == pytest.approx(1.0, abs=1e-10)
    if T > 1:  # with a wrong Z it is not normalised: the estimate is not a density
        wrong = lars.log_prob_given_z(GRID_T, torch.tensor(0.8 * z, dtype=torch.float64))[0].exp().detach()
        assert abs(trapezoid(wrong.numpy(), GRID) - 1.0) > 1e-3


def test_T1_gives_log_pi_for_any_z():
    x = torch.randn(20, 1, dtype=torch.float64) * 3
    lars = make_lars(1)
    log_pi = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0])
    for z in (1e-6, 0.3, 1.0):
        torch.testing.assert_close(
            lars.log_prob_given_z(x, torch.tensor(z, dtype=torch.float64))[0], log_pi, rtol=0, atol=1e-13
        )
    lars.eval()
    lars.set_evaluation_z(0.123)
    torch.testing.assert_close(lars.log_prob_lower_bound(x, 3), log_pi, rtol=0, atol=1e-13)


@pytest.mark.parametrize("T", [2, 5, 100, 1024])
def test_the_estimate_exceeds_log_pi_by_at_most_log_T_whatever_z_and_a(T):
    """``log q_T - log pi = log(a sum_{t<T-1} (1-Z)^t + (1-Z)^{T-1}) <= log(a (T-1) + 1) <= log T`` for
    any Z in (0, 1], even a wrong estimate: LARS can add at most log T to its proposal's density (the
    results pages use it), and it reaches log T as a -> 1 and Z -> 0."""
    x = torch.linspace(-4.0, 4.0, 41, dtype=torch.float64).unsqueeze(-1)
    log_pi = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0])
    for shift in (-10.0, -0.5, 3.0, 40.0):
        lars = make_lars(T, shift=shift)
        for z in (1e-15, 1e-6, 1e-3, 0.3, 1.0):
            gain = lars.log_prob_given_z(x, torch.tensor(z, dtype=torch.float64))[0] - log_pi
            assert (gain <= math.log(T) + 1e-12).all(), (shift, z, gain.max().item())
    # a = 1 - e^-38.5 and Z = 1e-15: the factor is T up to rounding
    gain = make_lars(T, shift=40.0).log_prob_given_z(x, torch.tensor(1e-15, dtype=torch.float64))[0] - log_pi
    torch.testing.assert_close(gain, torch.full_like(gain, math.log(T)), rtol=0, atol=1e-9)


def mp_log_q_T(log_pi: float, log_a: float, z, T: int) -> float:
    """``log q_T`` in 50-digit arithmetic, the geometric sum written out (``0^0 = 1``)."""
    import mpmath as mp

    mp.mp.dps = 50
    z = mp.mpf(z)
    geo = mp.fsum((1 - z) ** t for t in range(T - 1))
    return float(log_pi + mp.log(mp.exp(log_a) * geo + (1 - z) ** (T - 1)))


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("T", [2, 3, 50, 1024])
def test_lars_log_prob_near_and_at_z0_and_above_1_is_the_closed_form(T, dtype, rtol):
    # before: NaN at Z = 0 and Z > 1, and a gradient lost to cancellation near Z = 0
    log_pi, log_a = torch.tensor([-1.3, 0.4], dtype=dtype), torch.tensor([-0.7, -25.0], dtype=dtype)
    zs = [0.0, 1e-300, 1e-40, 1e-20, 1e-9, 1e-6, 1e-4, 0.01, 0.3, 0.999, 1.0]
    for z in zs:
        zt = torch.tensor(z, dtype=dtype)
        expected = [mp_log_q_T(float(p), float(a), float(zt), T) for p, a in zip(log_pi, log_a)]
        got = lars_log_prob(log_pi, log_a, zt, T)
        torch.testing.assert_close(got, torch.tensor(expected, dtype=dtype), rtol=rtol, atol=rtol, msg=f"Z = {z}")
    at_zero = log_pi + torch.log1p((T - 1) * log_a.exp())  # the limit Z -> 0
    torch.testing.assert_close(lars_log_prob(log_pi, log_a, torch.tensor(0.0, dtype=dtype), T), at_zero)
    # Z >= 1 is evaluated at Z = 1 (log pi + log a), with zero gradient in Z
    z = torch.tensor([1.0, 1.5, 7.0], dtype=dtype, requires_grad=True)
    got = lars_log_prob(log_pi[:1], log_a[:1], z, T)
    torch.testing.assert_close(got, (log_pi[:1] + log_a[:1]).expand(3))
    got.sum().backward()
    assert torch.equal(z.grad, torch.zeros(3, dtype=dtype))
    # negative and NaN Z are errors, loudly
    assert torch.isnan(lars_log_prob(log_pi, log_a, torch.tensor(-1e-30, dtype=dtype), T)).all()
    assert torch.isnan(lars_log_prob(log_pi, log_a, torch.tensor(math.nan, dtype=dtype), T)).all()


@pytest.mark.parametrize("T", [2, 5, 1024])
def test_lars_log_prob_gradient_in_z_near_0_is_the_closed_form(T):
    import mpmath as mp

    mp.mp.dps = 50
    log_a = -0.7
    for z in (0.0, 1e-30, 1e-12, 1e-6, 1e-3, 0.2):
        zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        lars_log_prob(
            torch.zeros(1, dtype=torch.float64), torch.tensor([log_a], dtype=torch.float64), zt, T
        ).sum().backward()
        expected = mp.diff(
            lambda v: mp.log(mp.exp(log_a) * mp.fsum((1 - v) ** t for t in range(T - 1)) + (1 - v) ** (T - 1)), z
        )
        assert zt.grad.item() == pytest.approx(float(expected), rel=1e-9), z


def test_sample_matches_q_T():
    pi, a, z, _ = oracle()
    x = make_lars(5, sample_chunk_size=5 * 3000).sample(20_000)[:, 0].numpy()
    assert chisquare_pvalue(x, q_T(5, pi, a, z)) > 1e-3
    assert chisquare_pvalue(x, q_T(3, pi, a, z)) < 1e-6  # power


# -- estimating Z ---------------------------------------------------------------------------------


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("chunk", [7777, 200_000])
def test_estimate_z_is_within_its_monte_carlo_error(monkeypatch, antithetic, chunk):
    n = 200_000
    pi, a, z, var = oracle(shift=-0.5)
    lars = make_lars(num_z_eval_samples=n, z_eval_chunk_size=chunk, antithetic=antithetic)
    sizes = []
    real_sample = lars.proposal.sample

    def spy(m, context=None):
        sizes.append(m)
        return real_sample(m, context)

    monkeypatch.setattr(lars.proposal, "sample", spy)
    est = lars.estimate_z().item()
    assert max(sizes) <= chunk  # streamed: memory of one chunk
    assert sum(sizes) == (n if not antithetic else sum((min(chunk, n - i) + 1) // 2 for i in range(0, n, chunk)))
    if antithetic:  # n/2 i.i.d. pairs, each the mean of a(x) and a(-x)
        g = 0.5 * (a + np.interp(-GRID, GRID, a))
        se = math.sqrt((trapezoid(pi * g**2, GRID) - z**2) / (n / 2))
    else:
        se = math.sqrt(var / n)
    assert abs(est - z) < 5 * se, (est, z, se)
    assert lars.z_eval.item() == est  # cached
    assert se < 2e-3  # sharp enough to see, e.g., a missing chunk


@pytest.mark.parametrize("loc", [0.0, 0.75])
def test_antithetic_pairs_reflect_about_the_proposal_mean(loc):
    # a(x) + a(2 loc - x) = 1 when f is odd about loc: antithetic pairs give Z = 1/2 exactly,
    # for any chunking (even chunks keep the pairs together)
    lars = make_lars(shift=0.0, loc=loc, centre=loc, antithetic=True)
    _, _, z, _ = oracle(shift=0.0, loc=loc, centre=loc)
    assert z == pytest.approx(0.5, abs=1e-12)
    for n, chunk in ((10_000, 10_000), (10_000, 1000), (9_999, 1234)):
        est = lars.estimate_z(num_samples=n, chunk_size=chunk).item()
        exact_expected = 0.5 if n % 2 == 0 and chunk % 2 == 0 else None
        if exact_expected is not None:
            assert est == pytest.approx(0.5, abs=1e-12), (n, chunk, est)
        else:
            assert abs(est - 0.5) < 0.01
    # the plain estimator with the same n is not exact: the exactness is the pairing's doing
    assert abs(lars.estimate_z(num_samples=10_000, chunk_size=1000, antithetic=False).item() - 0.5) > 1e-6


# -- the moving average ---------------------------------------------------------------------------


def test_moving_average_follows_its_update_rule(monkeypatch):
    S, eps = 64, 0.05
    lars = LARS(Normal(1), MLP(1, [8], 1), T=5, num_z_samples=S, z_ema_rate=eps).double()
    lars.train()
    drawn = []
    real_rsample = lars.proposal.rsample

    def spy(m, context=None):
        out = real_rsample(m, context)
        drawn.append(out.detach().clone())
        return out

    monkeypatch.setattr(lars.proposal, "rsample", spy)
    net = lars.accept_logit
    z_ema = 0.5
    assert lars.z_ema.item() == z_ema
    for _step in range(3):
        drawn.clear()
        z = lars.training_z()
        (xs,) = drawn
        assert xs.shape == (S, 1)
        with torch.no_grad():
            z_curr = torch.sigmoid(net(xs)[:, 0]).mean().item()
        z_s = (1 - eps) * z_ema + eps * z_curr
        assert z.item() == pytest.approx(z_s, rel=1e-13, abs=0)
        # value of the smoothed estimate, gradient of the current batch: dZ/dtheta = dZ_curr/dtheta
        grads = torch.autograd.grad(z, list(net.parameters()))
        z_curr_t = torch.sigmoid(net(xs)[:, 0]).mean()
        expected = torch.autograd.grad(z_curr_t, list(net.parameters()))
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
        assert lars.z_ema.item() == z_ema  # unchanged until the optimiser step is done
        lars.update_z_ema()
        z_ema = z_s
        assert lars.z_ema.item() == pytest.approx(z_ema, rel=1e-13, abs=0)
    lars.update_z_ema()  # no pending Z_s: a no-op
    assert lars.z_ema.item() == pytest.approx(z_ema, rel=1e-13, abs=0)


def test_moving_average_with_posterior_terms_and_a_reduction():
    S, eps = 16, 0.01
    lars = make_lars(num_z_samples=S, z_ema_rate=eps)
    lars.train()
    extra = torch.tensor([0.2, 0.9, 0.4], dtype=torch.float64)
    torch.manual_seed(3)
    z = lars.training_z(extra)
    torch.manual_seed(3)
    xs = lars.proposal.rsample(S)
    z_hat = torch.sigmoid(SinLogit()(xs)).mean()
    z_curr = (S * z_hat + extra) / (S + 1)
    z_s = (1 - eps) * 0.5 + eps * z_curr
    torch.testing.assert_close(z, z_s, rtol=1e-13, atol=0)
    seen = []
    lars.update_z_ema(reduce=lambda v: seen.append(v.item()) or v * 0 + 0.25)
    assert seen == [pytest.approx(z_s.mean().item(), rel=1e-13)]
    assert lars.z_ema.item() == 0.25  # the reduced value is what is stored (same on all workers)


def test_training_forward_uses_the_smoothed_z():
    lars = make_lars(T=5, num_z_samples=32)
    lars.train()
    x = torch.randn(6, 1, dtype=torch.float64)
    torch.manual_seed(11)
    got, diagnostics = lars.bound_and_diagnostics(x)
    z_s = lars._pending_z_s
    assert diagnostics["z"] is z_s
    xn = x[:, 0].numpy()
    pi, a = stats.norm.pdf(xn), special.expit(1.5 * np.sin(2 * xn) - 0.5)
    np.testing.assert_allclose(got.numpy(), np.log(q_T(5, pi, a, z_s.item())), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, lars.log_prob_given_z(x, z_s)[0], rtol=1e-13, atol=1e-13)


def constant_lars(**kwargs) -> LARS:
    return LARS(Normal(1), oracles.ConstantLogit(0.1), T=100, num_z_samples=16, **kwargs).double()


def test_evaluation_in_training_mode_uses_the_evaluation_z_and_keeps_the_pending_z_s():
    """The issue's case: after a training step (training mode, Z_ema = 0.5, Z_s pending), the
    log-density of a = 0.1 everywhere is log pi exactly; the training Z would be 1.6 nats off."""
    lars = constant_lars(num_z_eval_samples=1000)
    lars.train()
    x = torch.randn(8, 1, dtype=torch.float64) * 2
    log_pi = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0])
    training_estimate, diagnostics = lars.bound_and_diagnostics(x)
    z_s = 0.99 * 0.5 + 0.01 * 0.1
    assert diagnostics["z"].item() == pytest.approx(z_s, rel=1e-12)
    gap = math.log(0.1 * (1 - (1 - z_s) ** 99) / z_s + (1 - z_s) ** 99)  # the training Z's error
    torch.testing.assert_close(training_estimate, log_pi + gap, rtol=0, atol=1e-12)
    assert gap < -1.5
    pending = lars._pending_z_s
    for s in (1, 3, 1000):
        torch.testing.assert_close(lars.log_prob_lower_bound(x, num_samples=s), log_pi, rtol=0, atol=1e-12)
    torch.testing.assert_close(lars.log_prob_replicas(x, 2), log_pi.expand(2, 8), rtol=0, atol=1e-12)
    assert lars.training and lars._pending_z_s is pending  # the optimiser step's update is intact
    lars.update_z_ema()
    assert lars.z_ema.item() == pytest.approx(z_s, rel=1e-12)


def test_evaluation_z_is_cached_until_a_parameter_changes_not_when_the_mode_flips(caplog):
    lars = constant_lars(num_z_eval_samples=1000, z_eval_chunk_size=300)
    estimates = []
    real = lars.estimate_z
    lars.estimate_z = lambda *a, **k: estimates.append(1) or real(*a, **k)
    x = torch.randn(5, 1, dtype=torch.float64)
    log_pi = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0])
    with caplog.at_level(logging.INFO, logger="eim_lightning"):
        lars.log_prob_lower_bound(x)
    assert len(estimates) == 1 and lars.z_eval.item() == pytest.approx(0.1, rel=1e-12)
    assert "from 1000 proposal samples in" in caplog.text  # its cost is logged
    for mode in (False, True, False):
        lars.train(mode)
        lars.log_prob_lower_bound(x)
        lars.bound_and_diagnostics(x)
    assert len(estimates) == 1
    # an optimiser step (fused Adam leaves the parameters' version counters alone) makes it stale
    optimizer = torch.optim.Adam(lars.parameters(), lr=0.5, fused=True)
    lars.accept_logit.b.grad = torch.ones((), dtype=torch.float64)
    optimizer.step()
    a_new = torch.sigmoid(lars.accept_logit.b).item()
    assert abs(a_new - 0.1) > 0.01
    assert math.isnan(lars.state_dict()["z_eval"].item())  # a stale estimate is not checkpointed
    torch.testing.assert_close(lars.log_prob_lower_bound(x, 3), log_pi, rtol=0, atol=1e-12)  # exact with the new Z
    assert len(estimates) == 2 and lars.z_eval.item() == pytest.approx(a_new, rel=1e-12)
    # so does a changed proposal or data mean
    with torch.no_grad():
        lars.data_mean.fill_(0.5)
    lars.log_prob_lower_bound(x)
    with torch.no_grad():
        lars.proposal.loc.fill_(0.5)
    lars.log_prob_lower_bound(x)
    assert len(estimates) == 4


# -- state ---------------------------------------------------------------------------------------


def test_z_ema_and_z_eval_survive_a_state_dict_round_trip(tmp_path):
    lars = make_lars(num_z_samples=16, num_z_eval_samples=5000, z_eval_chunk_size=1000)
    lars.train()
    for _ in range(2):
        lars.training_z()
        lars.update_z_ema()
    lars.eval()
    z_eval = lars.evaluation_z().clone()
    z_ema = lars.z_ema.clone()
    assert z_ema.item() != 0.5 and bool(torch.isfinite(z_eval))
    torch.save(lars.state_dict(), tmp_path / "lars.pt")
    fresh = make_lars(num_z_samples=16, num_z_eval_samples=5000, z_eval_chunk_size=1000)
    assert fresh.z_ema.item() == 0.5 and math.isnan(fresh.z_eval.item())
    fresh.load_state_dict(torch.load(tmp_path / "lars.pt"))
    fresh.eval()
    assert fresh.z_ema.item() == z_ema.item() and fresh.z_eval.item() == z_eval.item()
    # evaluation uses the restored estimate: no new Monte Carlo run
    x = torch.randn(4, 1, dtype=torch.float64)
    torch.manual_seed(123)
    a = fresh.log_prob_lower_bound(x)
    torch.manual_seed(456)
    b = fresh.log_prob_lower_bound(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, fresh.log_prob_given_z(x, z_eval)[0], rtol=0, atol=0)


# -- clear errors --------------------------------------------------------------------------------


def test_context_is_rejected():
    lars = make_lars()
    x = torch.zeros(3, 1, dtype=torch.float64)
    ctx = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="LARS is unconditional"):
        lars.log_prob_lower_bound(x, context=ctx)
    with pytest.raises(ValueError, match="LARS is unconditional"):
        lars.sample(4, context=ctx)


@pytest.mark.parametrize("T", [0, -2, 1.5])
def test_bad_T_raises(T):
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        LARS(Normal(1), SinLogit(), T=T)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="z_ema_rate must be in"):
        LARS(Normal(1), SinLogit(), T=3, z_ema_rate=0.0)
    with pytest.raises(ValueError, match="num_z_eval_samples must be an integer >= 1"):
        LARS(Normal(1), SinLogit(), T=3, num_z_eval_samples=0)


BAD_INPUTS = [
    (lambda: torch.zeros(4, dtype=torch.float64), ValueError, r"expected input of shape \[B, 1\]"),
    (lambda: torch.zeros(4, 2, dtype=torch.float64), ValueError, r"expected input of shape \[B, 1\]"),
    (lambda: torch.zeros(4, 1, dtype=torch.int64), TypeError, "floating-point"),
    (
        lambda: torch.zeros(4, 1, dtype=torch.float32),
        TypeError,
        "float64 parameters but got input of dtype torch.float32",
    ),
    (lambda: torch.tensor([[math.nan]], dtype=torch.float64), ValueError, "non-finite"),
    (lambda: torch.tensor([[math.inf]], dtype=torch.float64), ValueError, "non-finite"),
]


@pytest.mark.parametrize("make_x,error,match", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(make_x, error, match):
    lars = make_lars()
    with pytest.raises(error, match=match):
        lars.log_prob_lower_bound(make_x())
    with pytest.raises(error, match=match):
        lars.bound_and_diagnostics(make_x())


def test_training_diagnostics_report_the_fraction_of_saturated_acceptances():
    """``saturated`` is the fraction of the step's Z samples with a > 0.99: 0 for a = 0.5, 1 for a
    = sigmoid(10), and exactly the share of samples beyond the threshold for a step function."""
    from eim_lightning.densities import LARS as LARSDensity
    from eim_lightning.densities import Normal

    class Threshold(torch.nn.Module):  # logit 10 (a > 0.99) where x_0 > 0, else 0 (a = 0.5)
        def forward(self, x):
            return torch.where(x[..., :1] > 0, 10.0, 0.0)

    lars = LARSDensity(Normal(2), Threshold(), T=8, num_z_samples=20_000)
    lars.train()
    x = torch.randn(4, 2)
    torch.manual_seed(0)
    _, diagnostics = lars.bound_and_diagnostics(x)
    torch.manual_seed(0)
    share = (Normal(2).rsample(20_000)[:, 0] > 0).float().mean()
    assert diagnostics["saturated"].item() == pytest.approx(share.item(), abs=1e-6)
    assert 0.48 < share.item() < 0.52
    _, none = lars.bound_and_diagnostics(x, diagnostics=False)
    assert none == {}


@pytest.mark.parametrize("reparameterized", [True, False])
def test_gradient_of_z_reaches_the_proposal_only_through_reparameterised_samples(reparameterized):
    # pi = N(loc, 1) with a learnable loc, a = sigmoid(1.5 sin 2x - 0.5). d/dloc sum_b log q_T(x_b) is
    # sum_b (x_b - loc) / s^2 plus, only for reparameterised samples z_j = loc + s eps_j, the Z term
    # sum_b dlog q_T(x_b)/dZ * mean_j a'(z_j), a' = a (1 - a) 3 cos 2z, at the smoothed Z_s
    T, S, loc = 5, 64, 0.25  # loc exact in float32, where Normal builds it
    lars = LARS(
        Normal(1, loc=loc, learnable=True), SinLogit(), T=T, num_z_samples=S, reparameterize_z_samples=reparameterized
    )
    lars = lars.double().train()
    x = torch.tensor([[-1.0], [0.2], [1.7]], dtype=torch.float64)
    torch.manual_seed(3)
    zs = lars.proposal.sample(S)[:, 0].numpy()  # the draws training_z makes after the same seed
    torch.manual_seed(3)
    lars.bound_and_diagnostics(x)[0].sum().backward()
    z_s = lars._pending_z_s.item()
    xn = x[:, 0].numpy()
    a_x = special.expit(1.5 * np.sin(2 * xn) - 0.5)
    geo = sum((1 - z_s) ** t for t in range(T - 1))
    d_geo = sum(-t * (1 - z_s) ** (t - 1) for t in range(1, T - 1))
    d_log_q_dz = (a_x * d_geo - (T - 1) * (1 - z_s) ** (T - 2)) / (a_x * geo + (1 - z_s) ** (T - 1))
    a_z = special.expit(1.5 * np.sin(2 * zs) - 0.5)
    d_z_dloc = float(np.mean(a_z * (1 - a_z) * 3 * np.cos(2 * zs)))
    s = lars.proposal.scale.item()  # 1 up to float32 rounding of its softplus parameter
    expected = float(np.sum(xn - loc)) / s**2 + (float(d_log_q_dz.sum()) * d_z_dloc if reparameterized else 0.0)
    assert lars.proposal.loc.grad.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert abs(float(d_log_q_dz.sum()) * d_z_dloc) > 1e-3  # the Z term is not negligible here
