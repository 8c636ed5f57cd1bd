"""Ranking NCE is SNIS maximum likelihood (ALGORITHMS.md 4): the K-way classification loss and its
gradient equal the negative SNIS bound's up to log pi(x) + log K, K = 2 is logistic regression,
and the fitted model is the SNIS density with the same K (sampled by SNIS, not the EBM pi e^U / Z)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.nn.functional import softplus

from datamodules import Toy2DDataModule
from eim_lightning import RankingNCE
from eim_lightning import densities as D
from eim_lightning.nn import MLP

DT = torch.float64


@pytest.mark.parametrize("share", [True, False])
def test_loss_and_gradient_equal_the_snis_bound_up_to_constants(share):
    torch.manual_seed(0)
    module = RankingNCE(data_dim=2, num_classes=8, hidden_sizes=[16], share_noise=share).double()
    snis = module.density
    assert isinstance(snis, D.SNIS) and snis.num_proposals == 8 and snis.share_proposal_samples == share
    assert not any(p.requires_grad for p in snis.proposal.parameters())
    x = torch.randn(6, 2, dtype=DT) * 1.5
    energy_params = list(snis.energy.parameters())
    torch.manual_seed(3)
    bound, diagnostics = module.training_bound(x)
    (g_nce,) = [torch.autograd.grad((-bound).mean(), energy_params)]
    torch.manual_seed(3)
    snis_bound, _ = snis.bound_and_diagnostics(x)
    (g_snis,) = [torch.autograd.grad((-snis_bound).mean(), energy_params)]
    torch.testing.assert_close(bound, snis_bound, atol=1e-12, rtol=0)
    for a, b in zip(g_nce, g_snis):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    # the cross-entropy itself: L_SNIS - log pi(x) - log K, and the loss the optimiser sees
    torch.manual_seed(3)
    loss = module.nce_loss(x, module.noise_samples(x.shape[0]))
    expected = -(snis_bound - snis.proposal.log_prob(x) - math.log(8))
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(diagnostics["nce_loss"], expected.mean(), atol=1e-12, rtol=0)
    torch.manual_seed(3)
    loss_grads = torch.autograd.grad(module.nce_loss(x, module.noise_samples(6)).mean(), energy_params)
    for a, b in zip(loss_grads, g_snis):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_two_way_ranking_nce_is_logistic_regression_on_the_energy_difference():
    module = RankingNCE(data_dim=2, num_classes=2, hidden_sizes=[8], share_noise=False).double()
    x, noise = torch.randn(5, 2, dtype=DT), torch.randn(1, 5, 2, dtype=DT)
    u = module.density.log_weight
    torch.testing.assert_close(module.nce_loss(x, noise), softplus(u(noise[0]) - u(x)), atol=1e-13, rtol=0)


class SinEnergy(nn.Module):
    def forward(self, x):
        return 1.5 * torch.sin(2 * x[..., 0])


def _cdf(log_density: np.ndarray, grid: np.ndarray):
    dens = np.exp(log_density - log_density.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    return lambda v: np.interp(v, grid, cdf)


def test_samples_come_from_snis_with_the_same_K_not_from_the_ebm():
    """K = 2: q_2(x) = pi(x) E_{x'~pi}[2 e^{U(x)} / (e^{U(x)} + e^{U(x')})] by quadrature. The
    module's samples pass a KS test against it and fail one against pi e^U / Z."""
    K = 2
    module = RankingNCE(data_dim=1, num_classes=K, energy=SinEnergy()).double()
    samples = module.density.sample(20_000)[:, 0].numpy()
    grid = np.linspace(-8, 8, 4001)
    log_pi, u = stats.norm.logpdf(grid), 1.5 * np.sin(2 * grid)
    pi_w = np.exp(log_pi) * np.gradient(grid)  # quadrature weights of x' ~ pi
    ratio = (2 * np.exp(u)[:, None] / (np.exp(u)[:, None] + np.exp(u)[None, :]) * pi_w[None, :]).sum(
        1
    )  # x' on the grid
    q_k = _cdf(log_pi + np.log(ratio), grid)
    ebm = _cdf(log_pi + u, grid)
    assert stats.kstest(samples, q_k).pvalue > 1e-3
    assert stats.kstest(samples, ebm).pvalue < 1e-6


def test_module_trains_logs_and_rebuilds_from_its_hyperparameters(make_trainer):
    module = RankingNCE(data_dim=2, num_classes=16, hidden_sizes=[8], num_val_samples=2, num_test_samples=2, lr=1e-2)
    proposal_before = [p.clone() for p in module.density.proposal.buffers()]
    trainer = make_trainer(max_steps=4, log_every_n_steps=1)
    trainer.fit(
        module, datamodule=Toy2DDataModule("nine_gaussians", steps_per_epoch=4, val_size=100, eval_batch_size=100)
    )
    for key in ("train/bound_step", "train/nce_loss", "train/nce_accuracy", "val/bound"):
        assert math.isfinite(trainer.callback_metrics[key].item()), key
    assert all(torch.equal(a, b) for a, b in zip(proposal_before, module.density.proposal.buffers()))
    rebuilt = RankingNCE(**module.hparams)
    assert rebuilt.density.num_proposals == 16 and rebuilt.lr == 1e-2
    with pytest.raises(ValueError, match="num_proposals"):
        RankingNCE(num_classes=0)


def test_a_learnable_proposal_is_frozen():
    module = RankingNCE(data_dim=2, num_classes=4, proposal=D.Normal(2, learnable=True), energy=MLP(2, [4], 1))
    assert all(not p.requires_grad for p in module.density.proposal.parameters())
    assert all(p.requires_grad for p in module.density.energy.parameters())
