r"""Latent-variable models with any density as the prior of their top latent (ALGORITHMS.md 3).

A model has latents ``z_top`` (the prior's) and possibly intermediate ones ``z_rest``, an
inference network ``q(z_top, z_rest | x) = q(z_top | x) q(z_rest | x, z_top)`` and a generative
model ``p(x | z) p(z_rest | z_top) p(z_top)``. One replica of its bound draws
``z ~ q(.|x)`` (reparameterised) and

    l(x) = log p(x | z) + beta [ log p(z_rest | z_top) + log p_prior(z_top)
                                  - log q(z_top | x) - log q(z_rest | x, z_top) ]

where ``log p_prior(z_top)`` is the prior's own one-sample lower bound (an EIM's, with fresh
auxiliaries for every replica; ``log N(z; 0, I)`` for the default prior). ``beta = 1`` gives the
ELBO and ``exp(l)`` is then unbiased for ``p(x)`` whenever the prior's one-sample estimate is
unbiased for its density (Normal, SNIS, HIS, LARS with its exact Z), so
``log_prob_lower_bound(x, S) = log (1/S) sum_s exp(l_s)`` is the IWAE bound (Burda et al. 2016),
streamed in chunks of ``eval_chunk_size`` replicas. ``beta < 1`` (KL warm-up) is for training only.

The prior's term comes from its one hook, :meth:`Density.log_prob_for_elbo`, given the posterior
samples, their ``log q(z_top | x)`` and whether the value enters the training objective
(:meth:`bound_and_diagnostics`), and the model reports the prior's diagnostics as
``prior_<name>``; the model never asks which prior it holds. A **LARS prior** (Bauer & Mnih
2019; ALGORITHMS.md 2.4) uses this to include the reweighted posterior sample in its training
acceptance rate, and its evaluation Z elsewhere; the value is then a log-likelihood *estimate*.

Sampling: ``z_top ~ prior`` (reparameterised where the prior is), intermediate latents from the
generative model, then ``x ~ p(x | z)``; :meth:`rsample` uses the likelihood's reparameterised
sampler (Gumbel straight-through for Bernoulli pixels), so the model can be an EIM's proposal.

The data mean (``initialize_from_data``, called once by the Lightning layer from the
datamodule's ``data_mean``) centres the encoder's input, ``(x - data_mean) / data_scale``, and
initialises the decoder's output bias (logit of the mean for Bernoulli pixels).

Subclasses (:class:`~.vae.VAE`, :class:`~.conv_hvae.ConvHVAE`) supply the networks through
``_infer(x, m)``, ``_generate(z_top, reparameterized)`` and ``output_bias``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.functional import softplus

from .base import Density, check_positive_int, normal_log_prob
from .likelihoods import make_likelihood
from .normal import Normal

__all__ = ["LatentVariableModel", "Inference", "gaussian_from", "normal_log_prob"]


def gaussian_from(out: Tensor, min_scale: float) -> tuple[Tensor, Tensor]:
    """Split a network output ``[..., 2L]`` into a mean and a scale ``max(softplus, min_scale)``."""
    loc, raw = out.chunk(2, dim=-1)
    return loc, softplus(raw).clamp_min(min_scale)


class Inference(NamedTuple):
    """One pass of the inference network: ``m`` replicas for each of ``B`` examples."""

    z_top: Tensor  # [m, B, L] the prior's latent
    log_q_top: Tensor  # [m, B] log q(z_top | x)
    log_q_rest: Tensor  # [m, B] log q(z_rest | x, z_top) (0 without intermediate latents)
    log_p_rest: Tensor  # [m, B] log p(z_rest | z_top)
    decoder_out: Tensor  # [m, B, P * D] parameters of p(x | z)


class LatentVariableModel(Density):
    """Shared machinery of the VAE and the ConvHVAE (see the module docstring).

    Args:
        data_dim: pixels ``D`` (event shape ``[D]``).
        latent_dim: dimension of the prior's latent.
        prior: any density over ``[latent_dim]``; ``None`` means ``N(0, I)``.
        likelihood: ``"bernoulli"`` (binary data) or ``"gaussian"`` (continuous data).
        data_scale: scale of the data (encoder inputs are divided by it; 1 for binary data,
            e.g. 256 for jittered images).
        gumbel_temperature: relaxation temperature of the straight-through Bernoulli sampler.
        min_scale: lower limit of the Gaussian posterior (and conditional prior) scales.
        data_mean: training-set mean (or set later by ``initialize_from_data``).
        eval_chunk_size: replicas evaluated at once.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        prior: Density | None = None,
        likelihood: str = "bernoulli",
        data_scale: float = 1.0,
        gumbel_temperature: float = 0.7,
        min_scale: float = 1e-5,
        data_mean: Tensor | None = None,
        eval_chunk_size: int = 64,
    ) -> None:
        check_positive_int("data_dim", data_dim)
        check_positive_int("latent_dim", latent_dim)
        super().__init__((data_dim,), eval_chunk_size)
        prior = Normal(latent_dim) if prior is None else prior
        if tuple(prior.event_shape) != (latent_dim,):
            raise ValueError(
                f"the prior must be a density over [{latent_dim}] (latent_dim), but {type(prior).__name__} "
                f"has event shape {list(prior.event_shape)}"
            )
        self.latent_dim, self.min_scale = latent_dim, min_scale
        self.prior = prior
        self.likelihood = make_likelihood(likelihood, gumbel_temperature, data_scale)
        self.data_scale = float(data_scale)
        self.register_buffer("data_mean", torch.zeros(data_dim))
        self.register_buffer("initialized_from_data", torch.tensor(False))
        self._pending_data_mean = data_mean

    def _finish_init(self) -> None:
        """Subclasses call this once their networks exist."""
        if self._pending_data_mean is not None:
            self.initialize_from_data(self._pending_data_mean)
        del self._pending_data_mean

    @property
    def compile_min_steps(self) -> int | None:  # type: ignore[override]
        """Compiling the model's training bound pays where it pays for its prior (an HIS prior's
        leapfrog); :class:`~.vae.VAE` adds its own networks' gain."""
        return self.prior.compile_min_steps

    # -- subclass API ------------------------------------------------------------------------

    @property
    def output_bias(self) -> Tensor:
        """The decoder's per-pixel output bias (initialised from the data mean)."""
        raise NotImplementedError

    def _infer(self, x: Tensor, m: int) -> Inference:
        raise NotImplementedError

    def _generate(self, z_top: Tensor, reparameterized: bool) -> Tensor:
        """Decoder output ``[n, P * D]`` from prior latents ``[n, L]``."""
        raise NotImplementedError

    def posterior_noise(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Standard normal noise of the reparameterised posterior (one place to fix it in tests)."""
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def encoder_input(self, x: Tensor) -> Tensor:
        return (x - self.data_mean) / self.data_scale

    # -- data ------------------------------------------------------------------------------

    @torch.no_grad()
    def initialize_from_data(self, data_mean: Tensor) -> None:
        """Centre the encoder on ``data_mean`` and, the first time only, set the output bias
        from it (so a resumed or re-fitted model keeps its trained bias)."""
        mean = torch.as_tensor(data_mean, dtype=self.data_mean.dtype, device=self.data_mean.device)
        if mean.numel() != self.data_mean.numel():
            raise ValueError(
                f"{type(self).__name__} models {self.data_mean.numel()} pixels but got a data mean of shape "
                f"{list(mean.shape)}"
            )
        self.data_mean.copy_(mean.reshape(-1))
        if not bool(self.initialized_from_data):
            self.likelihood.init_output_bias(self.output_bias, self.data_mean)
            self.initialized_from_data.fill_(True)

    def check_input(self, x: Tensor, context: Tensor | None = None) -> None:
        if context is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: it takes no context")
        super().check_input(x, context)

    def check_values(self, x: Tensor) -> None:
        super().check_values(x)
        self.likelihood.check(x, type(self).__name__)

    # -- the bound ---------------------------------------------------------------------------

    def _log_weights(self, x: Tensor, m: int, objective: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(log p(x|z), log p(z) - log q(z|x))``, each ``[m, B]``, and the prior's diagnostics."""
        inf = self._infer(x, m)
        log_lik = self.likelihood.log_prob(x, inf.decoder_out)
        log_prior, prior_diag = self.prior.log_prob_for_elbo(inf.z_top, inf.log_q_top, objective)
        return log_lik, inf.log_p_rest + log_prior - inf.log_q_top - inf.log_q_rest, prior_diag

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        check_positive_int("num_replicas", num_replicas)
        if context is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: it takes no context")
        if self.checks_values():  # also when this model is an EIM's proposal called on its own
            self.likelihood.check(x, type(self).__name__)
        log_lik, log_ratio, _ = self._log_weights(x, num_replicas, objective=False)
        return log_lik + log_ratio

    def bound_and_diagnostics(self, x: Tensor, context: Tensor | None = None, beta: float = 1.0):
        """Training objective ``log p(x|z) + beta (log p(z) - log q(z|x))`` ``[B]`` (the ELBO at
        ``beta = 1``); diagnostics: the ELBO, its reconstruction term, its KL term and the
        prior's diagnostics (``prior_<name>``)."""
        self.check_input(x, context)
        log_lik, log_ratio, prior_diag = self._log_weights(x, 1, objective=True)
        objective = log_lik[0] + beta * log_ratio[0]
        with torch.no_grad():
            diag = {"elbo": log_lik[0] + log_ratio[0], "log_likelihood": log_lik[0], "kl": -log_ratio[0]}
            if beta != 1.0:
                diag["beta"] = torch.tensor(float(beta))
            diag.update({f"prior_{name}": value for name, value in prior_diag.items()})
        return objective, diag

    # -- sampling ------------------------------------------------------------------------------

    def _prior_draw(self, n: int, reparameterized: bool) -> Tensor:
        has_rsample = type(self.prior).rsample is not Density.rsample
        if reparameterized and has_rsample:
            return self.prior.rsample(n)
        return self.prior.sample(n)

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """``[n, D]`` exact samples, differentiable in the decoder (and in the prior where it is
        reparameterised): Gumbel straight-through for Bernoulli pixels."""
        self._sample_shape(n, context)
        if context is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: it takes no context")
        return self.likelihood.rsample(self._generate(self._prior_draw(n, True), True))

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """``[n, D]`` exact samples, without gradient."""
        self._sample_shape(n, context)
        if context is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: it takes no context")
        with torch.no_grad():
            return self.likelihood.sample(self._generate(self._prior_draw(n, False), False))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean of ``p(x | z)`` at one posterior sample ``z ~ q(z | x)``: ``[B, D]``."""
        return self.likelihood.mean(self._infer(x, 1).decoder_out[0])

    @torch.no_grad()
    def sample_means(self, n: int) -> Tensor:
        """Means of ``p(x | z)`` at ``n`` prior draws (smoother pictures than binary samples)."""
        return self.likelihood.mean(self._generate(self._prior_draw(n, False), False))
