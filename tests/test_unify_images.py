"""The unification on the image VAE (ALGORITHMS.md 4): the VAE with an N(0, I) prior as the model of
IWAE and of the EIM-posterior VAE, on real static MNIST.

Oracles: ``log p(x, z)`` against Bernoulli and Normal log-densities written out; IWAE against
the VAE's own importance-weighted bound (a separate implementation) on the same noise; the SNIS
posterior with ``U = log w`` against IWAE on the same draws (ALGORITHMS.md 4's identity)."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules import BinarizedMNISTDataModule
from eim_lightning import IWAE, EIMPosteriorVAE
from eim_lightning import densities as D
from eim_lightning.nn import MLP
from eim_lightning.ops import log_mean_exp
from oracles import same_draw_replicas


@pytest.fixture(scope="module")
def static_test_images():
    from conftest import real_data_dir

    dm = BinarizedMNISTDataModule("static", str(real_data_dir()), batch_size=16, test_subset=24)
    dm.setup("test")
    return torch.cat(list(dm.test_dataloader())), dm.data_mean


def _vae(data_mean, dtype=torch.float64):
    torch.manual_seed(0)
    vae = D.VAE(latent_dim=8, hidden_sizes=(32,), data_mean=data_mean).to(dtype)
    with torch.no_grad():  # a less trivial model than the initial one
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae


def test_log_joint_is_the_bernoulli_likelihood_plus_the_standard_normal_prior():
    vae = _vae(torch.full((784,), 0.2))
    x = (torch.rand(5, 784) < 0.3).double()
    z = torch.randn(3, 5, 8, dtype=torch.float64)
    logits = vae.decoder(z)
    p = torch.sigmoid(logits)
    oracle = (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1) - 0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(vae.log_joint(x, z), oracle, atol=1e-9, rtol=0)
    # x with the particles' leading dimensions (as a conditional energy passes its context)
    torch.testing.assert_close(vae.log_joint(x.expand(3, 5, 784), z), oracle, atol=1e-9, rtol=0)


def test_log_joint_refuses_priors_without_an_exact_density_and_bad_shapes():
    prior = D.SNIS(D.Normal(8), MLP(8, [4], 1), num_proposals=4)
    with pytest.raises(TypeError, match="exact log-density.*SNIS prior"):
        D.VAE(latent_dim=8, hidden_sizes=(16,), prior=prior).log_joint(torch.zeros(2, 784), torch.zeros(2, 8))
    vae = D.VAE(latent_dim=8, hidden_sizes=(16,))
    with pytest.raises(ValueError, match=r"z \[\.\.\., 8\]"):
        vae.log_joint(torch.zeros(2, 784), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="binary"):
        vae.log_joint(torch.full((2, 784), 0.5), torch.zeros(2, 8))


def test_encoder_density_is_the_vaes_own_posterior_sharing_its_parameters():
    """Same mean and scale as the VAE's inference network (with its data centring), the same
    parameter objects, and a data mean set later is seen by both."""
    vae = _vae(torch.full((784,), 0.2))
    q0 = vae.encoder_density()
    x = (torch.rand(4, 784) < 0.3).double()
    vae.initialize_from_data(torch.full((784,), 0.4))
    torch.manual_seed(1)
    z, log_q = q0.rsample_and_log_prob(3, context=x)
    torch.manual_seed(1)
    inference = vae._infer(x, 3)
    torch.testing.assert_close(z, inference.z_top, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_q, inference.log_q_top, atol=1e-10, rtol=0)
    assert {id(p) for p in q0.parameters()} == {id(p) for p in vae.encoder.parameters()}
    module = IWAE(model=vae)  # no second encoder
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in vae.parameters())


@pytest.mark.parametrize("K", [1, 5, 50])
def test_iwae_of_the_image_vae_is_its_importance_weighted_bound_and_the_snis_posterior_with_u_log_w(
    static_test_images, K
):
    """On real static MNIST test images, the same draws: IWAE's replicas equal the VAE's own
    K-sample bound (float64, 1e-9), and the SNIS-posterior bound with U = log w equals IWAE in
    value and gradient (float64 to 1e-9; float32 within 8 units of float32 rounding of the value)."""
    x, mean = static_test_images
    vae = _vae(mean)
    iwae = D.IWAE(vae, vae.encoder_density(), num_particles=K)
    snis_posterior = iwae.as_snis_posterior()
    x64 = x.double()
    torch.manual_seed(3)
    a = iwae.log_prob_replicas(x64, 4)
    torch.manual_seed(3)
    own = log_mean_exp(vae.log_prob_replicas(x64, K * 4).reshape(K, 4, -1), dim=0)
    torch.testing.assert_close(a, own, atol=1e-9, rtol=0)
    (b, gb), (c, gc) = same_draw_replicas((iwae, snis_posterior), x64, 2, seed=5, params=list(iwae.parameters()))
    assert (b < -50).all()  # real images, a real bound (not a degenerate constant)
    torch.testing.assert_close(b, c, atol=1e-9, rtol=0)
    for g1, g2 in zip(gb, gc):
        torch.testing.assert_close(g1, g2, atol=1e-7, rtol=1e-7)
    iwae.float()
    values = same_draw_replicas((iwae, snis_posterior), x, 2, seed=5)
    ulp = torch.finfo(torch.float32).eps * values[0].abs()
    assert ((values[0] - values[1]).abs() <= 8 * ulp).all()


def test_the_eim_posterior_families_train_the_image_vae_on_static_mnist(static_test_images, make_trainer):
    """IWAE, the SNIS posterior with a learned U and the HIS posterior (the Hamiltonian VAE)
    each take 30 Adam steps on real images through Trainer.fit: finite, and the bound rises."""
    x, mean = static_test_images
    loader = torch.utils.data.DataLoader(x.repeat(8, 1), batch_size=8, shuffle=True)
    for module in (
        IWAE(model=D.VAE(latent_dim=8, hidden_sizes=(32,)), num_particles=3, lr=3e-3),
        EIMPosteriorVAE(
            model=D.VAE(latent_dim=8, hidden_sizes=(32,)), posterior_family="snis", num_proposals=3, lr=3e-3
        ),
        EIMPosteriorVAE(model=D.VAE(latent_dim=8, hidden_sizes=(32,)), posterior_family="his", T=2, lr=3e-3),
    ):
        module.density.model.initialize_from_data(mean)
        with torch.no_grad():
            before = module.density.log_prob_lower_bound(x, 4).mean()
        make_trainer(max_steps=30).fit(module, train_dataloaders=loader)
        with torch.no_grad():
            after = module.density.log_prob_lower_bound(x, 4).mean()
        assert torch.isfinite(after) and after > before + 5, (type(module.density.posterior).__name__, before, after)


def test_a_nan_encoder_gives_a_nan_bound_for_the_loss_check_not_an_argument_error():
    """NaN weights (a diverged run) must reach the training loop's non-finite check, which names the
    step; the encoder's log-density must not raise torch.distributions' argument error first."""
    vae = D.VAE(latent_dim=8, hidden_sizes=(16,))
    iwae = D.IWAE(vae, vae.encoder_density(), num_particles=3)
    with torch.no_grad():
        vae.encoder.net[0].weight.fill_(math.nan)
    bound, _ = iwae.bound_and_diagnostics((torch.rand(4, 784) < 0.3).float())
    assert torch.isnan(bound).all()


def test_the_hamiltonian_vaes_gradients_stay_finite_where_the_decoder_is_confidently_wrong(static_test_images):
    """The leapfrog differentiates the Bernoulli likelihood's input gradient again; with logits far below
    -44 at pixels that are on, log(sigmoid) left to autograd gave inf * 0 = NaN gradients from a finite
    bound in float32 (a 20,000-step static-MNIST run diverged this way at step 12,347)."""
    x, mean = static_test_images
    torch.manual_seed(0)
    module = EIMPosteriorVAE(model=D.VAE(latent_dim=8, hidden_sizes=(32,)), posterior_family="his", T=2)
    density = module.density
    with torch.no_grad():
        density.model.decoder.net[-1].bias.fill_(-60.0)  # every pixel confidently off
    bound, _ = density.bound_and_diagnostics(x)
    bound.mean().backward()
    assert torch.isfinite(bound).all()
    bad = [n for n, p in density.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, bad
