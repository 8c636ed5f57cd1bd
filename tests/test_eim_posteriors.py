"""EIMs as the variational family (ALGORITHMS.md 4), checked against exact linear-Gaussian oracles:
the conditional Gaussian, the linear-Gaussian model (quadrature), the ELBO with an EIM's upper
bound plugged in (SNIS: selected index summed analytically; HIS: the Hamiltonian VAE bound in
closed form), through the layer-2 density and the LightningModule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from datamodules import LinearGaussianDataModule
from eim_lightning import EIMPosteriorVAE
from eim_lightning import densities as D
from eim_lightning.nn import MLP
from linear_gaussian_oracle import DT, ConstantNet, constant_encoder, exact_encoder, model_with_diagonal_posterior

# -- the building blocks ------------------------------------------------------------------------


def test_linear_gaussian_model_matches_quadrature():
    """log p(x) = log int p(x, z) dz, and the posterior's moments, by 1-D quadrature (d_z = 1)."""
    model = D.LinearGaussianModel(
        2,
        1,
        weight=torch.tensor([[1.3], [-0.6]], dtype=DT),
        bias=torch.tensor([0.2, -0.1], dtype=DT),
        noise_scale=torch.tensor([0.5, 0.8], dtype=DT),
        learnable=False,
    )
    x = torch.tensor([[0.9, -1.2], [-2.0, 0.4], [0.0, 0.0]], dtype=DT)
    # log_joint against scipy's densities
    z = torch.tensor([[0.3], [-1.0], [2.0]], dtype=DT)
    expected = (
        stats.norm.logpdf(z[:, 0])
        + stats.norm.logpdf(x[:, 0], 1.3 * z[:, 0] + 0.2, 0.5)
        + stats.norm.logpdf(x[:, 1], -0.6 * z[:, 0] - 0.1, 0.8)
    )
    np.testing.assert_allclose(model.log_joint(x, z).numpy(), expected, rtol=1e-12)
    # quadrature on a fine grid (the integrands are smooth and negligible beyond |z| = 12)
    grid = torch.linspace(-12, 12, 200_001, dtype=DT)
    log_joint = model.log_joint(x, grid.reshape(-1, 1, 1).expand(-1, 3, 1))  # [G, 3]
    log_p = torch.logsumexp(log_joint, 0) + math.log(float(grid[1] - grid[0]))
    weights = torch.softmax(log_joint, 0)
    m1 = (weights * grid[:, None]).sum(0)
    var = (weights * (grid[:, None] - m1).square()).sum(0)
    mean, cov = model.posterior(x)
    torch.testing.assert_close(model.log_prob(x), log_p, atol=1e-10, rtol=0)
    torch.testing.assert_close(mean[:, 0], m1, atol=1e-10, rtol=0)
    torch.testing.assert_close(cov[0, 0].expand(3), var, atol=1e-10, rtol=0)
    torch.testing.assert_close(model.log_prob_lower_bound(x, 5), model.log_prob(x))


def test_conditional_normal_density_samples_and_detached_gradient():
    net = ConstantNet([0.5, -1.0], [0.3, 2.0])
    q = D.ConditionalNormal(net, 2, min_scale=0.0)
    ctx = torch.zeros(3, 4, dtype=DT)
    z = torch.randn(5, 3, 2, dtype=DT)
    expected = stats.norm.logpdf(z.numpy(), [0.5, -1.0], [0.3, 2.0]).sum(-1)
    np.testing.assert_allclose(q.log_prob(z, ctx).detach().numpy(), expected, rtol=1e-12)
    s = q.sample(20_000, ctx)
    assert s.shape == (20_000, 3, 2)
    n = s.shape[0] * s.shape[1]
    flat = s.reshape(n, 2)
    se = torch.tensor([0.3, 2.0], dtype=DT) / math.sqrt(n)
    assert ((flat.mean(0) - torch.tensor([0.5, -1.0], dtype=DT)).abs() < 5 * se).all()
    assert ((flat.std(0) / torch.tensor([0.3, 2.0], dtype=DT) - 1).abs() < 5 / math.sqrt(2 * n)).all()
    # log q(z) at z = mu + sigma eps: its gradient in mu is 0 (eps is fixed), but with the parameters
    # held fixed (DReG / sticking the landing) it is the path term d log q / dz = -eps / sigma
    for detach, check in [
        (False, lambda g, eps: torch.zeros_like(g)),
        (True, lambda g, eps: -(eps / torch.tensor([0.3, 2.0], dtype=DT)).sum((0, 1))),
    ]:
        torch.manual_seed(3)
        z, log_q = q.rsample_and_log_prob(4, ctx, detach_params=detach)
        (grad,) = torch.autograd.grad(log_q.sum(), net.out)
        eps = (z.detach() - torch.tensor([0.5, -1.0], dtype=DT)) / torch.tensor([0.3, 2.0], dtype=DT)
        torch.testing.assert_close(grad[:2], check(grad[:2], eps), atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="is conditional"):
        q.rsample(2)
    with pytest.raises(ValueError, match="net must map context"):
        D.ConditionalNormal(MLP(4, [3], 3), 2).log_prob(z, torch.zeros(3, 4))


