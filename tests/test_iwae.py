"""IWAE as an EIM bound (ALGORITHMS.md 4): the SNIS-posterior ELBO with energy log w is IWAE on the
same particles; IWAE is exact for the exact posterior, exp(IWAE) is unbiased for p(x) and the bound
rises with K toward the exact log p(x); DReG's encoder gradient has the standard gradient's mean."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules import LinearGaussianDataModule
from eim_lightning import IWAE
from eim_lightning import densities as D
from eim_lightning.nn import MLP
from eim_lightning.ops import log_mean_exp
from linear_gaussian_oracle import constant_encoder, model_with_diagonal_posterior
from oracles import same_draw_replicas


def _model_and_encoder(seed=0, learnable=False):
    torch.manual_seed(seed)
    model = D.LinearGaussianModel(3, 2, noise_scale=0.6, learnable=learnable).double()
    encoder = D.ConditionalNormal(MLP(3, [8], 4), 2).double()
    return model, encoder


@pytest.mark.parametrize("K", [1, 4, 16])
def test_iwae_equals_the_snis_posterior_bound_on_the_same_randomness(K):
    """The SNIS posterior with energy U = log p(x, z) - log q0(z|x), selected index summed
    analytically, gives IWAE's number and IWAE's gradient on the same random draws."""
    model, encoder = _model_and_encoder(learnable=True)
    iwae = D.IWAE(model, encoder, num_particles=K)
    snis_posterior = iwae.as_snis_posterior()
    assert isinstance(snis_posterior.posterior, D.SNIS) and snis_posterior.posterior.num_proposals == K
    x = model.sample(5).detach()
    (a, ga), (b, gb) = same_draw_replicas((iwae, snis_posterior), x, 3, seed=7, params=list(iwae.parameters()))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    for g1, g2 in zip(ga, gb):
        torch.testing.assert_close(g1, g2, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(a[0], a[1])  # the replicas are independent draws, not a constant


def test_iwae_is_exact_for_the_exact_posterior_and_a_valid_increasing_bound_otherwise():
    """q0 = p(z|x): every replica is log p(x). A poor (wider) q0: E[exp(L_K)] = p(x) (unbiased,
    within 4 SE of the mean of exp(L_K - log p)), and E[L_1] < E[L_4] < E[L_16] <= log p(x)."""
    model = model_with_diagonal_posterior()
    from linear_gaussian_oracle import exact_encoder

    x = model.sample(3)
    exact = D.IWAE(model, exact_encoder(model), num_particles=6)
    torch.testing.assert_close(exact.log_prob_replicas(x, 5), model.log_prob(x).expand(5, 3), atol=1e-10, rtol=0)
    # a wide q0 keeps the weights bounded, so the moments below exist
    wide = constant_encoder([0.3, -0.3], [2.5, 2.5])
    log_p = model.log_prob(x)
    n = 20_000
    means = []
    for K in (1, 4, 16):
        with torch.no_grad():
            reps = D.IWAE(model, wide, num_particles=K).log_prob_replicas(x, n)
        ratio = torch.exp(reps - log_p)
        se = ratio.std(0) / math.sqrt(n)
        assert ((ratio.mean(0) - 1).abs() < 4 * se).all(), (K, ratio.mean(0), se)
        mean, se_l = reps.mean(0), reps.std(0) / math.sqrt(n)
        assert ((mean - log_p) < 3 * se_l).all()
        means.append(mean)
    assert (means[0] < means[1] - 0.05).all() and (means[1] < means[2]).all(), means


def _grads(density, x, params, seed, variant):
    torch.manual_seed(seed)
    if variant == "stl":  # log q0 at fixed parameters *without* DReG's reweighting: biased for K > 1
        _, log_w = density.log_weights(x, 1, detach_proposal_params=True)
        bound = log_mean_exp(log_w, 0)[0]
    else:
        bound, _ = density.bound_and_diagnostics(x)
    grads = torch.autograd.grad(bound.mean(), params)
    return bound.detach(), torch.cat([g.reshape(-1) for g in grads])


def test_dreg_encoder_gradient_has_the_standard_gradients_mean_and_the_same_model_gradient():
    """Paired comparison over G groups of R replicas: the mean difference of the encoder gradients
    (DReG - standard) is zero within 4.5 SE in every coordinate (Bonferroni over the coordinates);
    the biased "sticking the landing" IWAE gradient fails the same test (the test has power).
    The model's gradient and the bound's value are identical draw by draw."""
    model, encoder = _model_and_encoder(seed=1, learnable=True)
    K, G, R = 8, 150, 16
    standard = D.IWAE(model, encoder, num_particles=K)
    dreg = D.IWAE(model, encoder, num_particles=K, gradient_estimator="dreg")
    x = model.sample(2).detach().repeat(R, 1)
    enc, mod = list(encoder.parameters()), list(model.parameters())
    diffs, stl_diffs = [], []
    for g in range(G):
        v_std, g_std = _grads(standard, x, enc + mod, g, "standard")
        v_dreg, g_dreg = _grads(dreg, x, enc + mod, g, "dreg")
        _, g_stl = _grads(dreg, x, enc, g, "stl")
        n_enc = g_stl.numel()
        torch.testing.assert_close(v_std, v_dreg, atol=1e-12, rtol=0)
        torch.testing.assert_close(g_std[n_enc:], g_dreg[n_enc:], atol=1e-10, rtol=1e-10)
        diffs.append(g_dreg[:n_enc] - g_std[:n_enc])
        stl_diffs.append(g_stl - g_std[:n_enc])

    def max_z(d):
        d = torch.stack(d)
        return float((d.mean(0).abs() / (d.std(0) / math.sqrt(G)).clamp_min(1e-300)).max())

    assert max_z(diffs) < 4.5, max_z(diffs)
    assert max_z(stl_diffs) > 8.0, max_z(stl_diffs)


def test_dreg_encoder_gradient_has_lower_variance_for_many_particles():
    """The reason users ask for DReG (Tucker et al. 2018, fig. 1): with K = 64 the standard encoder
    gradient is noisier. Total variance over the encoder's coordinates, 60 draws each."""
    model, encoder = _model_and_encoder(seed=2)
    x = model.sample(1).detach()
    params = list(encoder.parameters())
    draws = {}
    for est in ("standard", "dreg"):
        density = D.IWAE(model, encoder, num_particles=64, gradient_estimator=est)
        draws[est] = torch.stack([_grads(density, x, params, s, est)[1] for s in range(60)])
    var = {k: float(v.var(0).sum()) for k, v in draws.items()}
    assert var["dreg"] < 0.5 * var["standard"], var


def test_bad_options_raise():
    model, encoder = _model_and_encoder()
    with pytest.raises(ValueError, match="gradient_estimator must be one of"):
        D.IWAE(model, encoder, gradient_estimator="vimco")
    with pytest.raises(TypeError, match="rsample_and_log_prob"):
        D.IWAE(model, D.HIS(encoder, MLP(2, [4], 1, context_dim=3), T=1))
    with pytest.raises(ValueError, match="num_particles"):
        D.IWAE(model, encoder, num_particles=0)


@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_module_trains_and_logs(estimator, make_trainer):
    dm = LinearGaussianDataModule(
        data_dim=4, latent_dim=2, batch_size=32, steps_per_epoch=3, val_size=64, test_size=64, eval_batch_size=64
    )
    module = IWAE(
        data_dim=4,
        latent_dim=2,
        num_particles=4,
        gradient_estimator=estimator,
        hidden_sizes=[8],
        num_val_samples=2,
        num_test_samples=2,
    )
    trainer = make_trainer(max_steps=3, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    for key in ("train/bound_step", "train/ess", "val/bound"):
        assert math.isfinite(trainer.callback_metrics[key].item()), key
    assert 1.0 <= trainer.callback_metrics["train/ess"].item() <= 4.0
