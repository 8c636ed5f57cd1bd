"""FIVO (layer 3) with its sequential models (layer 2) and sequence datamodules.

Oracles: the Kalman filter's exact log-likelihood of the linear-Gaussian state-space model
(unbiasedness of exp(log Ẑ), the bound below it and tightening with K, exactness with the
locally optimal proposal where the theory says so), IWAE computed here from the particles with
torch.distributions, the independently tested layer-1 SMC on the bootstrap proposal, closed-form
moments of the sampled data, and a real Trainer for training and logging.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal

from datamodules import LinearGaussianSequenceDataModule, SineSequenceDataModule
from eim_lightning import FIVO
from eim_lightning.densities import VRNN, LinearGaussianSSM
from eim_lightning.kalman import kalman_log_likelihood, lgssm_covariance, lgssm_smc_step, sample_lgssm
from eim_lightning.ops import log_mean_exp
from eim_lightning.smc import smc

F64 = torch.float64
A, Q, R = 0.9, 1.0, 0.5


def sequences(b: int, t_len: int, seed: int, a: float = A, q: float = Q, r: float = R) -> torch.Tensor:
    return sample_lgssm(b, t_len, a, q, r, generator=torch.Generator().manual_seed(seed))[1]


def perturbed_proposal(model: LinearGaussianSSM) -> LinearGaussianSSM:
    """A proposal that is neither the bootstrap nor the optimal one (exercises the q term)."""
    with torch.no_grad():
        model.w_z.fill_(0.5)
        model.w_x.fill_(0.4)
        model.c.fill_(0.1)
        model.log_std.fill_(math.log(0.8))
    return model


# --------------------------------------------------------------------------------------------
# The SMC estimate from the module against the Kalman filter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proposal", ["bootstrap", "perturbed"])
@pytest.mark.parametrize("scheme", ["multinomial", "systematic", "stratified", "never"])
def test_module_estimate_is_unbiased_for_the_kalman_likelihood(scheme, proposal):
    """mean over R replicas of Ẑ / p(x) is 1 within 4 standard errors, for 2 fixed sequences."""
    t_len, k, reps = 6, 4, 10_000
    module = FIVO.linear_gaussian(A, Q, 1.0, resampling=scheme)
    if proposal == "perturbed":
        perturbed_proposal(module.model)
    x = sequences(2, t_len, 11, r=1.0)
    log_p = kalman_log_likelihood(x, A, Q, 1.0)
    with torch.no_grad():
        res = module.model.filter(x.repeat(reps, 1), k, scheme, 0.5, generator=torch.Generator().manual_seed(1))
        via_api = module.log_marginal_bound(x.repeat(reps, 1), k, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(via_api, res.log_marginal, rtol=0, atol=0)
    ratio = (res.log_marginal - log_p.repeat(reps)).exp().view(reps, 2)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(reps)
    assert (se < 0.05).all(), se
    assert ((mean - 1).abs() < 4 * se).all(), (mean, se)
    assert (res.num_resamples.sum() > 0) == (scheme != "never")


def test_unbiasedness_check_has_power():
    # the same check rejects a model whose emission variance is 0.6 instead of the data's 1.0
    t_len, k, reps = 6, 4, 10_000
    x = sequences(2, t_len, 11, r=1.0)
    wrong = FIVO.linear_gaussian(A, Q, 0.6)
    with torch.no_grad():
        log_z = wrong.log_marginal_bound(x.repeat(reps, 1), k)
    ratio = (log_z - kalman_log_likelihood(x, A, Q, 1.0).repeat(reps)).exp().view(reps, 2)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(reps)
    assert ((mean - 1).abs() > 4 * se).any(), (mean, se)


@pytest.mark.parametrize("scheme", ["multinomial", "systematic", "never"])
def test_bound_is_below_the_kalman_likelihood_and_tightens_with_k(scheme):
    t_len, reps = 8, 1000
    x = sequences(1, t_len, 5)
    module = FIVO.linear_gaussian(A, Q, R, resampling=scheme)
    log_p = float(module.model.log_likelihood(x)[0])
    torch.testing.assert_close(log_p, float(kalman_log_likelihood(x, A, Q, R)[0]))
    ks = [1, 4, 16, 64, 256]
    means, ses = [], []
    with torch.no_grad():
        for k in ks:
            log_z = module.log_marginal_bound(x.expand(reps, t_len), k)
            means.append(float(log_z.mean()))
            ses.append(float(log_z.std()) / math.sqrt(reps))
    gaps = [log_p - m for m in means]
    for m, s in zip(means, ses):
        assert m < log_p + 4 * s, (gaps, ses)
    for i in range(len(ks) - 1):
        assert means[i + 1] > means[i] - 4 * math.hypot(ses[i], ses[i + 1]), gaps
    assert gaps[0] > 10 and gaps[-1] < gaps[0] / 50, gaps
    if scheme == "never":  # IWAE over whole sequences tightens more slowly than SMC
        assert 0.1 < gaps[-1] < 0.5, gaps
    else:
        assert gaps[-1] < 0.06, gaps


@pytest.mark.parametrize("scheme", ["multinomial", "systematic", "never"])
@pytest.mark.parametrize("a,t_len", [(0.0, 6), (A, 1)])
def test_locally_optimal_proposal_is_exact_when_a_is_zero_or_t_is_one(scheme, a, t_len):
    x = sequences(5, t_len, 2, a=a)
    module = FIVO(LinearGaussianSSM(a, Q, R, proposal_init="optimal"), resampling=scheme)
    for k in (1, 7):
        log_z = module.log_marginal_bound(x, k)
        # float32 proposal coefficients (2/3, ...) cast to float64: exact up to ~1e-7
        torch.testing.assert_close(log_z, kalman_log_likelihood(x, a, Q, R), rtol=0, atol=1e-5)
    if t_len > 1:  # ... and not in general: with a != 0 the estimate has variance
        exact = FIVO(LinearGaussianSSM(A, Q, R, proposal_init="optimal"), resampling=scheme)
        x = sequences(5, t_len, 2)
        assert not torch.allclose(exact.log_marginal_bound(x, 7), kalman_log_likelihood(x, A, Q, R), atol=1e-3)


# --------------------------------------------------------------------------------------------
# The unification on shared randomness
# --------------------------------------------------------------------------------------------


def iwae_from_particles(model: LinearGaussianSSM, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k p(x, z^k) / q(z^k | x) for the K unresampled paths built from ``eps``."""
    t_len, k, b, _ = eps.shape
    sd_q, sd_r = math.sqrt(float(model.q)), math.sqrt(float(model.r))
    z_prev = torch.zeros(k, b, dtype=F64)
    log_w = torch.zeros(k, b, dtype=F64)
    for t in range(t_len):
        mean, var = model.proposal(z_prev, x[:, t])
        z = mean + var.sqrt() * eps[t, ..., 0]
        log_w += Normal(float(model.a) * z_prev, sd_q).log_prob(z) + Normal(z, sd_r).log_prob(x[:, t])
        log_w -= Normal(mean, var.sqrt()).log_prob(z)
        z_prev = z
    return torch.logsumexp(log_w, 0) - math.log(k)


