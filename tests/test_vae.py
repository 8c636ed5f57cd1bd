"""Layer 2: the VAE and ConvHVAE densities against textbook formulas, on the same randomness.

Oracles are written from the model definitions (ALGORITHMS.md 3) with ``torch.distributions``:
the IWAE bound ``log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)`` (two-level for the ConvHVAE), the
ELBO at K = 1, and the Bernoulli sampling probability. The posterior noise is fixed through
``posterior_noise`` (a bank indexed by replica, so chunked and unchunked evaluation see the same
draws).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli
from torch.distributions import Normal as TorchNormal

import oracles
from eim_lightning.densities import LARS, SNIS, VAE, ConvHVAE, Normal
from eim_lightning.densities.conv_hvae import Conv2dSame
from eim_lightning.densities.likelihoods import gumbel_straight_through_bernoulli
from eim_lightning.nn import MLP


class NoiseBank:
    """Replaces ``posterior_noise``: replica ``r`` of latent layer ``l`` always gets ``bank[l][r]``,
    however the replicas are chunked (layers are drawn in a fixed order within each call)."""

    def __init__(self, layers: int, k: int, batch: int, dim: int, dtype=torch.float64) -> None:
        g = torch.Generator().manual_seed(1234)
        self.bank = torch.randn(layers, k, batch, dim, generator=g, dtype=dtype)
        self.layers, self.layer, self.offset = layers, 0, 0

    def __call__(self, shape, like):
        m = shape[0]
        out = self.bank[self.layer, self.offset : self.offset + m]
        self.layer = (self.layer + 1) % self.layers
        if self.layer == 0:
            self.offset += m
        return out.to(like.dtype)


def binary_batch(n: int, d: int = 784, p: float = 0.2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < p).double()


def textbook_iwae(vae: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k p(x|z_k) N(z_k; 0, I) / q(z_k|x) with z_k = mu + sigma eps_k."""
    mu, raw = vae.encoder((x - vae.data_mean) / vae.data_scale).chunk(2, -1)
    sigma = torch.nn.functional.softplus(raw).clamp_min(1e-5)
    z = mu + sigma * eps  # [K, B, L]
    log_q = TorchNormal(mu, sigma).log_prob(z).sum(-1)
    log_prior = TorchNormal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = Bernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1)
    return torch.logsumexp(log_lik + log_prior - log_q, 0) - math.log(eps.shape[0])


