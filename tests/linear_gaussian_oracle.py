"""Test helpers for the unification tests: linear-Gaussian models whose exact posterior and
marginal are known, and fixed networks that turn them into encoders."""

from __future__ import annotations

import torch
from torch import nn

from eim_lightning.densities import ConditionalNormal, LinearGaussianModel
from eim_lightning.densities.normal import inverse_softplus

DT = torch.float64


def model_with_diagonal_posterior(data_dim: int = 3, scales=(1.5, 0.7), noise: float = 0.5, seed: int = 0):
    """A fixed model whose exact posterior has a diagonal covariance (orthogonal columns of W
    and isotropic noise make W^T D^-1 W diagonal), so a diagonal Gaussian encoder can be exact."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(data_dim, len(scales), generator=gen, dtype=DT))
    weight = q * torch.tensor(scales, dtype=DT)
    bias = torch.randn(data_dim, generator=gen, dtype=DT)
    return LinearGaussianModel(data_dim, len(scales), weight=weight, bias=bias, noise_scale=noise, learnable=False)


class ExactPosteriorNet(nn.Module):
    """``x -> [mean, inverse_softplus(std)]`` of the model's exact (diagonal) posterior."""

    def __init__(self, model: LinearGaussianModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        mean, cov = self.model.posterior(x)
        assert torch.allclose(cov, torch.diag(cov.diagonal()), atol=1e-12), "posterior is not diagonal"
        std = cov.diagonal().sqrt().expand_as(mean)
        return torch.cat([mean, inverse_softplus(std)], dim=-1)


class ConstantNet(nn.Module):
    """A learnable ``[mean, raw scale]`` that ignores its input (a fixed q0(z|x) for one x)."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=DT), torch.as_tensor(std, dtype=DT)
        self.out = nn.Parameter(torch.cat([mean, inverse_softplus(std)]))

    def forward(self, c):
        return self.out.expand(*c.shape[:-1], self.out.shape[0])


def exact_encoder(model: LinearGaussianModel) -> ConditionalNormal:
    return ConditionalNormal(ExactPosteriorNet(model), model.latent_dim, min_scale=0.0)


def constant_encoder(mean, std) -> ConditionalNormal:
    return ConditionalNormal(ConstantNet(mean, std), len(mean), min_scale=0.0)
