r"""LightningModule: the two-stochastic-layer convolutional VAE (ALGORITHMS.md 3) with any prior
on its top latent ``z2``, trained on

    log p(x | z1, z2) + beta [ log p(z1 | z2) + log p_prior(z2) - log q(z2 | x) - log q(z1 | x, z2) ]

It is the :class:`~.vae.VAE` module (same training step, KL warm-up, evaluation and logging)
around the layer-2 :class:`eim_lightning.densities.ConvHVAE` instead of the MLP VAE: a thin
subclass rather than a copy. ``module.density`` is usable as a pixel-space EIM's proposal.
"""

from __future__ import annotations

from .. import densities
from .vae import VAE

__all__ = ["ConvHVAE"]


class ConvHVAE(VAE):
    """Convolutional hierarchical VAE with any prior on the top latent.

    Args:
        data_dim: 784 (28x28 images; anything else is an error).
        latent_dim: dimension of each latent layer (50).
        channels: convolution channels (32).
        eval_chunk_size: replicas evaluated at once at validation and test (16).
        **kwargs: ``prior``, ``likelihood``, ``data_scale``, ``gumbel_temperature``,
            ``kl_warmup_steps``, ``density`` (a ready :class:`eim_lightning.densities.ConvHVAE`)
            and the estimator options, as for :class:`~.vae.VAE`.
    """

    def __init__(
        self, data_dim: int = 784, latent_dim: int = 50, channels: int = 32, eval_chunk_size: int = 16, **kwargs
    ) -> None:
        self._channels = channels
        super().__init__(data_dim=data_dim, latent_dim=latent_dim, eval_chunk_size=eval_chunk_size, **kwargs)

    def _build_density(self, data_dim: int, latent_dim: int, hidden_sizes, prior, **options) -> densities.ConvHVAE:
        return densities.ConvHVAE(data_dim, latent_dim, prior, self._channels, **options)
