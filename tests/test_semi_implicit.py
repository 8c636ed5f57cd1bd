"""Semi-implicit posteriors (SIVI, IWHVI) with an SNIS reverse model, on a linear semi-implicit family
whose marginal q(z) = N(b, A A^T + s^2 I) and mixing posterior q(psi | z) are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from eim_lightning import densities as D
from eim_lightning.densities.normal import inverse_softplus
from eim_lightning.nn import MLP
from linear_gaussian_oracle import DT, model_with_diagonal_posterior

S = 0.4  # the conditional's scale


def _a_matrix():
    """A [3, 2] with orthogonal columns, so A^T A and the mixing posterior's covariance are diagonal."""
    q, _ = torch.linalg.qr(torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=DT))
    return q * torch.tensor([1.5, 0.6], dtype=DT)


A, B = _a_matrix(), torch.tensor([0.3, -0.2, 0.1], dtype=DT)


class LinearConditional(nn.Module):
    """``[psi, x] -> [A psi + b, raw(S)]``: z | psi ~ N(A psi + b, S^2 I), ignoring x."""

    def forward(self, ctx):
        loc = ctx[..., :2] @ A.T + B
        return torch.cat([loc, torch.full_like(loc, float(inverse_softplus(torch.tensor(S, dtype=DT))))], -1)


class ExactReverse(nn.Module):
    """``[z, x] -> [mean, raw std]`` of the exact q(psi | z): cov = (I + A^T A / S^2)^-1."""

    def forward(self, ctx):
        cov = torch.linalg.inv(torch.eye(2, dtype=DT) + A.T @ A / S**2)
        mean = (ctx[..., :3] - B) @ A @ cov / S**2
        std = cov.diagonal().sqrt().expand_as(mean)
        return torch.cat([mean, inverse_softplus(std)], -1)


def _family(K: int, exact_reverse: bool = False) -> D.SemiImplicit:
    conditional = D.ConditionalNormal(LinearConditional(), 3, min_scale=0.0)
    reverse = D.ConditionalNormal(ExactReverse(), 2, min_scale=0.0) if exact_reverse else None
    return D.SemiImplicit(D.Normal(2).double(), conditional, reverse, num_reverse_samples=K)


def _log_q(z):
    return torch.distributions.MultivariateNormal(B, A @ A.T + S**2 * torch.eye(3, dtype=DT)).log_prob(z)


def test_sivi_upper_bound_is_valid_and_tightens_with_k():
    """E[log (1/K) sum_k q(z|psi_k)] >= log q(z) (3 SE), decreasing in K, and near it for K = 256;
    the lower-bound replicas are an unbiased estimate of q(z) inside the log (4 SE)."""
    ctx = torch.zeros(1, 1, dtype=DT)
    n = 4000
    gaps = []
    for K in (1, 8, 256):
        torch.manual_seed(K)
        with torch.no_grad():
            z, upper = _family(K).rsample_and_log_prob_upper_bound(n, ctx)
        gap = upper[:, 0] - _log_q(z[:, 0])
        mean, se = float(gap.mean()), float(gap.std()) / math.sqrt(n)
        assert mean > -3 * se, (K, mean, se)
        gaps.append(mean)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.05, gaps
    z = torch.tensor([[0.5, -0.4, 0.2]], dtype=DT)
    with torch.no_grad():
        ratio = torch.exp(_family(8).log_prob_replicas(z, 20_000, context=ctx)[:, 0] - _log_q(z))
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(ratio.numel())


@pytest.mark.parametrize("K", [1, 5])
def test_iwhvi_with_the_exact_reverse_model_is_exact(K):
    """tau = q(psi | z): every term q(z|psi) q(psi) / tau(psi|z) equals q(z), so the bound is exact."""
    ctx = torch.zeros(4, 1, dtype=DT)
    z, upper = _family(K, exact_reverse=True).rsample_and_log_prob_upper_bound(6, ctx)
    torch.testing.assert_close(upper, _log_q(z), atol=1e-10, rtol=0)
    assert _family(K, exact_reverse=True).family == "iwhvi" and _family(K).family == "sivi"


@pytest.mark.parametrize("family", ["sivi", "iwhvi"])
def test_semi_implicit_posterior_elbo_stays_below_log_p(family):
    """As the posterior of a linear-Gaussian model (random networks), the ELBO with the semi-implicit
    upper bound is below the exact log p(x) in expectation (3 SE) for every x."""
    torch.manual_seed(1)
    model = model_with_diagonal_posterior()
    dx, dz = 3, 2
    conditional = D.ConditionalNormal(MLP(2 + dx, [8], 2 * dz).double(), dz)
    reverse = D.ConditionalNormal(MLP(dz + dx, [8], 4).double(), 2) if family == "iwhvi" else None
    posterior = D.SemiImplicit(D.Normal(2).double(), conditional, reverse, num_reverse_samples=4)
    density = D.EIMPosteriorVAE(model, posterior)
    x = model.sample(4)
    n = 3000
    with torch.no_grad():
        reps = density.log_prob_replicas(x, n)
    excess = (reps.mean(0) - model.log_prob(x)) / (reps.std(0) / math.sqrt(n))
    assert (excess < 3).all(), excess
