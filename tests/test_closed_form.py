"""Closed-form training gradients (``Density.closed_form_training_bound``, ``MLP.parameter_gradients``,
``bounds.lars_geometry``): each is checked against autograd of the reference implementation on
the same random draws, in float64, and against finite differences where autograd itself is
what the closed form replaces (the MLP's backward)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import quiet_trainer
from datamodules import Toy2DDataModule
from eim_lightning import LARS, SNIS, TRS
from eim_lightning import densities as D
from eim_lightning.bounds import lars_geometry, lars_log_prob
from eim_lightning.nn import DERIVATIVES, MLP


@pytest.mark.parametrize("activation", sorted(DERIVATIVES))
@pytest.mark.parametrize("output_bias", [True, False])
def test_mlp_parameter_gradients_are_the_chain_rule(activation, output_bias):
    torch.manual_seed(0)
    net = MLP(3, [5, 4], 2, activation=activation, output_bias=output_bias).double()
    h = torch.randn(7, 3, dtype=torch.float64)
    delta = torch.randn(7, 2, dtype=torch.float64)
    out, cache = net.forward_cached(h)
    assert torch.equal(out, net(h))
    with torch.no_grad():
        pairs = net.parameter_gradients(cache, delta)
    params = list(net.parameters())
    assert [id(p) for p, _ in pairs] == [id(p) for p in params]
    expected = torch.autograd.grad((net(h) * delta).sum(), params)
    for (_, got), want in zip(pairs, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # and against central differences for one weight entry (independent of autograd)
    w = params[0]
    eps = 1e-6
    with torch.no_grad():
        w[0, 0] += eps
        up = (net(h) * delta).sum()
        w[0, 0] -= 2 * eps
        down = (net(h) * delta).sum()
        w[0, 0] += eps
    assert abs(float((up - down) / (2 * eps)) - float(pairs[0][1][0, 0])) < 1e-7


def _same_draws(density, x, **kwargs):
    """(closed-form bound, grads, diagnostics) and (autograd bound, grads, diagnostics) on one draw."""
    torch.manual_seed(5)
    bound_cf, diag_cf = density.closed_form_training_bound(x, True)
    grads_cf = [p.grad.clone() for p in density.parameters()]
    for p in density.parameters():
        p.grad = None
    torch.manual_seed(5)
    bound_ag, diag_ag = density.bound_and_diagnostics(x, diagnostics=True)
    (-bound_ag.mean()).backward()
    grads_ag = [p.grad.clone() for p in density.parameters()]
    for p in density.parameters():
        p.grad = None
    return (bound_cf, grads_cf, diag_cf), (bound_ag.detach(), grads_ag, diag_ag)


def _assert_same(cf, ag, atol=1e-12):
    torch.testing.assert_close(cf[0], ag[0], rtol=1e-12, atol=atol)
    for g_cf, g_ag in zip(cf[1], ag[1]):
        torch.testing.assert_close(g_cf, g_ag, rtol=1e-10, atol=atol)
    assert cf[2].keys() == ag[2].keys()
    for key in cf[2]:
        torch.testing.assert_close(cf[2][key], ag[2][key], rtol=1e-12, atol=atol)


@pytest.mark.parametrize("activation", ["tanh", "relu", "softplus"])
def test_snis_closed_form_equals_autograd_of_its_bound(activation):
    torch.manual_seed(0)
    density = D.SNIS(D.Normal(2, loc=0.2, scale=1.5), MLP(2, [6, 5], 1, activation=activation), 33).double()
    density.data_mean.fill_(0.3)
    x = 2 * torch.randn(16, 2, dtype=torch.float64)
    cf, ag = _same_draws(density, x)
    _assert_same(cf, ag)


@pytest.mark.parametrize("z_ema", [0.5, 1e-9, 0.0, 0.999999, 1.5])
@pytest.mark.parametrize("T", [2, 64])
def test_lars_closed_form_equals_autograd_of_its_estimate_in_every_z_regime(z_ema, T):
    """Z near 0 (the series), exactly 0, near and above 1 (clamped), and ordinary."""
    torch.manual_seed(1)
    density = D.LARS(D.Normal(2), MLP(2, [6, 5], 1), T=T, num_z_samples=50).double().train()
    density.data_mean.fill_(-0.2)
    density.z_ema.fill_(z_ema)
    x = 1.5 * torch.randn(12, 2, dtype=torch.float64)
    cf, ag = _same_draws(density, x)
    _assert_same(cf, ag, atol=1e-10)
    z_s = density._pending_z_s.clone()
    density.update_z_ema()
    assert float(density.z_ema) == float(z_s)  # the moving average follows the closed-form step too


@pytest.mark.parametrize("T", [2, 3, 100, 1024])
def test_lars_geometry_is_the_z_part_of_lars_log_prob_with_its_derivative(T):
    log_a = torch.tensor([-0.2, -2.0, -9.0], dtype=torch.float64)
    for z in [0.0, 1e-12, 1e-7, 1e-5, 1e-3, 0.05, 0.5, 0.97, 1 - 1e-9, 1.0, 1.7]:
        zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        ref = lars_log_prob(torch.zeros(3, dtype=torch.float64), log_a, zt, T)
        (d_ref,) = torch.autograd.grad(ref.sum(), zt)
        log_geo, last, d_log_geo, d_last = lars_geometry(z, T)
        value = torch.logaddexp(log_a + log_geo, torch.tensor(last, dtype=torch.float64))
        t = log_a + (log_geo - last)
        torch.testing.assert_close(value, ref.detach(), rtol=1e-12, atol=1e-13)
        d_cf = float((torch.sigmoid(t) * d_log_geo + torch.sigmoid(-t) * d_last).sum())
        # near Z = 1 the reference itself loses digits: 1 - sigmoid(t) times d_last ~ -2e9
        assert math.isclose(d_cf, float(d_ref), rel_tol=1e-6 if z > 0.99 else 1e-9, abs_tol=1e-9)
    assert all(math.isnan(v) for v in lars_geometry(-0.1, T) + lars_geometry(math.nan, T))


def test_closed_form_declines_what_it_does_not_cover():
    x = torch.randn(4, 2)
    assert D.SNIS(D.Normal(2, learnable=True), MLP(2, [4], 1), 8).closed_form_training_bound(x) is None
    assert D.SNIS(D.Normal(2), MLP(2, [4], 1), 8, share_proposal_samples=False).closed_form_training_bound(x) is None
    assert D.SNIS(D.Normal(2), MLP(2, [4], 1, activation="gelu"), 8).closed_form_training_bound(x) is None
    assert D.SNIS(D.Normal(2), torch.nn.Linear(2, 1), 8).closed_form_training_bound(x) is None
    assert D.LARS(D.Normal(2), MLP(2, [4], 1), T=1).train().closed_form_training_bound(x) is None
    assert D.LARS(D.Normal(2), MLP(2, [4], 1), T=8).eval().closed_form_training_bound(x) is None
    assert D.Normal(2).closed_form_training_bound(x) is None


@pytest.mark.parametrize("cls", [SNIS, LARS])
def test_training_with_closed_form_gradients_follows_autograd_training(tmp_path, cls):
    """100 Adam steps in float64 with and without the closed form end at the same weights (to
    rounding), and the module says which path it took."""
    data = Toy2DDataModule().target.sample(3200, torch.Generator().manual_seed(0)).double()
    sizes = {"num_proposals": 16} if cls is SNIS else {"T": 16, "num_z_samples": 16}

    def train(closed_form):
        torch.manual_seed(0)
        model = cls(num_val_samples=2, closed_form=closed_form, **sizes).double()
        loader = DataLoader(TensorDataset(data), batch_size=32)
        quiet_trainer(tmp_path, max_steps=100, limit_val_batches=0).fit(model, loader)
        return model

    fast, slow = train(None), train(False)
    assert fast._closed_form_on and not slow._closed_form_on
    for p, q in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)


def test_closed_form_is_rejected_with_a_clear_error_when_not_a_flag():
    with pytest.raises(ValueError, match="closed_form must be None"):
        SNIS(closed_form="yes")
    assert not TRS().offers_closed_form()  # TRS has no closed form: autograd
