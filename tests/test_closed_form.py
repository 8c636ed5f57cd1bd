"""Closed-form training gradients (``Density.closed_form_training_bound``, ``MLP.parameter_gradients``,
``MLP.input_gradient_vjp``, ``integrators.leapfrog_reverse_vjp``, ``bounds.lars_geometry``): each is
checked against autograd of the reference implementation on the same random draws, in float64,
and against finite differences where autograd itself is what the closed form replaces (the
MLP's backward and its Hessian-vector products)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import quiet_trainer
from datamodules import Toy2DDataModule
from eim_lightning import HIS, LARS, SNIS, TRS
from eim_lightning import densities as D
from eim_lightning.bounds import lars_geometry, lars_log_prob
from eim_lightning.densities.his import COMPILE_MIN_STEPS
from eim_lightning.integrators import LeapfrogTape, leapfrog_reverse, leapfrog_reverse_vjp
from eim_lightning.modules.engine import CLOSED_FORM_COMPILE_MIN_STEPS
from eim_lightning.nn import DERIVATIVES, MLP, SECOND_DERIVATIVES


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


@pytest.mark.parametrize("activation", sorted(SECOND_DERIVATIVES))
@pytest.mark.parametrize("hidden", [[5, 4], [6], []], ids=["two-hidden", "one-hidden", "linear"])
def test_mlp_input_gradient_vjp_is_the_hessian_vector_product(activation, hidden):
    torch.manual_seed(0)
    net = MLP(3, hidden, 1, activation=activation, output_bias=False).double()
    h = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(7, 3, dtype=torch.float64)
    g, cache = net.input_gradient_cached(h)
    (g_ref,) = torch.autograd.grad(net(h).sum(), h, create_graph=True)
    torch.testing.assert_close(g.expand_as(h), g_ref, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        h_bar, terms = net.input_gradient_vjp([[t if t is None else t.detach() for t in layer] for layer in cache], v)
        pairs = net.input_gradient_parameter_gradients([terms, terms])  # two evaluations: twice the sum
    params = list(net.parameters())
    expected = torch.autograd.grad((g_ref * v).sum(), [h, *params], allow_unused=True)
    # None where autograd has no path (a linear network's input, relu's first-layer bias): zero
    expected = [torch.zeros_like(t) if e is None else e for t, e in zip([h, *params], expected)]
    torch.testing.assert_close(h_bar, expected[0], rtol=1e-10, atol=1e-12)
    got = {id(p): grad for p, grad in pairs}
    for p, want in zip(params, expected[1:]):
        torch.testing.assert_close(got[id(p)], 2 * want, rtol=1e-10, atol=1e-12)
    # Hv against central differences of the closed-form gradient (independent of autograd)
    u, eps = torch.randn(7, 3, dtype=torch.float64), 1e-6
    with torch.no_grad():
        up = (net.input_gradient(h + eps * u) * v).sum()
        down = (net.input_gradient(h - eps * u) * v).sum()
    assert abs(float((up - down) / (2 * eps)) - float((h_bar * u).sum())) < 1e-6


@pytest.mark.parametrize("T", [1, 4])
def test_leapfrog_reverse_vjp_is_the_reverse_mode_of_the_leapfrog(T):
    """On a quadratic potential E = x A x / 2 (grad E = x A, Hv = v A), against autograd through
    :func:`leapfrog_reverse` with random adjoints of both outputs."""
    torch.manual_seed(3)
    a = torch.randn(3, 3, dtype=torch.float64)
    A = a @ a.t() + torch.eye(3, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    rho = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    step = torch.rand(3, dtype=torch.float64).add(0.05).requires_grad_(True)
    alphas = torch.rand(T, dtype=torch.float64).mul(0.2).add(0.8).requires_grad_(True)
    x_bar, rho_bar = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    x0, rho0 = leapfrog_reverse(x, rho, lambda y: y @ A, step, alphas)
    expected = torch.autograd.grad((x0 * x_bar).sum() + (rho0 * rho_bar).sum(), [x, rho, step, alphas])
    tape, evaluated = LeapfrogTape(), []
    with torch.no_grad():
        x0_cf, rho0_cf = leapfrog_reverse(x, rho, lambda y: y @ A, step, alphas, tape)
        got = leapfrog_reverse_vjp(tape, x_bar, rho_bar, lambda k, v: evaluated.append(k) or v @ A, step, alphas)
    torch.testing.assert_close(x0_cf, x0.detach(), rtol=0, atol=0)
    torch.testing.assert_close(rho0_cf, rho0.detach(), rtol=0, atol=0)
    assert sorted(evaluated) == list(range(T + 1)) and len(tape.steps) == T
    for g, want in zip(got, expected):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)


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
    grads_ag = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in density.parameters()]
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


@pytest.mark.parametrize("activation", sorted(SECOND_DERIVATIVES))
@pytest.mark.parametrize("momentum", [True, False], ids=["learned-r", "standard-r"])
@pytest.mark.parametrize("T", [1, 3])
def test_his_closed_form_equals_autograd_of_its_bound(activation, momentum, T):
    """Through the reverse leapfrog, the potential's Hessian-vector products, the learned
    momentum distribution (mean and floored scale), the step sizes and the tempering; with
    non-default step sizes and alphas and a non-zero data mean."""
    torch.manual_seed(0)
    density = D.HIS(
        D.Normal(2, loc=0.2, scale=1.5),
        MLP(2, [6, 5], 1, activation=activation, output_bias=False),
        MLP(2, [4, 3], 4) if momentum else None,
        T=T,
        step_size_init=0.3,
        alpha_init=0.9,
    ).double()
    density.data_mean.fill_(0.3)
    with torch.no_grad():
        density.raw_alphas.add_(0.5 * torch.randn(T, dtype=torch.float64))
        density.raw_step_size.add_(0.3 * torch.randn(2, dtype=torch.float64))
    x = 2 * torch.randn(16, 2, dtype=torch.float64)
    cf, ag = _same_draws(density, x)
    _assert_same(cf, ag, atol=1e-10)
    assert set(cf[2]) == {"step_size", "alpha_product"}


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
        parts = lars_geometry(torch.tensor(z, dtype=torch.float32 if z == 0.5 else torch.float64), T)
        assert all(p.dtype == torch.float64 and p.dim() == 0 for p in parts)
        log_geo, last, d_log_geo, d_last = parts
        value = torch.logaddexp(log_a + log_geo, last)
        t = log_a + (log_geo - last)
        torch.testing.assert_close(value, ref.detach(), rtol=1e-12, atol=1e-13)
        d_cf = float((torch.sigmoid(t) * d_log_geo + torch.sigmoid(-t) * d_last).sum())
        # near Z = 1 the reference itself loses digits: 1 - sigmoid(t) times d_last ~ -2e9
        assert math.isclose(d_cf, float(d_ref), rel_tol=1e-6 if z > 0.99 else 1e-9, abs_tol=1e-9)
    bad = lars_geometry(torch.tensor(-0.1), T) + lars_geometry(torch.tensor(math.nan), T)
    assert all(torch.isnan(v) for v in bad)
    assert [float(v) for v in lars_geometry(torch.tensor(1.7), T)] == [0.0, -math.inf, 0.0, 0.0]


def test_closed_form_declines_what_it_does_not_cover():
    x = torch.randn(4, 2)
    assert D.SNIS(D.Normal(2, learnable=True), MLP(2, [4], 1), 8).closed_form_training_bound(x) is None
    assert D.SNIS(D.Normal(2), MLP(2, [4], 1), 8, share_proposal_samples=False).closed_form_training_bound(x) is None
    assert D.SNIS(D.Normal(2), MLP(2, [4], 1, activation="gelu"), 8).closed_form_training_bound(x) is None
    assert D.SNIS(D.Normal(2), torch.nn.Linear(2, 1), 8).closed_form_training_bound(x) is None
    assert D.LARS(D.Normal(2), MLP(2, [4], 1), T=1).train().closed_form_training_bound(x) is None
    assert D.LARS(D.Normal(2), MLP(2, [4], 1), T=8).eval().closed_form_training_bound(x) is None
    assert D.Normal(2).closed_form_training_bound(x) is None
    assert D.HIS(D.Normal(2), MLP(2, [4], 1), T=0).closed_form_training_bound(x) is None
    assert D.HIS(D.Normal(2, learnable=True), MLP(2, [4], 1)).closed_form_training_bound(x) is None
    assert D.HIS(D.Normal(2), MLP(2, [4], 1, activation="gelu")).closed_form_training_bound(x) is None
    assert D.HIS(D.Normal(2), MLP(2, [4], 1), torch.nn.Linear(2, 4)).closed_form_training_bound(x) is None
    conditional = D.HIS(D.Normal(2), MLP(2, [4], 1, context_dim=3))
    assert not conditional.offers_closed_form_training()


@pytest.mark.parametrize("cls", [SNIS, LARS, HIS])
def test_training_with_closed_form_gradients_follows_autograd_training(tmp_path, cls):
    """100 Adam steps in float64 with and without the closed form end at the same weights (to
    rounding), and the module says which path it took."""
    data = Toy2DDataModule().target.sample(3200, torch.Generator().manual_seed(0)).double()
    sizes = {SNIS: {"num_proposals": 16}, LARS: {"T": 16, "num_z_samples": 16}, HIS: {"T": 2}}[cls]

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


@pytest.mark.parametrize("trace", [True, False])
@pytest.mark.parametrize("steps", [COMPILE_MIN_STEPS, CLOSED_FORM_COMPILE_MIN_STEPS])
def test_his_trains_in_closed_form_and_compiles_only_runs_long_enough_to_repay_it(tmp_path, monkeypatch, steps, trace):
    """With closed-form gradients replayed from their trace a run is never compiled
    automatically; run eagerly (trace=False), only from CLOSED_FORM_COMPILE_MIN_STEPS on (then
    without the closed form); an explicit compile=True always compiles."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compiled.append(fn) or fn)  # record, do not compile
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)

    def fit(**kwargs):
        model = HIS(T=1, trace=trace, **kwargs)
        quiet_trainer(tmp_path, max_steps=steps, limit_train_batches=1, max_epochs=1).fit(model, data)
        return model

    model = fit()
    compiles = steps >= CLOSED_FORM_COMPILE_MIN_STEPS and not trace
    assert (model._compiled_bound is not None) is compiles and model._closed_form_on is not compiles
    assert (model._traced_closed_form is not None) is trace
    assert len(compiled) == int(compiles)
    forced = fit(compile=True)
    assert forced._compiled_bound is not None and not forced._closed_form_on
    assert forced._traced_closed_form is None