def test_never_resampling_fivo_is_iwae_on_the_same_particles():
    t_len, k, b = 7, 16, 5
    model = perturbed_proposal(LinearGaussianSSM(A, Q, R)).double()
    module = FIVO(model)
    x = sequences(b, t_len, 3)
    eps = torch.randn(t_len, k, b, 1, dtype=F64)
    iwae = iwae_from_particles(model, x, eps).detach()
    with torch.no_grad():
        never = module.log_marginal_bound(x, k, resampling="never", noise=eps)
        threshold0 = module.log_marginal_bound(x, k, resampling="multinomial", ess_threshold=0.0, noise=eps)
        always = module.log_marginal_bound(x, k, resampling="systematic", ess_threshold=1.0, noise=eps)
    torch.testing.assert_close(never, iwae, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(threshold0, iwae, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(always, iwae, atol=1e-3)  # resampling changes the estimate: not vacuous


@pytest.mark.parametrize("scheme,threshold", [("multinomial", 0.5), ("systematic", 1.0), ("stratified", 0.8)])
def test_bootstrap_initialised_module_equals_layer1_smc_on_shared_randomness(scheme, threshold):
    t_len, k, b = 6, 5, 8
    x = sequences(b, t_len, 4)
    eps = torch.randn(t_len, k, b, 1, dtype=F64)
    shape = (t_len - 1, b) if scheme == "systematic" else (t_len - 1, k, b)
    uniforms = torch.rand(shape, dtype=F64)
    module = FIVO.linear_gaussian(A, Q, R)
    with torch.no_grad():
        ours = module.model.filter(x, k, scheme, threshold, noise=eps, resampling_uniforms=uniforms)
    ref = smc(
        lgssm_smc_step(x, A, Q, R, k, "bootstrap", noise=eps[..., 0]),
        t_len,
        resampling=scheme,
        ess_threshold=threshold,
        resampling_uniforms=uniforms,
    )
    torch.testing.assert_close(ours.log_marginal, ref.log_marginal, rtol=1e-6, atol=1e-6)
    assert torch.equal(ours.resampled, ref.resampled) and ours.resampled.any()


def test_vrnn_particles_are_independent_without_resampling():
    # never resampling with K particles = log-mean-exp of the K one-particle runs on the same noise
    torch.manual_seed(0)
    model = VRNN(obs_dim=2, latent_dim=3, hidden_size=8, feature_size=4)
    x = torch.randn(3, 5, 2)
    eps = torch.randn(5, 6, 3, 3)
    with torch.no_grad():
        joint = model.log_marginal_bound(x, 6, "never", noise=eps)
        single = torch.stack([model.log_marginal_bound(x, 1, "never", noise=eps[:, i : i + 1]) for i in range(6)])
        resampled = model.log_marginal_bound(x, 6, "systematic", ess_threshold=1.0, noise=eps)
    torch.testing.assert_close(joint, log_mean_exp(single, 0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(resampled, joint, atol=1e-3)


# --------------------------------------------------------------------------------------------
# Gradients, shapes, errors
# --------------------------------------------------------------------------------------------


def test_pathwise_gradient_reaches_the_proposal_and_only_learnable_parameters():
    module = FIVO.linear_gaussian(A, Q, R)
    assert {n for n, _ in module.named_parameters()} == {"model.w_z", "model.w_x", "model.c", "model.log_std"}
    x = sequences(4, 6, 0).float()
    module.log_marginal_bound(x, 8).mean().backward()
    grads = torch.stack([p.grad for p in module.parameters()])
    assert torch.isfinite(grads).all() and (grads != 0).all()
    learn_all = FIVO.linear_gaussian(A, Q, R, learn_model=True)
    assert len(list(learn_all.parameters())) == 7
    assert not list(FIVO.linear_gaussian(A, Q, R, learn_proposal=False).parameters())


def test_model_gradient_at_the_exact_point_averages_to_the_kalman_gradient():
    # a = 0 with the locally optimal proposal: log Ẑ(θ0) = log p_θ0(x) for every noise draw, so
    # E[log Ẑ(θ)] - log p_θ(x) <= 0 is maximal at θ0 and the expected pathwise gradient with respect
    # to the model's (a, log q, log r) is the exact gradient of the Kalman log-likelihood.
    model = LinearGaussianSSM(0.0, Q, R, learn_model=True, learn_proposal=False, proposal_init="optimal").double()
    module = FIVO(model, resampling="never")
    x = sequences(1, 5, 9, a=0.0)
    params = [model.a, model.log_q, model.log_r]
    exact = torch.autograd.grad(model.log_likelihood(x).sum(), params)
    exact = torch.stack(exact)
    groups, reps = 20, 250
    grads = torch.stack(
        [
            torch.stack(torch.autograd.grad(module.log_marginal_bound(x.expand(reps, 5), 4).mean(), params))
            for _ in range(groups)
        ]
    )
    mean, se = grads.mean(0), grads.std(0) / math.sqrt(groups)
    assert ((mean - exact).abs() < 4 * se + 1e-9).all(), (mean, se, exact)
    assert (se < 0.1 * exact.abs().max()).all() and (exact.abs() > 0.05).all(), (se, exact)


def test_sequences_of_shape_b_t_and_b_t_1_give_the_same_bound():
    module = FIVO.linear_gaussian(A, Q, R)
    x = sequences(3, 5, 0)
    flat = module.log_marginal_bound(x, 4, generator=torch.Generator().manual_seed(2))
    column = module.log_marginal_bound(x.unsqueeze(-1), 4, generator=torch.Generator().manual_seed(2))
    assert flat.shape == (3,) and flat.dtype == F64
    torch.testing.assert_close(flat, column, rtol=0, atol=0)


def test_clear_errors_for_bad_input():
    module = FIVO.linear_gaussian(A, Q, R)
    x = sequences(3, 5, 0)
    for bad in (x[0], x.unsqueeze(-1).expand(3, 5, 2), x[:, :0], x.unsqueeze(0)):
        with pytest.raises(ValueError, match=r"\[B, T, 1\] or \[B, T\]"):
            module.log_marginal_bound(bad, 4)
    nan = x.clone()
    nan[1, 2] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        module.log_marginal_bound(nan, 4)
    with pytest.raises(TypeError, match="floating-point"):
        module.log_marginal_bound(x.long(), 4)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
            module.log_marginal_bound(x, k)
    with pytest.raises(ValueError, match="resampling must be one of"):
        module.log_marginal_bound(x, 4, resampling="residual")
    with pytest.raises(ValueError, match="noise must be"):
        module.log_marginal_bound(x, 4, noise=torch.randn(5, 4, 3))
    with pytest.raises(ValueError, match="resampling must be one of"):
        FIVO.linear_gaussian(A, Q, R, resampling="residual")
    with pytest.raises(ValueError, match="num_particles"):
        FIVO.linear_gaussian(A, Q, R, num_particles=0)
    with pytest.raises(ValueError, match="ess_threshold"):
        FIVO.linear_gaussian(A, Q, R, ess_threshold=math.nan)
    with pytest.raises(ValueError, match="variances"):
        FIVO.linear_gaussian(A, 0.0, R)
    with pytest.raises(TypeError, match="SequentialModel"):
        FIVO(model=torch.nn.Linear(1, 1))
    vrnn = VRNN(obs_dim=2, hidden_size=4, feature_size=2)
    with pytest.raises(ValueError, match=r"\[B, T, 2\]"):
        vrnn.log_marginal_bound(torch.randn(3, 5), 2)
    with pytest.raises(TypeError, match="float32 parameters"):
        vrnn.log_marginal_bound(torch.randn(3, 5, 2, dtype=F64), 2)


# --------------------------------------------------------------------------------------------
# Datamodules
# --------------------------------------------------------------------------------------------


def test_a_nan_in_the_training_data_stops_fit_naming_its_step_and_is_checked_once_per_block(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from conftest import quiet_trainer
    from eim_lightning.densities.base import values_prechecked

    x = sequences(12, 5, 0)
    x[9, 2] = math.nan  # in the third batch of 4
    module = FIVO.linear_gaussian(A, Q, R)
    with pytest.raises(ValueError, match=r"the batch of training step 2 is not valid: .*non-finite \(NaN/Inf\)"):
        quiet_trainer(tmp_path, max_steps=3).fit(module, train_dataloaders=DataLoader(TensorDataset(x), batch_size=4))
    with values_prechecked():  # inside a checked block the steps do not check (nor synchronise) again
        bound = module.log_marginal_bound(x[8:], 4)
    assert not torch.isfinite(bound).all()


def test_linear_gaussian_data_has_the_model_covariance_and_is_seeded():
    t_len, n = 5, 40_000
    dm = LinearGaussianSequenceDataModule(A, Q, R, T=t_len)
    x = dm.sample(n, torch.Generator().manual_seed(0))[..., 0].double()
    assert dm.event_shape == (t_len, 1)
    _, cov = lgssm_covariance(t_len, A, Q, R)
    emp = x.T @ x / n
    se = ((cov.diag()[:, None] * cov.diag()[None, :] + cov**2) / n).sqrt()
    assert ((emp - cov).abs() < 5 * se).all(), (emp, cov)
    wrong = lgssm_covariance(t_len, 0.8, Q, R)[1]  # power: a = 0.8 is rejected
    assert ((emp - wrong).abs() > 5 * se).any()


def test_sequence_datamodule_fixed_and_fresh_batches():
    dm = LinearGaussianSequenceDataModule(A, Q, R, T=4, batch_size=8, val_size=10, test_size=12, seed=3)
    val = next(iter(dm.val_dataloader()))[0]
    again = LinearGaussianSequenceDataModule(A, Q, R, T=4, batch_size=8, val_size=10, test_size=12, seed=3)
    assert val.shape == (10, 4, 1) and val.dtype == torch.float32
    assert torch.equal(val, next(iter(again.val_dataloader()))[0])
    assert not torch.equal(val[:10], next(iter(dm.test_dataloader()))[0][:10])
    fresh = list(iter(dm.train_dataloader()))[:3]
    assert [b.shape for b in fresh] == [(8, 4, 1)] * 3 and not torch.equal(fresh[0], fresh[1])
    assert torch.equal(fresh[2], list(iter(again.train_dataloader()))[2])  # seeded by (seed, rank, step)
    fixed = LinearGaussianSequenceDataModule(A, Q, R, T=4, batch_size=8, train_size=20, seed=3)
    batches = [b[0] for b in fixed.train_dataloader()]
    assert sum(len(b) for b in batches) == 20
    epoch2 = torch.cat([b[0] for b in fixed.train_dataloader()])
    assert torch.equal(torch.cat(batches).sort(0).values, epoch2.sort(0).values)  # the same 20 sequences
    with pytest.raises(ValueError, match="variances"):
        LinearGaussianSequenceDataModule(A, -1.0, R)
    with pytest.raises(ValueError, match="T must be an integer"):
        LinearGaussianSequenceDataModule(A, Q, R, T=0)


def test_sine_data_second_moment_is_the_closed_form():
    # E[x_t] = 0 (uniform phase), E[x_t^2] = E[A^2]/2 + sigma^2 with A ~ U[0.5, 1.5]
    n = 40_000
    dm = SineSequenceDataModule(T=6, noise_std=0.1)
    x = dm.sample(n, torch.Generator().manual_seed(0))[..., 0].double()
    second = (0.5**2 + 0.5 * 1.5 + 1.5**2) / 3 / 2 + 0.01
    m2 = x.square().mean(0)
    se2 = x.square().std(0) / math.sqrt(n)
    assert ((m2 - second).abs() < 5 * se2).all(), (m2, second)
    assert (x.mean(0).abs() < 5 * x.std(0) / math.sqrt(n)).all()
    assert (x.abs() <= 1.5 + 0.1 * 6).all()


# --------------------------------------------------------------------------------------------
# Training through a real Trainer
# --------------------------------------------------------------------------------------------


def mean_bound(module: FIVO, x: torch.Tensor, k: int, reps: int = 4) -> float:
    with torch.no_grad():
        return float(torch.stack([module.log_marginal_bound(x, k) for _ in range(reps)]).mean())


def train_proposal(make_trainer, steps: int, t_len: int, lr: float, k: int = 4):
    """Train the bootstrap-initialised proposal by FIVO; return (module, dm, metrics, before, exact)."""
    module = FIVO.linear_gaussian(A, Q, R, num_particles=k, lr=lr, num_val_samples=k)
    dm = LinearGaussianSequenceDataModule(A, Q, R, T=t_len, batch_size=32, val_size=1024, eval_batch_size=1024)
    x_val = dm.val_dataloader().dataset.tensors[0]
    exact = float(module.model.log_likelihood(x_val).mean())
    before = mean_bound(module, x_val, k)
    trainer = make_trainer(max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None)
    trainer.fit(module, datamodule=dm)
    m = trainer.callback_metrics
    assert float(m["val/log_likelihood"]) == pytest.approx(exact, abs=1e-4)
    for name in ("train/bound", "train/resampling_events", "train/ess_fraction"):
        assert name in m and math.isfinite(float(m[name])), name
    assert 0 < float(m["train/ess_fraction"]) <= 1 and 0 <= float(m["train/resampling_events"]) <= t_len - 1
    return module, x_val, float(m["val/bound"]), before, exact


def test_training_the_proposal_closes_the_gap_to_the_kalman_likelihood(make_trainer):
    module, _, after, before, exact = train_proposal(make_trainer, steps=100, t_len=6, lr=0.03)
    # at K = 4 the bootstrap's gap is about 3.4 nats a sequence, the locally optimal proposal's ~0.15
    assert exact - before > 2, (before, exact)
    assert after <= exact + 0.05, (after, exact)  # a bound (1024 sequences: SE ~ 0.01)
    assert exact - after < 0.15 * (exact - before), (before, after, exact)
    # the learned proposal moves toward the locally optimal p(z_t | z_{t-1}, x_t)
    w_z, w_x = module.model.w_z.item(), module.model.w_x.item()
    assert abs(w_z - R * A / (Q + R)) < 0.15 and abs(w_x - Q / (Q + R)) < 0.15, (w_z, w_x)


@pytest.mark.slow
def test_a_few_hundred_steps_reach_the_locally_optimal_proposal(make_trainer):
    k = 4
    module, x_val, after, before, exact = train_proposal(make_trainer, steps=400, t_len=20, lr=0.01, k=k)
    optimal = mean_bound(FIVO(LinearGaussianSSM(A, Q, R, proposal_init="optimal")), x_val, k)
    # bootstrap gap ~12.8 nats a sequence at T = 20; the locally optimal proposal's ~0.6
    assert exact - before > 10 and exact - optimal < 1.0, (before, optimal, exact)
    assert after <= exact + 0.05 and exact - after < 1.5 * (exact - optimal) + 0.05, (after, optimal, exact)
    got = [module.model.w_z.item(), module.model.w_x.item(), module.model.c.item(), module.model.log_std.item()]
    want = [R * A / (Q + R), Q / (Q + R), 0.0, 0.5 * math.log(Q * R / (Q + R))]
    assert all(abs(g - w) < 0.05 for g, w in zip(got, want)), (got, want)


def test_diagnostics_count_resampling_events_and_ess():
    model = LinearGaussianSSM(A, Q, R)
    x = sequences(64, 10, 1).float()
    _, never = model.bound_and_diagnostics(x, 8, "never")
    _, always = model.bound_and_diagnostics(x, 8, "systematic", ess_threshold=1.0)
    _, adaptive = model.bound_and_diagnostics(x, 8, "systematic", ess_threshold=0.5)
    assert (never["resampling_events"] == 0).all() and (always["resampling_events"] == 9).all()
    assert 0 < adaptive["resampling_events"].mean() < 9
    for d in (never, always, adaptive):
        assert ((d["ess_fraction"] > 0) & (d["ess_fraction"] <= 1 + 1e-6)).all()
    assert never["ess_fraction"].mean() < adaptive["ess_fraction"].mean()  # weights degenerate without resampling


def test_vrnn_trains_with_fivo_and_samples(make_trainer):
    torch.manual_seed(0)
    model = VRNN(obs_dim=1, latent_dim=2, hidden_size=16, feature_size=8)
    module = FIVO(model=model, num_particles=4, lr=3e-3, num_val_samples=4)
    dm = SineSequenceDataModule(T=10, batch_size=16, val_size=128, eval_batch_size=128)
    x_val = dm.val_dataloader().dataset.tensors[0]
    with torch.no_grad():
        before = float(module.log_marginal_bound(x_val, 4).mean())
    trainer = make_trainer(max_steps=25, val_check_interval=25, check_val_every_n_epoch=None)
    trainer.fit(module, datamodule=dm)
    after = float(trainer.callback_metrics["val/bound"])
    assert after > before + 2, (before, after)
    assert "val/log_likelihood" not in trainer.callback_metrics  # no exact likelihood for a VRNN
    z, x = model.sample(5, 7, generator=torch.Generator().manual_seed(0))
    assert z.shape == (5, 7, 2) and x.shape == (5, 7, 1) and torch.isfinite(x).all()
    # a datamodule of another observation size is refused before training
    wrong = FIVO(model=VRNN(obs_dim=3, hidden_size=4, feature_size=2))
    with pytest.raises(ValueError, match="observations of size 3"):
        make_trainer(max_steps=1).fit(wrong, datamodule=dm)


# --------------------------------------------------------------------------------------------
# The benchmark script's functions (docs/RESULTS.md and the notebook call them)
# --------------------------------------------------------------------------------------------


def test_bench_fivo_vs_kalman_returns_the_documented_record(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from unify_fivo import fivo_vs_kalman, markdown_table, plot_fivo_vs_kalman

    result = fivo_vs_kalman(T=8, num_sequences=4, num_replicas=50, ks=(1, 64), schemes=("systematic", "never"))
    assert set(result) == {"settings", "kalman", "ks", "schemes", "seconds"} and result["ks"] == [1, 64]
    x = sample_lgssm(4, 8, A, Q, R, generator=torch.Generator().manual_seed(0))[1]
    assert result["kalman"] == pytest.approx(
        float(kalman_log_likelihood(x, A, Q, R).mean()), abs=1e-5
    )  # float32 a, q, r
    for scheme, rows in result["schemes"].items():
        assert set(rows) == {"mean", "se", "gap", "resampling_events"}
        assert all(len(v) == 2 for v in rows.values())
        assert rows["gap"][0] > rows["gap"][1] > -4 * rows["se"][1]  # below Kalman, tighter with K
        assert (rows["resampling_events"][1] > 0) == (scheme == "systematic")
    table = markdown_table(result)
    assert table.count("\n| ") == 2 and "Kalman" in table and "±" in table
    png = plot_fivo_vs_kalman(result, tmp_path / "fig.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
