r"""LightningModule: a VAE whose prior is any density (ALGORITHMS.md 3), trained on

    log p(x | z) + beta [ log p_prior(z) - log q(z | x) ],    z ~ q(z | x),

with ``log p_prior`` the prior's one-sample lower bound (an EIM's; a LARS prior's estimate, its Z
including the reweighted posterior sample) and ``beta`` a linear KL warm-up from 0 to 1 over
``kl_warmup_steps`` optimiser steps (off by default; ``beta = 1`` is the ELBO). Validation uses the
``num_val_samples``-replica IWAE bound, test the paper's 1000-replica bound (``test/bound``),
streamed in chunks of the density's ``eval_chunk_size`` replicas so memory does not grow with the
number of samples. With a LARS prior the value is an estimate (Z is estimated) and is logged as
``*/log_prob_estimate``.

``VAE()`` is the paper's: 784-300-300-50 tanh encoder and decoder, Bernoulli pixels, N(0, I)
prior. ``VAE(prior=eim_lightning.densities.SNIS(...))`` is "VAE w/ SNIS prior" (likewise TRS,
HIS, LARS). ``module.density`` is the layer-2 :class:`eim_lightning.densities.VAE`; it can be
passed as the ``proposal`` of a pixel-space SNIS/TRS/LARS/HIS module.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from .. import densities
from .mixin import BoundEstimatorMixin, resolve_density

__all__ = ["VAE", "kl_weight", "bound_name_of"]


def bound_name_of(density: densities.Density) -> str:
    """``"log_prob_estimate"`` when a LARS density (whose Z is estimated) is part of the model,
    else ``"bound"``: the name under which the mixin logs its value."""
    return "log_prob_estimate" if any(isinstance(m, densities.LARS) for m in density.modules()) else "bound"


def kl_weight(step: int, warmup_steps: int) -> float:
    """Linear KL warm-up: ``min(1, step / warmup_steps)``; 1 when ``warmup_steps == 0``."""
    if warmup_steps < 0:
        raise ValueError(f"kl_warmup_steps must be >= 0, got {warmup_steps}")
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


class VAE(BoundEstimatorMixin, L.LightningModule):
    """Variational autoencoder with any prior.

    Args:
        data_dim: pixels (784).
        latent_dim: latent dimension (50).
        hidden_sizes: encoder and decoder hidden layers (300, 300).
        prior: density over ``[latent_dim]`` (default N(0, I)).
        likelihood: ``"bernoulli"`` (binary images) or ``"gaussian"`` (continuous images).
        data_scale: encoder inputs are ``(x - data_mean) / data_scale`` (256 for jittered images).
        gumbel_temperature: of the straight-through Bernoulli sampler (0.7).
        kl_warmup_steps: linear KL warm-up length in steps (0: off; the paper's optional 1e5).
        eval_chunk_size: replicas evaluated at once at validation and test.
        density: a ready :class:`eim_lightning.densities.VAE` (or ``ConvHVAE``), then no prior.
        **kwargs: estimator options of :class:`BoundEstimatorMixin` (lr, lr_milestones, ...).
    """

    def __init__(
        self,
        data_dim: int = 784,
        latent_dim: int = 50,
        hidden_sizes: Sequence[int] = (300, 300),
        prior: densities.Density | None = None,
        likelihood: str = "bernoulli",
        data_scale: float = 1.0,
        gumbel_temperature: float = 0.7,
        kl_warmup_steps: int = 0,
        eval_chunk_size: int = 64,
        density: densities.LatentVariableModel | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["prior", "density"])
        kl_weight(0, kl_warmup_steps)
        self.kl_warmup_steps = kl_warmup_steps
        options = dict(
            likelihood=likelihood,
            data_scale=data_scale,
            gumbel_temperature=gumbel_temperature,
            eval_chunk_size=eval_chunk_size,
        )
        self.density = resolve_density(
            density, {"prior": prior}, lambda: self._build_density(data_dim, latent_dim, hidden_sizes, prior, **options)
        )
        self.bound_name = bound_name_of(self.density)

    def _build_density(self, data_dim: int, latent_dim: int, hidden_sizes, prior, **options) -> densities.VAE:
        return densities.VAE(data_dim, latent_dim, hidden_sizes, prior, **options)

    def training_bound(self, batch):
        beta = kl_weight(self.global_step, self.kl_warmup_steps)
        return self.density.bound_and_diagnostics(self.unpack_batch(batch), beta=beta)

    def step_is_stationary(self) -> bool:
        """The KL weight ``beta`` changes at every step of the warm-up: a CUDA graph serves the
        steps after it (``beta = 1``)."""
        return self.global_step >= self.kl_warmup_steps