@pytest.mark.parametrize(
    "make", [lambda: D.Normal(3, loc=0.4, scale=torch.tensor([0.5, 1.0, 2.0])), lambda: D.Normal(3, learnable=True)]
)
def test_normal_score_is_the_gradient_of_its_log_density(make):
    """Normal's closed-form score against autograd of its log-density and against the base
    class's autograd default (what any other density uses)."""
    density = make().double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    value, score = density.log_prob_and_score(x.detach())
    (expected,) = torch.autograd.grad(density.log_prob(x).sum(), x)
    torch.testing.assert_close(value, density.log_prob(x).detach(), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(score, expected, rtol=1e-14, atol=1e-14)
    base_value, base_score = D.Density.log_prob_and_score(density, x.detach())
    torch.testing.assert_close(base_value, value, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(base_score, score, rtol=1e-14, atol=1e-14)


def test_closed_form_gradients_are_stored_contiguous_for_the_fused_optimiser():
    """A transposed gradient (what the narrow-first outer-product sum returns) is stored
    contiguous: torch's fused Adam misreads a non-contiguous one and takes a wrong step."""
    p = torch.nn.Parameter(torch.zeros(3, 2))
    g = torch.randn(2, 3).t()
    D.Density.add_gradients([(p, g)])
    assert p.grad.is_contiguous() and torch.equal(p.grad, g)
    D.Density.add_gradients([(p, g)])
    assert torch.equal(p.grad, 2 * g)


def test_mlp_closed_forms_reject_networks_they_do_not_cover_with_a_clear_error():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="input_gradient needs out_dim == 1"):
        MLP(2, [3], 2).input_gradient_cached(x)
    with pytest.raises(ValueError, match="input_gradient needs out_dim == 1 and an activation in"):
        MLP(2, [3], 1, activation="gelu").input_gradient(x)
    net = MLP(2, [3], 1, activation="gelu")
    with pytest.raises(ValueError, match="input_gradient_vjp needs an activation in"):
        net.input_gradient_vjp([], x)
    with pytest.raises(ValueError, match="parameter_gradients needs an activation in"):
        net.parameter_gradients(net.forward_cached(x)[1], torch.ones(4, 1))