# -- exact cases: q0 = the exact posterior makes every bound equal log p(x), sample by sample ---


def _families(model, encoder, k=5):
    zero_energy = MLP(model.latent_dim, [4], 1, context_dim=model.event_shape[0]).double()
    for layer in zero_energy.net:
        if isinstance(layer, nn.Linear):
            nn.init.zeros_(layer.weight)
    return {
        "gaussian": D.EIMPosteriorVAE(model, encoder),
        "snis_constant_energy": D.EIMPosteriorVAE(model, D.SNIS(encoder, zero_energy, num_proposals=k)),
        "his_T0": D.EIMPosteriorVAE(model, D.HIS(encoder, D.NegativeLogJoint(model), None, T=0).double()),
        "iwae": D.IWAE(model, encoder, num_particles=k),
    }


@pytest.mark.parametrize("family", ["gaussian", "snis_constant_energy", "his_T0", "iwae"])
def test_every_bound_is_exact_when_q0_is_the_exact_posterior(family):
    """With q0 = p(z|x): ELBO, SNIS-in-q with a constant energy (s_k = 1/K: the log K and log s_k
    terms must cancel exactly), HIS with T = 0 and IWAE all give log p(x) for every sample."""
    model = model_with_diagonal_posterior()
    density = _families(model, exact_encoder(model))[family]
    x = model.sample(6)
    replicas = density.log_prob_replicas(x, 4)
    torch.testing.assert_close(replicas, model.log_prob(x).expand(4, 6), atol=1e-10, rtol=0)
    bound, _ = density.bound_and_diagnostics(x)
    torch.testing.assert_close(bound, model.log_prob(x), atol=1e-10, rtol=0)


def _random_energy(model, gain: float, seed: int) -> MLP:
    torch.manual_seed(seed)
    energy = MLP(model.latent_dim, [16], 1, context_dim=model.event_shape[0]).double()
    with torch.no_grad():
        for p in energy.parameters():
            p.mul_(gain)
    return energy


def test_snis_posterior_bound_is_below_iwae_on_the_same_particles_and_equal_for_the_optimal_energy():
    """sum_k s_k (log w_k - log s_k) <= log sum_k w_k (Gibbs' inequality) for every energy, on the
    same particles; equality exactly when U = log w + const (the IWAE energy, shifted)."""
    model = model_with_diagonal_posterior()
    encoder = constant_encoder([0.4, -0.2], [1.3, 0.8])  # a poor q0
    x = model.sample(5)
    iwae = D.IWAE(model, encoder, num_particles=8)
    torch.manual_seed(11)
    ref = iwae.log_prob_replicas(x, 50)
    gaps = []
    for gain in (0.5, 3.0):
        snis = D.EIMPosteriorVAE(model, D.SNIS(encoder, _random_energy(model, gain, 1), num_proposals=8))
        torch.manual_seed(11)
        gap = ref - snis.log_prob_replicas(x, 50)
        assert (gap >= -1e-12).all()
        gaps.append(gap.mean())
    assert gaps[0] > 1e-3 and gaps[1] > gaps[0], gaps  # a real gap, growing with a worse energy

    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            self.u = D.LogImportanceWeight(model, encoder)

        def forward(self, z, c):
            return self.u(z, c) + 3.0

    snis = D.EIMPosteriorVAE(model, D.SNIS(encoder, Shifted(), num_proposals=8))
    torch.manual_seed(11)
    torch.testing.assert_close(snis.log_prob_replicas(x, 50), ref, atol=1e-10, rtol=0)


