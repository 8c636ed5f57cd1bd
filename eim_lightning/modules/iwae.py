r"""LightningModule: IWAE (Burda et al. 2016), trained on

    L_K(x) = E[ log (1/K) sum_k p(x, z_k) / q0(z_k | x) ],   z_k ~ q0(z | x),

which is the EIM-posterior ELBO ``E[sum_k s_k (log w_k - log s_k)] - log K`` of an SNIS
posterior with energy ``U = log w`` (ALGORITHMS.md 4; ``module.density.as_snis_posterior()``).
``gradient_estimator="dreg"`` trains the encoder with the doubly reparameterised gradient
(Tucker et al. 2018; unbiased, lower variance for large K).

``IWAE(data_dim=8, latent_dim=2)`` builds a learnable linear-Gaussian model and a Gaussian
encoder (MLP, tanh). ``module.density`` is the layer-2 :class:`eim_lightning.densities.IWAE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L

from .. import densities
from ..densities.iwae import IWAE as IWAEDensity
from .eim_posterior_vae import default_encoder, default_latent_model
from .mixin import BoundEstimatorMixin, resolve_density

__all__ = ["IWAE"]


class IWAE(BoundEstimatorMixin, L.LightningModule):
    """Importance-weighted autoencoder.

    Args:
        data_dim: dimension of x (ignored when ``model`` or ``density`` is given).
        latent_dim: dimension of z (likewise).
        num_particles: K.
        gradient_estimator: ``"standard"`` or ``"dreg"``.
        hidden_sizes: hidden layers of the default encoder.
        model: the latent-variable model (default: learnable linear-Gaussian); an image
            :class:`~eim_lightning.densities.VAE` with an ``N(0, I)`` prior works too.
        encoder: q0(z|x) with ``rsample_and_log_prob`` (default: the model's own encoder where it
            has one, as the image VAE does; else a Gaussian, MLP).
        density: a ready :class:`eim_lightning.densities.IWAE` (then no parts).
        **kwargs: estimator options of :class:`BoundEstimatorMixin`.
    """

    def __init__(
        self,
        data_dim: int = 8,
        latent_dim: int = 2,
        num_particles: int = 16,
        gradient_estimator: Literal["standard", "dreg"] = "standard",
        hidden_sizes: Sequence[int] = (32, 32),
        model: densities.Density | None = None,
        encoder: densities.Density | None = None,
        density: IWAEDensity | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["model", "encoder", "density"])

        def build() -> IWAEDensity:
            latent = default_latent_model(data_dim, latent_dim, model)
            q0 = default_encoder(latent, hidden_sizes, encoder)
            return IWAEDensity(latent, q0, num_particles=num_particles, gradient_estimator=gradient_estimator)

        self.density = resolve_density(density, {"model": model, "encoder": encoder}, build)
