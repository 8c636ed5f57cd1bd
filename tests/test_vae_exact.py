r"""Every VAE bound and every pixel-space EIM with a VAE proposal against the exact log-likelihood
of its model, on a problem small enough to compute it: 4 binary pixels (16 states, enumerated),
a 1-d latent (quadrature), float64.

Exact densities (oracles written from the samplers' definitions, not from the code under test):

* VAE marginal:  p(x) = ∫ p(x|z) p(z) dz on a grid over z;
* SNIS prior, K = 2:  q(z) = π(z) ∫ π(z') 2 σ(U(z) - U(z')) dz'  (2-d quadrature);
* TRS / LARS prior, T = 3:  q(z) = π(z) [a(z)(1 + (1-Z)) + (1-Z)^2],  Z = ∫ π a  (LARS with this exact Z);
* HIS prior:  p(x) = ∫∫ π(z_0) N(ρ_0) p(x | z_T(z_0, ρ_0)) dz_0 dρ_0 through the *forward* leapfrog;
* pixel-space SNIS, K = 3:
  q(x) = π(x) Σ_{x'_1, x'_2} π(x'_1) π(x'_2) 3 e^{U(x)} / (e^{U(x)} + e^{U(x'_1)} + e^{U(x'_2)});
* pixel-space TRS / LARS, T = 3:  q(x) = π(x)[a(x)(2 - Z) + (1-Z)^2],  Z = Σ_x π(x) a(x).

Claims: the mean of R one-sample bounds is at most log p(x) (within 4 standard errors), for
every model and all 16 states; for the models whose one-sample estimate is unbiased (all but
TRS; HIS, whose weights are too heavy-tailed at this R, is checked against its own sampler
instead), the mean of exp(bound - log p(x)) is 1 within 4 standard errors (so the oracle and
the bound agree, not merely bound each other); exact samples match the exact marginals
(chi-square).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from eim_lightning.densities import HIS, LARS, SNIS, TRS, VAE, Normal
from eim_lightning.integrators import leapfrog_forward
from eim_lightning.nn import MLP

D, R = 4, 2000
STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)), dtype=torch.float64)  # [16, 4]
Z_GRID = torch.linspace(-9.0, 9.0, 3601, dtype=torch.float64)
DZ = float(Z_GRID[1] - Z_GRID[0])


def _mlp(in_dim: int, out_dim: int, gain: float = 1.0) -> MLP:
    net = MLP(in_dim, [8], out_dim).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(gain)
            p.add_(0.3 * torch.randn_like(p))
    return net


def make_vae(prior=None) -> VAE:
    vae = VAE(data_dim=D, latent_dim=1, hidden_sizes=(8,), prior=prior, eval_chunk_size=R).double()
    with torch.no_grad():  # a decoder that depends strongly on z: a non-trivial marginal
        for p in vae.decoder.parameters():
            p.mul_(3.0)
    vae.eval()
    return vae


def log_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z**2 + math.log(2 * math.pi))


def log_lik_grid(vae: VAE, z: torch.Tensor) -> torch.Tensor:
    """``log p(x|z)`` for all 16 states and every z: ``[16, len(z)]``."""
    with torch.no_grad():
        logits = vae.decoder(z.unsqueeze(-1))  # [G, 4]
    return STATES @ torch.nn.functional.logsigmoid(logits).T + (1 - STATES) @ torch.nn.functional.logsigmoid(-logits).T


def marginal(vae: VAE, log_prior_grid: torch.Tensor) -> torch.Tensor:
    """``log ∫ p(x|z) q(z) dz`` for the 16 states, from ``log q`` on Z_GRID."""
    return torch.logsumexp(log_lik_grid(vae, Z_GRID) + log_prior_grid, dim=1) + math.log(DZ)


def net_values(net, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(z.unsqueeze(-1)).squeeze(-1)


def exact_snis_prior(energy) -> torch.Tensor:
    u = net_values(energy, Z_GRID)
    inner = (torch.sigmoid(u[:, None] - u[None, :]) * 2 * log_normal(Z_GRID).exp()[None, :]).sum(1) * DZ
    return log_normal(Z_GRID) + torch.log(inner)


def exact_trs_prior(logit) -> tuple[torch.Tensor, float]:
    a = torch.sigmoid(net_values(logit, Z_GRID))
    z = float((log_normal(Z_GRID).exp() * a).sum() * DZ)
    return log_normal(Z_GRID) + torch.log(a * (2 - z) + (1 - z) ** 2), z


def exact_his_marginal(vae: VAE, his: HIS) -> torch.Tensor:
    g = torch.linspace(-8.0, 8.0, 801, dtype=torch.float64)
    dg = float(g[1] - g[0])
    z0, rho0 = torch.meshgrid(g, g, indexing="ij")
    z0, rho0 = z0.reshape(-1, 1), rho0.reshape(-1, 1)
    grad = his._grad_fn(None, create_graph=False)
    with torch.no_grad():
        zT, _ = leapfrog_forward(z0, rho0, grad, his.step_size, his.alphas)
    log_w = (log_normal(z0) + log_normal(rho0)).squeeze(-1)
    return torch.logsumexp(log_lik_grid(vae, zT.squeeze(-1)) + log_w, dim=1) + 2 * math.log(dg)


def replicas(density, x: torch.Tensor, r: int = R) -> torch.Tensor:
    with torch.no_grad():
        return density.log_prob_replicas(x, r)  # [r, 16]


def check_lower_bound(values: torch.Tensor, exact: torch.Tensor, unbiased: bool) -> None:
    """Mean one-sample bound <= exact (4 SE); for unbiased estimators, mean exp = exact (4 SE)."""
    r = values.shape[0]
    mean, se = values.mean(0), values.std(0) / math.sqrt(r)
    assert bool((mean <= exact + 4 * se + 1e-9).all()), (mean - exact, se)
    assert bool((mean < exact).any())  # a bound with a gap somewhere: not trivially the oracle itself
    if unbiased:
        w = torch.exp(values - exact)
        w_mean, w_se = w.mean(0), w.std(0) / math.sqrt(r)
        assert bool(((w_mean - 1).abs() <= 4 * w_se + 1e-3).all()), (w_mean, w_se)


# -- priors ---------------------------------------------------------------------------------------


def test_exact_marginal_is_a_distribution_over_the_16_states():
    vae = make_vae()
    exact = marginal(vae, log_normal(Z_GRID))
    assert float(exact.exp().sum()) == pytest.approx(1.0, abs=1e-8)
    assert float(exact.exp().max()) > 0.2  # far from uniform (1/16): the decoder matters


def test_gaussian_prior_bound():
    vae = make_vae()
    check_lower_bound(replicas(vae, STATES), marginal(vae, log_normal(Z_GRID)), unbiased=True)


def test_snis_prior_bound():
    energy = _mlp(1, 1, gain=2.0)
    vae = make_vae(SNIS(Normal(1).double(), energy, num_proposals=2))
    log_q = exact_snis_prior(energy)
    assert float(log_q.exp().sum() * DZ) == pytest.approx(1.0, abs=1e-6)
    exact = marginal(vae, log_q)
    assert float((exact - marginal(vae, log_normal(Z_GRID))).abs().max()) > 0.05  # the prior matters
    check_lower_bound(replicas(vae, STATES), exact, unbiased=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["trs", "lars"])
def test_trs_and_lars_prior_bounds(kind):
    logit = _mlp(1, 1, gain=2.0)
    log_q, z = exact_trs_prior(logit)
    assert float(log_q.exp().sum() * DZ) == pytest.approx(1.0, abs=1e-6)
    if kind == "trs":
        vae = make_vae(TRS(Normal(1).double(), logit, T=3))
    else:
        vae = make_vae(LARS(Normal(1).double(), logit, T=3))
        vae.prior.set_evaluation_z(z)  # LARS with its exact Z (its estimate is not a bound otherwise)
    exact = marginal(vae, log_q)
    assert float((exact - marginal(vae, log_normal(Z_GRID))).abs().max()) > 0.05
    check_lower_bound(replicas(vae, STATES), exact, unbiased=(kind == "lars"))


@pytest.mark.slow
def test_his_prior_bound():
    """HIS's importance weights with an untrained r(rho_T | z_T) are too heavy-tailed for a
    mean-of-exp check at this R, so the oracle is checked against the HIS sampler instead: the
    Monte Carlo marginal (1/n) sum_i p(x | z_i), z_i ~ HIS, agrees with the quadrature."""
    his = HIS(Normal(1).double(), _mlp(1, 1, gain=2.0), _mlp(1, 2), T=2, step_size_init=0.5, alpha_init=0.9)
    vae = make_vae(his)
    exact = exact_his_marginal(vae, his)
    assert float(exact.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    assert float((exact - marginal(vae, log_normal(Z_GRID))).abs().max()) > 0.05
    n = 100_000
    p = log_lik_grid(vae, his.sample(n).squeeze(-1)).exp()  # [16, n]
    assert torch.allclose(p.mean(1), exact.exp(), rtol=0, atol=float(4 * p.std(1).max() / math.sqrt(n)))
    check_lower_bound(replicas(vae, STATES), exact, unbiased=False)


# -- EIMs in pixel space with a VAE proposal -----------------------------------------------------


def pixel_energy() -> MLP:
    return _mlp(D, 1, gain=2.0)


def test_pixel_snis_with_vae_proposal():
    vae = make_vae()
    log_pi = marginal(vae, log_normal(Z_GRID))
    energy = pixel_energy()
    snis = SNIS(vae, energy, num_proposals=3, eval_chunk_size=R).double().eval()
    u = net_values(lambda s: energy(s.squeeze(-1)), STATES)  # [16]
    pi = log_pi.exp()
    # q(x) = pi(x) sum_{a,b} pi(a) pi(b) 3 e^{U(x)} / (e^{U(x)} + e^{U(a)} + e^{U(b)})
    denom = u.exp()[:, None, None] + u.exp()[None, :, None] + u.exp()[None, None, :]
    ratio = (3 * u.exp()[:, None, None] / denom * pi[None, :, None] * pi[None, None, :]).sum((1, 2))
    exact = log_pi + torch.log(ratio)
    assert float(exact.exp().sum()) == pytest.approx(1.0, abs=1e-10)
    check_lower_bound(replicas(snis, STATES), exact, unbiased=True)
    # exact samples of the pixel-space SNIS model follow q (chi-square over the 16 states)
    counts = _state_counts(snis.sample(20_000))
    assert stats.chisquare(counts, exact.exp().numpy() * 20_000).pvalue > 1e-3
    assert stats.chisquare(counts, pi.numpy() * 20_000).pvalue < 1e-6  # power: q differs from pi


@pytest.mark.parametrize("kind", ["trs", "lars"])
def test_pixel_trs_and_lars_with_vae_proposal(kind):
    vae = make_vae()
    log_pi = marginal(vae, log_normal(Z_GRID))
    logit = pixel_energy()
    a = torch.sigmoid(net_values(lambda s: logit(s.squeeze(-1)), STATES))
    z = float((log_pi.exp() * a).sum())
    exact = log_pi + torch.log(a * (2 - z) + (1 - z) ** 2)
    assert float(exact.exp().sum()) == pytest.approx(1.0, abs=1e-10)
    if kind == "trs":
        model = TRS(vae, logit, T=3, eval_chunk_size=R).double().eval()
    else:
        model = LARS(vae, logit, T=3, eval_chunk_size=R).double().eval()
        model.set_evaluation_z(z)
    check_lower_bound(replicas(model, STATES), exact, unbiased=(kind == "lars"))


def _state_counts(samples: torch.Tensor) -> np.ndarray:
    assert bool(((samples == 0) | (samples == 1)).all())
    index = (samples * (2 ** torch.arange(D - 1, -1, -1, dtype=samples.dtype))).sum(-1).long()
    return np.bincount(index.numpy(), minlength=2**D)


def test_vae_samples_and_rsamples_follow_the_exact_marginal():
    vae = make_vae()
    expected = marginal(vae, log_normal(Z_GRID)).exp().numpy() * 20_000
    assert stats.chisquare(_state_counts(vae.sample(20_000)), expected).pvalue > 1e-3
    assert stats.chisquare(_state_counts(vae.rsample(20_000).detach()), expected).pvalue > 1e-3
    uniform = np.full(16, 20_000 / 16)
    assert stats.chisquare(_state_counts(vae.sample(20_000)), uniform).pvalue < 1e-6  # power
