r"""HIS (ALGORITHMS.md 2.3) against an independent integrator, autograd Jacobians and a 1-D oracle.

The oracle: the tempered leapfrog map (x_0, rho_0) -> (x_T, rho_T) is a bijection with unit
Jacobian, so the joint density of (x_T, rho_T) is pi(x_0) N(rho_0; 0, 1) at its pre-image, and in
one dimension the model density is the single integral

    q_HIS(x_T) = int pi(x_0(x_T, rho_T)) N(rho_0(x_T, rho_T); 0, 1) d rho_T,

computed on a grid with a reference inverse written here from the formulas (not the library's).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import trapezoid

import oracles
from eim_lightning.densities import HIS, Normal
from eim_lightning.integrators import initial_scaling, leapfrog_forward, leapfrog_reverse
from eim_lightning.nn import MLP

X_GRID = np.linspace(-10.0, 10.0, 401)
RHO_GRID = np.linspace(-12.0, 12.0, 481)


def grad_of(potential, create_graph: bool = False):
    """``x -> grad E(x)`` by autograd (differentiable when ``create_graph``)."""

    def grad(x):
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(potential(x).sum(), x, create_graph=create_graph)
        return g

    return grad


def reference_forward(x, rho, grad, eps, alphas):
    """ALGORITHMS.md 2.3, written out: scale by alpha_0, then T tempered leapfrog steps."""
    rho = rho / torch.prod(alphas)
    for a in alphas:
        rho = rho - eps / 2 * grad(x)
        x = x + eps * rho
        rho = rho - eps / 2 * grad(x)
        rho = a * rho
    return x, rho


def reference_reverse(x, rho, grad, eps, alphas):
    """The inverse of :func:`reference_forward`, step by step in reverse order."""
    for a in reversed(list(alphas)):
        rho = rho / a
        rho = rho + eps / 2 * grad(x)
        x = x - eps * rho
        rho = rho + eps / 2 * grad(x)
    return x, rho * torch.prod(alphas)


def make_his(
    dim: int = 1,
    T: int = 5,
    momentum: bool = True,
    seed: int = 1,
    step: float = 0.25,
    alpha: float = 0.97,
    learnable_proposal: bool = False,
) -> HIS:
    """A random tanh-MLP potential and a random momentum net whose scale stays near 1.7."""
    torch.manual_seed(seed)
    potential = MLP(dim, [16], 1)
    momentum_net = None
    if momentum:
        momentum_net = MLP(dim, [16], 2 * dim)
        # r(rho_T|x_T) broader than the sampler's posterior over rho_T (softplus(1.5) = 1.7), so the
        # importance weights exp(l) are light-tailed and their Monte Carlo errors trustworthy
        with torch.no_grad():
            momentum_net.net[-1].weight.mul_(0.3)
            momentum_net.net[-1].bias.copy_(torch.cat([torch.zeros(dim), torch.full((dim,), 1.5)]))
    proposal = Normal(dim, learnable=learnable_proposal)
    return HIS(proposal, potential, momentum_net, T=T, step_size_init=step, alpha_init=alpha).double()


@functools.cache
def oracle_density(T: int = 5) -> np.ndarray:
    """Exact q_HIS on X_GRID for ``make_his(1, T)`` (rho_T integrated out on RHO_GRID)."""
    his = make_his(1, T)
    eps, alphas = his.step_size.detach(), his.alphas.detach()
    x = torch.from_numpy(np.repeat(X_GRID, len(RHO_GRID))).unsqueeze(-1)
    rho = torch.from_numpy(np.tile(RHO_GRID, len(X_GRID))).unsqueeze(-1)
    with torch.no_grad():
        x0, rho0 = reference_reverse(x, rho, grad_of(his.potential), eps, alphas)
    std = torch.distributions.Normal(0.0, 1.0)
    joint = torch.exp(std.log_prob(x0) + std.log_prob(rho0))[:, 0].reshape(len(X_GRID), len(RHO_GRID))
    return trapezoid(joint.numpy(), RHO_GRID, axis=1)


def chisquare_pvalue(samples: np.ndarray, density: np.ndarray, bins: int = 40) -> float:
    return oracles.chisquare_pvalue(samples, density, X_GRID, bins)


def random_dynamics(dim: int = 2, T: int = 4, seed: int = 3):
    torch.manual_seed(seed)
    potential = MLP(dim, [16], 1).double()
    eps = (0.1 + 0.3 * torch.rand(dim)).double()
    alphas = (0.8 + 0.2 * torch.rand(T)).double()
    return potential, eps, alphas


# -- the integrator -----------------------------------------------------------------------------


def test_leapfrog_forward_matches_the_reference_and_reverse_inverts_it():
    potential, eps, alphas = random_dynamics()
    x, rho = torch.randn(50, 2, dtype=torch.float64), torch.randn(50, 2, dtype=torch.float64)
    grad = grad_of(potential)
    xT, rhoT = leapfrog_forward(x, rho, grad, eps, alphas)
    ref_x, ref_rho = reference_forward(x, rho, grad, eps, alphas)
    torch.testing.assert_close(xT, ref_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rhoT, ref_rho, rtol=1e-12, atol=1e-12)
    assert (xT - x).abs().max() > 0.1  # the dynamics really move
    x0, rho0 = leapfrog_reverse(xT, rhoT, grad, eps, alphas)
    torch.testing.assert_close(x0, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(rho0, rho, rtol=0, atol=1e-10)
    # T = 0 is the identity both ways
    empty = alphas[:0]
    for fn in (leapfrog_forward, leapfrog_reverse):
        out = fn(x, rho, grad, eps, empty)
        torch.testing.assert_close(out[0], x, rtol=0, atol=0)
        torch.testing.assert_close(out[1], rho, rtol=0, atol=0)


def test_full_map_has_unit_jacobian_determinant():
    potential, eps, alphas = random_dynamics()
    grad = grad_of(potential, create_graph=True)

    def full_map(state):
        xT, rhoT = leapfrog_forward(state[:2], state[2:], grad, eps, alphas)
        return torch.cat([xT, rhoT])

    for _ in range(3):
        state = torch.randn(4, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(full_map, state)
        assert torch.linalg.det(jac).item() == pytest.approx(1.0, abs=1e-10)
        assert (jac - torch.eye(4, dtype=torch.float64)).abs().max() > 0.1  # not trivially the identity
        # without the alpha_0 scaling the volume would shrink by prod(alpha)^D
        rescaled = jac[:, 2:] * torch.prod(alphas)
        assert abs(torch.linalg.det(torch.cat([jac[:, :2], rescaled], 1)).item() - 1.0) > 0.1


def test_initial_scaling_makes_the_product_of_all_alphas_one():
    torch.manual_seed(0)
    for alphas in (torch.rand(7, dtype=torch.float64) * 0.5 + 0.5, torch.full((1000,), 0.9995, dtype=torch.float64)):
        assert (initial_scaling(alphas) * torch.prod(alphas)).item() == pytest.approx(1.0, abs=1e-12)
    assert initial_scaling(torch.zeros(0, dtype=torch.float64)).item() == 1.0
    his = make_his(2)
    assert (initial_scaling(his.alphas) * his.alphas.prod()).item() == pytest.approx(1.0, abs=1e-14)


# -- T = 0: the proposal -------------------------------------------------------------------------


def test_T0_without_momentum_net_is_exactly_log_pi():
    his = make_his(2, T=0, momentum=False)
    x = torch.randn(25, 2, dtype=torch.float64) * 2
    log_pi = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    for S in (1, 10):
        torch.testing.assert_close(his.log_prob_lower_bound(x, S), log_pi, rtol=0, atol=1e-13)


def test_T0_with_learned_momentum_is_unbiased_for_pi_and_samples_pi():
    his = make_his(2, T=0)
    x = torch.tensor([[0.0, 0.0], [1.0, -0.5], [-1.5, 0.3], [0.4, 2.0]], dtype=torch.float64)
    R = 20_000
    with torch.no_grad():
        est = his.log_prob_replicas(x, R).exp().numpy()
    pi = np.exp(torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1).numpy())
    se = est.std(0, ddof=1) / math.sqrt(R)
    assert np.all(np.abs(est.mean(0) - pi) < 5 * se), (est.mean(0), pi, se)
    assert np.all(est.std(0) > 0.05 * pi)  # r is not N(0, I): the estimate is genuinely random
    samples = his.sample(20_000)
    assert samples.shape == (20_000, 2)
    for d in range(2):
        assert stats.kstest(samples[:, d].numpy(), stats.norm.cdf).pvalue > 1e-3


# -- T = 5 in one dimension: the exact density ---------------------------------------------------


def test_oracle_is_a_density_and_differs_from_the_proposal():
    q = oracle_density()
    assert trapezoid(q, X_GRID) == pytest.approx(1.0, abs=1e-7)
    assert np.abs(q - stats.norm.pdf(X_GRID)).max() > 0.1


def test_exp_lower_bound_is_unbiased_for_the_density_and_integrates_to_one():
    his = make_his(1)
    q = oracle_density()
    R, every = 2000, 4
    grid = X_GRID[::every]
    with torch.no_grad():
        est = his.log_prob_replicas(torch.from_numpy(grid).unsqueeze(-1), R).exp().numpy()  # [R, G]
    mean, sd = est.mean(0), est.std(0, ddof=1)
    se = sd / math.sqrt(R)
    inner = np.abs(grid) < 6
    ess = est.sum(0) ** 2 / (est**2).sum(0)
    assert ess[inner].min() > 20  # weights light-tailed enough for the normal approximation below
    z = (mean - q[::every])[inner] / se[inner]
    assert np.abs(z).max() < 5, np.abs(z).max()
    weights = np.gradient(grid)
    se_int = math.sqrt(((weights * sd) ** 2).sum() / R)  # the grid points' estimates are independent
    assert abs(mean @ weights - 1.0) < 5 * se_int, (mean @ weights, se_int)
    assert se_int < 0.01


def test_sample_matches_the_density():
    his = make_his(1)
    x = his.sample(20_000)
    assert x.shape == (20_000, 1) and not x.requires_grad
    x = x[:, 0].numpy()
    assert chisquare_pvalue(x, oracle_density()) > 1e-3
    assert chisquare_pvalue(x, stats.norm.pdf(X_GRID)) < 1e-6  # power


def test_upper_bound_at_the_samplers_own_momentum_and_lower_bound_at_fresh_momentum():
    his = make_his(1)
    q = oracle_density()
    h = trapezoid(q * np.log(np.maximum(q, 1e-300)), X_GRID)  # E_q[log q]
    n = 20_000
    with torch.no_grad():
        xT, upper = his.rsample_and_log_prob_upper_bound(n)
        lower = his.log_prob_lower_bound(xT).numpy()
    assert xT.shape == (n, 1) and upper.shape == (n,)
    upper = upper.numpy()
    se_u, se_l = upper.std(ddof=1) / math.sqrt(n), lower.std(ddof=1) / math.sqrt(n)
    assert upper.mean() > h - 5 * se_u, (upper.mean(), h, se_u)
    assert lower.mean() < h + 5 * se_l, (lower.mean(), h, se_l)
    assert upper.mean() - lower.mean() > 10 * math.hypot(se_u, se_l)
    # the samples returned with the upper bound are the model's samples
    assert chisquare_pvalue(xT[:, 0].numpy(), q) > 1e-3


# -- inference mode, gradients -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_bounds_are_computable_without_grad_mode_and_equal_the_grad_mode_values(mode):
    his = make_his(2)
    context_manager = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    x = torch.randn(8, 2, dtype=torch.float64)
    torch.manual_seed(5)
    ref_lower = his.log_prob_lower_bound(x, 3)
    torch.manual_seed(6)
    ref_x, ref_upper = his.rsample_and_log_prob_upper_bound(4)
    with context_manager():
        x_inner = x.clone()  # an inference tensor under inference_mode, as in Lightning's validation
        torch.manual_seed(5)
        lower = his.log_prob_lower_bound(x_inner, 3)
        torch.manual_seed(6)
        xs, upper = his.rsample_and_log_prob_upper_bound(4)
        diag = his.bound_and_diagnostics(x_inner)[1]
    assert not lower.requires_grad and not upper.requires_grad
    torch.testing.assert_close(lower, ref_lower.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(upper, ref_upper.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xs, ref_x.detach(), rtol=1e-12, atol=1e-12)
    assert diag["alpha_product"].item() == pytest.approx(0.97**5, rel=1e-6)  # raw alphas start in float32


def _directional_check(his, value_fn, seed):
    """Autograd vs a central finite difference of ``value_fn`` (seeded) along a random direction,
    separately for each parameter group."""
    groups = {
        "potential": list(his.potential.parameters()),
        "momentum_net": list(his.momentum_net.parameters()),
        "step_size": [his.raw_step_size],
        "alphas": [his.raw_alphas],
        "proposal": list(his.proposal.parameters()),
    }
    torch.manual_seed(seed)
    value = value_fn()
    params = [p for ps in groups.values() for p in ps]
    # allow_unused: the potential's output bias is a constant shift of E and never matters
    raw_grads = torch.autograd.grad(value, params, allow_unused=True)
    grads = {id(p): torch.zeros_like(p) if g is None else g for p, g in zip(params, raw_grads)}
    gen = torch.Generator().manual_seed(99)
    for name, ps in groups.items():
        assert all(torch.isfinite(grads[id(p)]).all() for p in ps), name
        assert sum(grads[id(p)].abs().sum().item() for p in ps) > 0, f"no gradient reaches {name}"
        dirs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in ps]
        analytic = sum((grads[id(p)] * d).sum().item() for p, d in zip(ps, dirs))
        h, vals = 1e-5, []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(ps, dirs):
                    p.add_(sign * h * d)
            torch.manual_seed(seed)
            with torch.no_grad():
                vals.append(value_fn().item())
            with torch.no_grad():
                for p, d in zip(ps, dirs):
                    p.sub_(sign * h * d)
        numeric = (vals[0] - vals[1]) / (2 * h)
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8), name


def test_lower_bound_gradients_reach_every_parameter_and_match_finite_differences():
    his = make_his(2, learnable_proposal=True)
    x = torch.randn(6, 2, dtype=torch.float64)
    _directional_check(his, lambda: his.log_prob_lower_bound(x).sum(), seed=21)
    bound, _ = his.bound_and_diagnostics(x)
    assert bound.requires_grad


def test_upper_bound_and_samples_are_differentiable():
    his = make_his(2, learnable_proposal=True)

    def value():
        xT, upper = his.rsample_and_log_prob_upper_bound(6)
        return upper.sum() + (xT**2).sum()

    _directional_check(his, value, seed=22)


def test_networks_see_mean_centred_input_so_the_model_is_translation_equivariant():
    # shifting the proposal and data_mean by m shifts the whole model: l_m(x + m) = l_0(x) on the
    # same random draws, which holds only if the potential *and* the momentum net see x - m
    his = make_his(2)
    mean = torch.tensor([0.75, -0.5], dtype=torch.float64)
    shifted = HIS(
        Normal(2, loc=mean), his.potential, his.momentum_net, T=5, step_size_init=0.25, alpha_init=0.97, data_mean=mean
    ).double()
    x = torch.randn(7, 2, dtype=torch.float64)
    torch.testing.assert_close(shifted.energy(x + mean), his.energy(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(
        shifted.log_unnormalized_density(x + mean), -his.potential(x)[:, 0], rtol=1e-13, atol=1e-13
    )
    torch.manual_seed(4)
    a = shifted.log_prob_lower_bound(x + mean, 3)
    torch.manual_seed(4)
    b = his.log_prob_lower_bound(x, 3)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.manual_seed(5)
    xs_a, up_a = shifted.rsample_and_log_prob_upper_bound(5)
    torch.manual_seed(5)
    xs_b, up_b = his.rsample_and_log_prob_upper_bound(5)
    torch.testing.assert_close(xs_a, xs_b + mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(up_a, up_b, rtol=1e-12, atol=1e-12)


# -- clear errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [-1, -5, 2.5])
def test_negative_T_raises(T):
    with pytest.raises(ValueError, match=r"T \(leapfrog steps\) must be an integer >= 0"):
        HIS(Normal(2), MLP(2, [4], 1), T=T)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="step_size_init must be > 0"):
        HIS(Normal(2), MLP(2, [4], 1), step_size_init=0.0)
    with pytest.raises(ValueError, match=r"alpha_init must be in \(0, 1\)"):
        HIS(Normal(2), MLP(2, [4], 1), alpha_init=1.5)
    his = HIS(Normal(2), MLP(2, [4], 1), momentum_net=MLP(2, [4], 3)).double()
    with pytest.raises(ValueError, match=r"momentum_net must map .* to \[1, 5, 4\]"):
        his.log_prob_lower_bound(torch.zeros(5, 2, dtype=torch.float64))


BAD_INPUTS = [
    (lambda: torch.zeros(4, dtype=torch.float64), ValueError, r"expected input of shape \[B, 2\]"),
    (lambda: torch.zeros(4, 3, dtype=torch.float64), ValueError, r"expected input of shape \[B, 2\]"),
    (lambda: torch.zeros(4, 2, dtype=torch.int64), TypeError, "floating-point"),
    (
        lambda: torch.zeros(4, 2, dtype=torch.float32),
        TypeError,
        "float64 parameters but got input of dtype torch.float32",
    ),
    (lambda: torch.tensor([[0.0, math.nan]], dtype=torch.float64), ValueError, "non-finite"),
    (lambda: torch.tensor([[math.inf, 0.0]], dtype=torch.float64), ValueError, "non-finite"),
]


@pytest.mark.parametrize("make_x,error,match", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(make_x, error, match):
    his = make_his(2)
    with pytest.raises(error, match=match):
        his.log_prob_lower_bound(make_x())
    with pytest.raises(error, match=match):
        his.bound_and_diagnostics(make_x())


def test_float64_into_float32_model_raises():
    with pytest.raises(TypeError, match="float32 parameters but got input of dtype torch.float64"):
        HIS(Normal(2), MLP(2, [4], 1)).log_prob_lower_bound(torch.zeros(3, 2, dtype=torch.float64))
