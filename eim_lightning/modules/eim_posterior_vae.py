r"""LightningModule: a latent-variable model whose variational posterior is an EIM (ALGORITHMS.md 4),
trained on the ELBO with the EIM's upper bound on ``log q`` plugged in:

    log p(x) >= E_q[ sum_m s_m ( log p(x, z_m) - log_q_upper(z_m | x) ) ].

SNIS in q (``posterior_family="snis"``: proposal q0(z|x), energy U(z; x), the selected index
summed analytically) gives ``E[sum_k s_k (log w_k - log s_k)] - log K``, which is IWAE for
``U = log p(x, z) - log q0(z|x)``; HIS in q (``"his"``) with potential ``-log p(x, z)`` and
``r(rho_T|z_T) = N(0, I)`` is the Hamiltonian VAE; ``"sivi"`` / ``"iwhvi"`` are semi-implicit
posteriors whose reverse model is an SNIS EIM over the mixing variable (K = ``num_proposals``;
:mod:`eim_lightning.densities.semi_implicit`); ``"gaussian"`` is the plain VAE (ELBO).

``EIMPosteriorVAE(data_dim=8, latent_dim=2)`` builds a learnable linear-Gaussian model (whose
exact ``log p(x)`` the bound can be checked against), a Gaussian encoder q0(z|x) (MLP, tanh) and
the chosen posterior. Pass ``model`` (any latent model with ``log_joint``), ``encoder`` or a ready
``posterior`` / ``density`` for custom use. ``module.density`` is the layer-2
:class:`eim_lightning.densities.EIMPosteriorVAE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L
from torch import nn

from .. import densities
from ..densities.conditional_normal import ConditionalNormal
from ..densities.eim_posterior_vae import EIMPosteriorVAE as EIMPosteriorVAEDensity
from ..densities.eim_posterior_vae import NegativeLogJoint
from ..densities.linear_gaussian import LinearGaussianModel
from ..densities.semi_implicit import SemiImplicit
from ..nn import MLP
from .mixin import BoundEstimatorMixin, resolve_density

__all__ = ["EIMPosteriorVAE", "default_latent_model", "default_encoder", "POSTERIOR_FAMILIES"]

POSTERIOR_FAMILIES = ("snis", "his", "sivi", "iwhvi", "gaussian")


def default_latent_model(data_dim: int, latent_dim: int, model: densities.Density | None) -> densities.Density:
    """``model``, or a learnable linear-Gaussian model ``data_dim <- latent_dim``."""
    return model if model is not None else LinearGaussianModel(data_dim, latent_dim)


def default_encoder(
    model: densities.Density, hidden_sizes: Sequence[int], encoder: densities.Density | None
) -> densities.Density:
    """``encoder``; else the model's own inference network where it has one (an image
    :class:`~eim_lightning.densities.VAE`'s ``encoder_density()``); else a Gaussian q0(z|x)
    whose mean and scale come from a tanh MLP of x."""
    if encoder is not None:
        return encoder
    if callable(getattr(model, "encoder_density", None)):
        return model.encoder_density()
    data_dim, latent_dim = model.event_shape[0], model.latent_dim
    return ConditionalNormal(MLP(data_dim, list(hidden_sizes), 2 * latent_dim), latent_dim)


class EIMPosteriorVAE(BoundEstimatorMixin, L.LightningModule):
    """A VAE whose posterior q(z|x) is an EIM (SNIS or HIS), semi-implicit (SIVI, IWHVI) or a Gaussian.

    Args:
        data_dim: dimension of x (ignored when ``model`` or ``density`` is given).
        latent_dim: dimension of z (likewise).
        posterior_family: ``"snis"``, ``"his"``, ``"sivi"``, ``"iwhvi"`` or ``"gaussian"``.
        num_proposals: K of the SNIS posterior, or of the semi-implicit families' SNIS reverse model.
        T: leapfrog steps of the HIS posterior.
        hidden_sizes: hidden layers of the encoder and of the learned energy / potential /
            momentum networks (tanh MLPs, each also fed x).
        his_potential: ``"model"`` (``E = -log p(x, z)``, the Hamiltonian VAE) or ``"learned"``.
        his_momentum: ``"standard_normal"`` (``r = N(0, I)``, the Hamiltonian VAE) or ``"learned"``.
        step_size_init, alpha_init: HIS leapfrog step size and tempering, initially.
        mixing_dim: dimension of the semi-implicit families' mixing variable (default: latent_dim).
        model: the latent-variable model (default: learnable linear-Gaussian); an image
            :class:`~eim_lightning.densities.VAE` with an ``N(0, I)`` prior works too.
        encoder: the proposal q0(z|x) of the EIM posterior (default: the model's own encoder where
            it has one, as the image VAE does; else a Gaussian, MLP).
        posterior: a ready posterior density over z (then no encoder or family options).
        density: a ready :class:`eim_lightning.densities.EIMPosteriorVAE` (then no parts).
        **kwargs: estimator options of :class:`BoundEstimatorMixin` (lr, num_test_samples, ...).
    """

    def __init__(
        self,
        data_dim: int = 8,
        latent_dim: int = 2,
        posterior_family: Literal["snis", "his", "sivi", "iwhvi", "gaussian"] = "snis",
        num_proposals: int = 16,
        T: int = 5,
        hidden_sizes: Sequence[int] = (32, 32),
        his_potential: Literal["model", "learned"] = "model",
        his_momentum: Literal["standard_normal", "learned"] = "standard_normal",
        step_size_init: float = 0.1,
        alpha_init: float = 0.995,
        mixing_dim: int | None = None,
        model: densities.Density | None = None,
        encoder: densities.Density | None = None,
        posterior: densities.Density | None = None,
        density: EIMPosteriorVAEDensity | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["model", "encoder", "posterior", "density"])
        if posterior_family not in POSTERIOR_FAMILIES:
            raise ValueError(f"posterior_family must be one of {list(POSTERIOR_FAMILIES)}, got {posterior_family!r}")
        if his_potential not in ("model", "learned") or his_momentum not in ("standard_normal", "learned"):
            raise ValueError(
                f"his_potential must be 'model' or 'learned' and his_momentum 'standard_normal' or 'learned', "
                f"got {his_potential!r}, {his_momentum!r}"
            )

        def build_posterior(latent: densities.Density) -> densities.Density:
            dz, dx = latent.latent_dim, latent.event_shape[0]
            if posterior_family in ("sivi", "iwhvi"):
                if encoder is not None:
                    raise ValueError(
                        "the semi-implicit families build their own networks; pass a ready posterior instead"
                    )
                dpsi = mixing_dim or dz
                conditional = ConditionalNormal(MLP(dpsi + dx, list(hidden_sizes), 2 * dz), dz)
                reverse = (
                    ConditionalNormal(MLP(dz + dx, list(hidden_sizes), 2 * dpsi), dpsi)
                    if posterior_family == "iwhvi"
                    else None
                )
                return SemiImplicit(densities.Normal(dpsi), conditional, reverse, num_reverse_samples=num_proposals)
            q0 = default_encoder(latent, hidden_sizes, encoder)
            if posterior_family == "gaussian":
                return q0
            if posterior_family == "snis":
                energy = MLP(dz, list(hidden_sizes), 1, context_dim=dx)
                return densities.SNIS(q0, energy, num_proposals=num_proposals, share_proposal_samples=False)
            potential: nn.Module = (
                NegativeLogJoint(latent) if his_potential == "model" else MLP(dz, list(hidden_sizes), 1, context_dim=dx)
            )
            momentum = (
                None if his_momentum == "standard_normal" else MLP(dz, list(hidden_sizes), 2 * dz, context_dim=dx)
            )
            return densities.HIS(q0, potential, momentum, T=T, step_size_init=step_size_init, alpha_init=alpha_init)

        def build() -> EIMPosteriorVAEDensity:
            latent = default_latent_model(data_dim, latent_dim, model)
            if posterior is not None and encoder is not None:
                raise ValueError("pass either a ready posterior or an encoder for the default one, not both")
            return EIMPosteriorVAEDensity(latent, posterior if posterior is not None else build_posterior(latent))

        self.density = resolve_density(density, {"model": model, "encoder": encoder, "posterior": posterior}, build)