@pytest.mark.parametrize("k", [1, 7, 50])
def test_vae_bound_is_the_textbook_iwae_and_elbo(k, monkeypatch):
    x = binary_batch(5)
    vae = VAE(data_mean=x.mean(0)).double()
    bank = NoiseBank(1, k, 5, 50)
    monkeypatch.setattr(vae, "posterior_noise", bank)
    with torch.no_grad():
        got = vae.log_prob_lower_bound(x, k)
        expected = textbook_iwae(vae, x, bank.bank[0])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)
    if k == 1:  # the one-sample bound is the ELBO, also through the training path
        bank.offset = 0
        bound, diag = vae.bound_and_diagnostics(x)
        torch.testing.assert_close(bound.detach(), expected, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(diag["elbo"], expected, rtol=1e-12, atol=1e-9)


def test_kl_weight_scales_only_the_prior_and_posterior_terms(monkeypatch):
    x = binary_batch(4)
    vae = VAE().double()
    bank = NoiseBank(1, 1, 4, 50)
    monkeypatch.setattr(vae, "posterior_noise", bank)
    full, diag = vae.bound_and_diagnostics(x, beta=1.0)
    bank.offset = 0
    half, _ = vae.bound_and_diagnostics(x, beta=0.5)
    torch.testing.assert_close(half, diag["log_likelihood"] - 0.5 * diag["kl"])
    torch.testing.assert_close(full, diag["log_likelihood"] - diag["kl"])


@pytest.mark.parametrize("model", ["vae", "convhvae", "vae_lars_prior"])
def test_chunked_evaluation_equals_unchunked_on_the_same_randomness(model, monkeypatch):
    x = binary_batch(3)
    if model == "convhvae":
        density, layers, k = ConvHVAE(eval_chunk_size=1000).double(), 2, 20
    elif model == "vae":
        density, layers, k = VAE(eval_chunk_size=1000).double(), 1, 50
    else:
        prior = LARS(Normal(50), MLP(50, [16], 1), T=10).double()
        density, layers, k = VAE(prior=prior, eval_chunk_size=1000).double(), 1, 50
        density.eval()
        prior.set_evaluation_z(0.37)  # evaluation with a fixed Z: deterministic given the posterior noise
    values = []
    for chunk in (1000, 7, 1):
        density.eval_chunk_size = chunk
        monkeypatch.setattr(density, "posterior_noise", NoiseBank(layers, k, 3, 50))
        with torch.no_grad():
            values.append(density.log_prob_lower_bound(x, k))
    torch.testing.assert_close(values[1], values[0], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(values[2], values[0], rtol=1e-12, atol=1e-10)


def test_chunked_evaluation_draws_at_most_a_chunk_of_replicas_at_once(monkeypatch):
    vae = VAE(eval_chunk_size=16)
    sizes = []
    real = vae.posterior_noise
    monkeypatch.setattr(vae, "posterior_noise", lambda shape, like: sizes.append(shape[0]) or real(shape, like))
    with torch.no_grad():
        vae.log_prob_lower_bound(binary_batch(2).float(), 1000)
    assert sum(sizes) == 1000 and max(sizes) == 16


def test_bound_is_non_decreasing_in_the_number_of_samples_on_average():
    """E[L_K] <= E[L_2K] (Burda et al. 2016). With an untrained encoder the gaps are many nats;
    a log-of-mean bug (constant in K) or mean-of-log (the ELBO for every K) would fail."""
    torch.manual_seed(0)
    x = binary_batch(8).float()
    vae = VAE(data_mean=x.mean(0))
    means, ses = [], []
    with torch.no_grad():
        for k in (1, 10, 100):
            runs = torch.stack([vae.log_prob_lower_bound(x, k) for _ in range(30)])  # [30, 8]
            means.append(runs.mean())
            ses.append(runs.mean(1).std() / math.sqrt(30))
    for lo, hi, se_lo, se_hi in zip(means, means[1:], ses, ses[1:]):
        assert hi - lo > 4 * math.hypot(se_lo, se_hi), (means, ses)


def test_lars_prior_is_evaluated_with_its_evaluation_z_also_in_training_mode(monkeypatch):
    """A LARS prior with constant acceptance is N(0, I) exactly once its Z is the exact one (which
    every estimate gives). After a training step left its Z_s pending (training mode, Z_ema = 0.5),
    the VAE's multi-sample bound is the textbook IWAE bound with a N(0, I) prior, and Z_s is intact."""
    x = binary_batch(3)
    prior = LARS(Normal(50), oracles.ConstantLogit(0.1), T=100, num_z_samples=16, num_z_eval_samples=1000).double()
    vae = VAE(prior=prior, data_mean=x.mean(0)).double()
    _, diagnostics = vae.bound_and_diagnostics(x)  # a training step
    pending = prior._pending_z_s
    assert diagnostics["prior_z"].item() > 0.4  # the smoothed training Z, far from 0.1
    bank = NoiseBank(1, 20, 3, 50)
    monkeypatch.setattr(vae, "posterior_noise", bank)
    with torch.no_grad():
        got = vae.log_prob_lower_bound(x, 20)
        expected = textbook_iwae(vae, x, bank.bank[0])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)
    assert vae.training and prior._pending_z_s is pending


class RecordingPrior(Normal):
    """N(0, I) as a prior that records how the model calls its hook."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.calls = []

    def log_prob_for_elbo(self, z, log_q, objective=False):
        self.calls.append((tuple(z.shape), tuple(log_q.shape), objective))
        return self.log_prob(z), {"seen": torch.tensor(float(len(self.calls)))}


def test_priors_plug_in_through_one_hook():
    """The model asks its prior one question, log_prob_for_elbo(z, log q(z|x), objective), and
    reports the prior's diagnostics as prior_<name>: any density can be a prior unseen by it."""
    prior = RecordingPrior(50)
    vae = VAE(prior=prior, eval_chunk_size=4)
    x = binary_batch(3).float()
    _, diagnostics = vae.bound_and_diagnostics(x)
    assert prior.calls == [((1, 3, 50), (1, 3), True)]
    assert diagnostics["prior_seen"].item() == 1.0
    with torch.no_grad():
        vae.log_prob_lower_bound(x, 6)
    assert prior.calls[1:] == [((4, 3, 50), (4, 3), False), ((2, 3, 50), (2, 3), False)]


def test_snis_prior_replicas_get_fresh_negatives():
    """With K = 2 a shared negative would make every replica of a point see the same draw: the
    replicas' spread would then come from the posterior noise only."""
    torch.manual_seed(0)
    prior = SNIS(Normal(50), MLP(50, [16], 1), num_proposals=2)
    vae = VAE(prior=prior)
    z = torch.zeros(6, 1, 50)
    calls = []
    real = prior.log_prob_replicas
    prior.log_prob_replicas = lambda zz, m, context=None: calls.append(zz.shape) or real(zz, m, context)
    with torch.no_grad():
        values, _ = vae.prior.log_prob_for_elbo(z, torch.zeros(6, 1))
    assert len(calls) == 6 and values.shape == (6, 1)
    assert values.std() > 0  # the same z, different negatives


# -- sampling --------------------------------------------------------------------------------


def test_gumbel_straight_through_is_binary_forward_and_relaxed_backward():
    torch.manual_seed(0)
    logits = torch.linspace(-3, 3, 7).repeat(20_000, 1).requires_grad_(True)
    x = gumbel_straight_through_bernoulli(logits, 0.7)
    assert bool(((x == 0) | (x == 1)).all())
    p, freq = torch.sigmoid(logits[0]).detach(), x.mean(0).detach()
    assert torch.allclose(freq, p, atol=float(4 * (p * (1 - p) / 20_000).sqrt().max()))
    x.sum().backward()
    g = logits.grad
    assert bool((g >= 0).all()) and float((g > 0).float().mean()) > 0.99  # sigmoid'(.)/tau: positive
    assert bool((g <= 1 / (4 * 0.7) + 1e-6).all())  # ... and at most 1/(4 tau)
    # the same noise through the relaxed sample gives the same gradient
    torch.manual_seed(1)
    l2 = logits.detach().clone().requires_grad_(True)
    gumbel_straight_through_bernoulli(l2, 0.7).sum().backward()
    torch.manual_seed(1)
    l3 = logits.detach().clone().requires_grad_(True)
    u = torch.rand_like(l3).clamp_(1e-7, 1 - 1e-7)
    torch.sigmoid((l3 + torch.log(u) - torch.log1p(-u)) / 0.7).sum().backward()
    torch.testing.assert_close(l2.grad, l3.grad)


@pytest.mark.parametrize("cls", [VAE, ConvHVAE])
def test_rsample_is_binary_and_differentiable_in_the_decoder(cls):
    model = cls()
    x = model.rsample(6)
    assert x.shape == (6, 784) and bool(((x == 0) | (x == 1)).all())
    (x * torch.linspace(-1, 1, 784)).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    s = model.sample(4)
    assert s.shape == (4, 784) and not s.requires_grad


def test_decoder_bias_starts_at_the_logit_of_the_data_mean_once():
    mean = torch.linspace(0.0, 1.0, 784)
    vae = VAE(data_mean=mean)
    torch.testing.assert_close(torch.sigmoid(vae.output_bias), mean.clamp(1e-4, 1 - 1e-4), rtol=1e-3, atol=1e-6)
    with torch.no_grad():
        vae.output_bias.fill_(0.25)  # "trained"
    vae.initialize_from_data(mean * 0.5)  # a later fit / resume: centring updated, bias kept
    torch.testing.assert_close(vae.data_mean, mean * 0.5)
    assert bool((vae.output_bias == 0.25).all())
    conv = ConvHVAE(data_mean=mean)
    torch.testing.assert_close(torch.sigmoid(conv.output_bias), mean.clamp(1e-4, 1 - 1e-4), rtol=1e-3, atol=1e-6)


# -- ConvHVAE ----------------------------------------------------------------------------------


def test_conv_trunk_follows_tensorflow_same_padding():
    x = torch.zeros(2, 1, 28, 28)
    sizes = []
    for layer in ConvHVAE().q_z2_trunk:
        x = layer(x)
        if isinstance(layer, Conv2dSame):
            sizes.append(tuple(x.shape[-2:]))
    assert sizes == [(14, 14), (7, 7), (4, 4)] and x.shape == (2, 512)
    # TF SAME on a 7x7 input with k = 4, s = 2 pads 1 on the top/left and 2 on the bottom/right
    conv = Conv2dSame(1, 1, 4, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(torch.ones(1, 1, 7, 7))
    assert out[0, 0, 0, 0] == 9 and out[0, 0, -1, -1] == 4


def test_convhvae_bound_is_the_textbook_two_layer_iwae(monkeypatch):
    x = binary_batch(3)
    m = ConvHVAE(data_mean=x.mean(0)).double()
    k = 6
    bank = NoiseBank(2, k, 3, 50)
    monkeypatch.setattr(m, "posterior_noise", bank)
    with torch.no_grad():
        got = m.log_prob_lower_bound(x, k)
        img = (x - m.data_mean).reshape(-1, 1, 28, 28)
        sp = lambda r: torch.nn.functional.softplus(r).clamp_min(1e-5)  # noqa: E731
        mu2, r2 = m.q_z2_head(m.q_z2_trunk(img)).chunk(2, -1)
        z2 = mu2 + sp(r2) * bank.bank[0]
        h = torch.cat([m.q_z1_trunk(img).expand(k, -1, -1), torch.tanh(m.q_z1_from_z2(z2))], -1)
        mu1, r1 = m.q_z1_head(torch.tanh(m.q_z1_hidden(h))).chunk(2, -1)
        z1 = mu1 + sp(r1) * bank.bank[1]
        pm, pr = m.p_z1(z2).chunk(2, -1)
        hx = torch.cat([torch.tanh(m.p_x_from_z1(z1)), torch.tanh(m.p_x_from_z2(z2))], -1)
        hx = torch.tanh(m.p_x_hidden(hx)).reshape(-1, 32, 4, 4)
        hx = torch.relu(m.deconv2(torch.relu(m.deconv1(hx))[:, :, :7, :7]))
        logits = m.deconv3(hx).reshape(k, 3, 784) + m.pixel_bias
        log_w = (
            Bernoulli(logits=logits).log_prob(x).sum(-1)
            + TorchNormal(pm, sp(pr)).log_prob(z1).sum(-1)
            + TorchNormal(0.0, 1.0).log_prob(z2).sum(-1)
            - TorchNormal(mu2, sp(r2)).log_prob(z2).sum(-1)
            - TorchNormal(mu1, sp(r1)).log_prob(z1).sum(-1)
        )
        expected = torch.logsumexp(log_w, 0) - math.log(k)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)


# -- errors ------------------------------------------------------------------------------------


def test_clear_errors():
    vae = VAE()
    with pytest.raises(ValueError, match="binary data"):
        vae.log_prob_lower_bound(torch.full((2, 784), 0.5))
    with pytest.raises(ValueError, match=r"shape \[B, 784\]"):
        vae.log_prob_lower_bound(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="unconditional"):
        vae.log_prob_lower_bound(torch.zeros(2, 784), context=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"density over \[50\]"):
        VAE(prior=Normal(10))
    with pytest.raises(ValueError, match="unknown likelihood"):
        VAE(likelihood="poisson")
    with pytest.raises(ValueError, match="data_dim must be 784"):
        ConvHVAE(data_dim=100)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        vae.log_prob_lower_bound(torch.zeros(2, 784), 0)
    with pytest.raises(ValueError, match="data_scale must be 1"):
        VAE(data_scale=256.0)
    with pytest.raises(ValueError, match="data mean of shape"):
        vae.initialize_from_data(torch.zeros(10))
    # a Gaussian decoder takes continuous data
    cont = VAE(likelihood="gaussian", data_scale=256.0)
    assert cont.log_prob_lower_bound(torch.rand(2, 784) * 256).shape == (2,)