def _train_posterior(density, model, steps: int, lr: float = 0.02, batch: int = 64):
    opt = torch.optim.Adam([p for p in density.posterior.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = -density.bound_and_diagnostics(model.sample(batch))[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_learned_energy_still_gives_a_valid_bound_below_the_exact_log_likelihood():
    """Train an SNIS posterior's q0 and energy (the model fixed), then check, for each of several
    x, that the mean bound over R replicas is below the exact log p(x) up to 3 standard errors,
    for the trained energy and for a large random one; and that training tightened it."""
    torch.manual_seed(0)
    model = D.LinearGaussianModel(4, 2, learnable=False, noise_scale=0.5).double()
    encoder = D.ConditionalNormal(MLP(4, [16], 4), 2).double()
    energy = MLP(2, [16], 1, context_dim=4).double()
    density = D.EIMPosteriorVAE(model, D.SNIS(encoder, energy, num_proposals=8))
    x = model.sample(6)
    R = 4000

    def check(d):
        with torch.no_grad():
            reps = d.log_prob_replicas(x, R)
        mean, se = reps.mean(0), reps.std(0) / math.sqrt(R)
        excess = (mean - model.log_prob(x)) / se
        assert (excess < 3.0).all(), excess
        return (model.log_prob(x) - mean).mean()

    gap_before = check(density)
    _train_posterior(density, model, steps=150)
    gap_after = check(density)
    assert gap_after < 0.5 * gap_before and gap_after < 0.3, (gap_before, gap_after)
    check(D.EIMPosteriorVAE(model, D.SNIS(encoder, _random_energy(model, 4.0, 2), num_proposals=8)))


def _hvae_expected_bound(model, x, mu0, s0, step, alphas):
    """E[log p(x, z_T) + log N(rho_T) - log q0(z_0) - log N(rho_0)] in closed form for a 1-D latent:
    the potential -log p(x, z) is quadratic, so the tempered leapfrog is an affine map of
    (z_0, rho_0) and (z_T, rho_T) is Gaussian. Built with 3x3 homogeneous matrices."""
    w, b, sig2 = model.weight[:, 0].double(), model.bias.double(), model.noise_scale.double().square()
    lam = 1 + (w * w / sig2).sum()
    beta = (w * (x[0] - b) / sig2).sum()

    def mat(rows):
        return torch.tensor(rows, dtype=DT)

    def kick(h):  # rho <- rho - h (lam z - beta)
        return mat([[1, 0, 0], [-h * lam, 1, h * beta], [0, 0, 1]])

    drift = mat([[1, step, 0], [0, 1, 0], [0, 0, 1]])
    scale = lambda a: mat([[1, 0, 0], [0, a, 0], [0, 0, 1]])  # noqa: E731
    m = scale(1.0 / float(torch.prod(alphas)))
    for a in alphas.tolist():
        m = scale(a) @ kick(step / 2) @ drift @ kick(step / 2) @ m
    mean = m @ torch.tensor([mu0, 0.0, 1.0], dtype=DT)
    cov = m[:2, :2] @ torch.diag(torch.tensor([s0**2, 1.0], dtype=DT)) @ m[:2, :2].T
    mz, vz, mr, vr = mean[0], cov[0, 0], mean[1], cov[1, 1]
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    e_log_joint = (
        -half_log_2pi
        - 0.5 * (mz**2 + vz)
        + (-0.5 * torch.log(2 * math.pi * sig2) - ((x[0] - b - w * mz) ** 2 + w * w * vz) / (2 * sig2)).sum()
    )
    e_log_r = -half_log_2pi - 0.5 * (mr**2 + vr)
    e_log_q0 = -0.5 * math.log(2 * math.pi * s0**2) - 0.5
    e_log_rho0 = -half_log_2pi - 0.5
    return float(e_log_joint + e_log_r - e_log_q0 - e_log_rho0)


@pytest.mark.parametrize("T", [0, 3])
def test_his_posterior_is_the_hamiltonian_vae_bound_in_closed_form(T):
    """HIS in q with potential -log p(x, z) and r = N(0, I) is the HVAE bound: its Monte Carlo mean
    matches the closed-form expectation (Gaussian algebra of the affine leapfrog map) within 4 SE,
    and stays below log p(x). T = 0 is the ELBO of q0."""
    model = D.LinearGaussianModel(
        2,
        1,
        weight=torch.tensor([[1.3], [-0.6]], dtype=DT),
        bias=torch.tensor([0.2, -0.1], dtype=DT),
        noise_scale=torch.tensor([0.5, 0.8], dtype=DT),
        learnable=False,
    )
    x = torch.tensor([[0.9, -1.2]], dtype=DT)
    mu0, s0 = 0.1, 0.9  # a deliberately poor q0
    his = D.HIS(
        constant_encoder([mu0], [s0]), D.NegativeLogJoint(model), None, T=T, step_size_init=0.3, alpha_init=0.9
    ).double()
    density = D.EIMPosteriorVAE(model, his)
    n = 40_000
    with torch.no_grad():
        reps = density.log_prob_replicas(x, n)[:, 0]
    expected = _hvae_expected_bound(model, x, mu0, s0, float(his.step_size.detach()), his.alphas.detach())
    se = float(reps.std()) / math.sqrt(n)
    assert float(reps.mean()) == pytest.approx(expected, abs=4 * se), (float(reps.mean()), expected, se)
    assert expected < float(model.log_prob(x)[0])


def test_his_posterior_bound_improves_with_training_and_stays_valid():
    """The HVAE posterior's step size and tempering are learned; its mean bound moves up toward
    log p(x) and never above it (3 SE)."""
    torch.manual_seed(0)
    model = model_with_diagonal_posterior()
    encoder = constant_encoder([0.0, 0.0], [1.0, 1.0])
    density = D.EIMPosteriorVAE(model, D.HIS(encoder, D.NegativeLogJoint(model), None, T=3, alpha_init=0.9).double())
    x = model.sample(1)
    n = 4000

    def mean_gap():
        with torch.no_grad():
            reps = density.log_prob_replicas(x, n)[:, 0]
        gap = float(model.log_prob(x)[0] - reps.mean())
        assert gap > -3 * float(reps.std()) / math.sqrt(n)
        return gap

    before = mean_gap()
    opt = torch.optim.Adam(density.posterior.parameters(), lr=0.05)
    for _ in range(60):
        loss = -density.log_prob_replicas(x, 64).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mean_gap()
    assert after < 0.7 * before, (before, after)


# -- errors -------------------------------------------------------------------------------------


def test_posteriors_without_an_upper_bound_or_of_the_wrong_size_are_rejected():
    model = D.LinearGaussianModel(3, 2)
    trs = D.TRS(D.Normal(2), MLP(2, [4], 1), T=4)
    with pytest.raises(NotImplementedError, match="TRS offers no upper bound"):
        D.EIMPosteriorVAE(model, trs).log_prob_lower_bound(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="posterior must be over the model's latent"):
        D.EIMPosteriorVAE(model, D.ConditionalNormal(MLP(3, [4], 6), 3))
    with pytest.raises(TypeError, match="must offer log_joint"):
        D.EIMPosteriorVAE(D.Normal(2), D.ConditionalNormal(MLP(3, [4], 4), 2))
    with pytest.raises(ValueError, match="unconditional"):
        D.EIMPosteriorVAE(model, D.ConditionalNormal(MLP(3, [4], 4), 2)).log_prob_replicas(
            torch.zeros(2, 3), 1, context=torch.zeros(2, 1)
        )
    with pytest.raises(ValueError, match="posterior_family must be one of"):
        EIMPosteriorVAE(posterior_family="trs")


# -- the LightningModule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family,extra",
    [
        ("snis", {"num_proposals": 4}),
        ("his", {"T": 2}),
        ("his", {"T": 1, "his_potential": "learned", "his_momentum": "learned"}),
        ("sivi", {"num_proposals": 3}),
        ("iwhvi", {"num_proposals": 3}),
        ("gaussian", {}),
    ],
)
def test_module_trains_through_the_trainer_and_logs_through_the_mixin(family, extra, make_trainer):
    dm = LinearGaussianDataModule(
        data_dim=4, latent_dim=2, batch_size=32, steps_per_epoch=3, val_size=64, test_size=64, eval_batch_size=64
    )
    module = EIMPosteriorVAE(
        data_dim=4,
        latent_dim=2,
        posterior_family=family,
        hidden_sizes=[8],
        num_val_samples=2,
        num_test_samples=3,
        **extra,
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = make_trainer(max_steps=3, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    for key in ("train/bound_step", "val/bound"):
        assert math.isfinite(trainer.callback_metrics[key].item()), key
    assert ("train/posterior_ess" in trainer.callback_metrics) == (family == "snis")
    moved = {
        k.split(".")[1]
        for k, v in module.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    }
    assert {"model", "posterior"} <= moved, moved  # the model and the posterior both learn
    (result,) = trainer.test(module, datamodule=dm, verbose=False)
    assert math.isfinite(result["test/bound"])
