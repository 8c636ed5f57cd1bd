r"""A latent-variable model trained with an EIM as its variational posterior (ALGORITHMS.md 4).

For a model p(x, z) and a conditional EIM q(z|x) with auxiliaries lambda, any reverse model
r(lambda|z) gives

    log p(x) >= E_{q(z, lambda | x)}[ log p(x, z) + log r(lambda | z) - log q(z, lambda | x) ]
             =  E_q[ log p(x, z) - log q_upper(z | x) ],

the ELBO with the EIM's *upper* bound on ``log q`` plugged in. The posterior supplies it through
:meth:`~eim_lightning.densities.base.Density.rsample_particles`: M weighted reparameterised
particles per sample, ``E_q[f] = E[sum_m s_m f(z_m)]``, so one replica of the bound is

    l(x) = sum_m s_m ( log p(x, z_m) - log_q_upper_m ).

* **SNIS in q** (proposal q0(z|x), energy U(z; x), K particles, selected index summed
  analytically): ``l = sum_k s_k (log w_k - log s_k) - log K`` with ``w_k = p(x, z_k)/q0(z_k|x)``,
  ``s = softmax(U)``. With ``U = log w`` this is ``log (1/K) sum_k w_k``: the IWAE bound
  (:class:`~eim_lightning.densities.iwae.IWAE`); any other U is still a bound.
* **HIS in q** (proposal q0(z|x), potential E(z; x), momentum model r(rho_T|z_T)):
  ``l = log p(x, z_T) + log r(rho_T|z_T) - log q0(z_0|x) - log N(rho_0; 0, I)``. With
  ``E = -log p(x, z)`` (:class:`NegativeLogJoint`) and ``r = N(0, I)`` this is the Hamiltonian
  VAE bound (Salimans et al. 2015; Caterini et al. 2018); with T = 0 it is the ELBO.
* **An exact q** (:class:`~eim_lightning.densities.conditional_normal.ConditionalNormal`): the ELBO.

``exp(l)`` has expectation <= p(x) (Jensen over the particles), so evaluation combines S replicas
IWAE-style, ``log (1/S) sum_s exp(l_s)``, still a lower bound in expectation.

The model follows the latent-model protocol of :mod:`.linear_gaussian` (``log_joint(x, z)``,
``latent_dim``, ``event_shape``); the posterior is any density over ``[latent_dim]`` that takes
the data as its ``context``. Shapes: ``x [B, Dx]``, bounds ``[B]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Density

__all__ = ["EIMPosteriorVAE", "NegativeLogJoint", "check_latent_model"]


def check_latent_model(model: Density, posterior: Density, owner: str) -> None:
    """Raise unless ``model`` has ``log_joint`` and ``latent_dim`` and ``posterior`` is over ``[latent_dim]``."""
    if not callable(getattr(model, "log_joint", None)) or not hasattr(model, "latent_dim"):
        raise TypeError(f"{owner}: the model must offer log_joint(x, z) and latent_dim, got {type(model).__name__}")
    if posterior.event_shape != torch.Size([model.latent_dim]):
        raise ValueError(
            f"{owner}: the posterior must be over the model's latent [{model.latent_dim}], "
            f"got event shape {list(posterior.event_shape)}"
        )


class NegativeLogJoint(nn.Module):
    """The potential ``E(z; x) = -log p(x, z)`` of a model: HIS in q with it is the Hamiltonian VAE.

    Called as ``net(z, x)`` (the data is the context), like any conditional potential."""

    def __init__(self, model: Density) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor, context: Tensor) -> Tensor:
        return -self.model.log_joint(context, z)


class EIMPosteriorVAE(Density):
    """``p(x) = int p(x, z) dz`` lower-bounded with an EIM (or any variational family) as q(z|x).

    Args:
        model: latent-variable model with ``log_joint(x, z)``, ``latent_dim``, ``event_shape``
            (e.g. :class:`~eim_lightning.densities.LinearGaussianModel`).
        posterior: density over ``[latent_dim]`` conditioned on ``context=x`` that offers
            ``rsample_particles`` (SNIS) or ``rsample_and_log_prob_upper_bound`` (HIS,
            ConditionalNormal).
        eval_chunk_size: replicas evaluated at once by ``log_prob_lower_bound``.
    """

    def __init__(self, model: Density, posterior: Density, eval_chunk_size: int = 64) -> None:
        check_latent_model(model, posterior, type(self).__name__)
        super().__init__(model.event_shape, eval_chunk_size)
        self.model = model
        self.posterior = posterior

    def _replicas_and_weights(self, x: Tensor, num_replicas: int) -> tuple[Tensor, Tensor]:
        particles = self.posterior.rsample_particles(num_replicas, context=x)  # z [M, m, B, Dz]
        log_joint = self.model.log_joint(x, particles.z)  # [M, m, B]
        s = particles.log_s.exp()
        return (s * (log_joint - particles.log_q_upper)).sum(0), s

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        """``[m, B]`` replicas of ``l(x) = sum_m s_m (log p(x, z_m) - log_q_upper_m)``."""
        if context is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: the data is the posterior's context")
        return self._replicas_and_weights(x, num_replicas)[0]

    def bound_and_diagnostics(self, x: Tensor, context: Tensor | None = None, diagnostics: bool = True):
        """Training bound ``[B]``; with several particles, the ESS ``1 / sum_m s_m^2`` of their weights."""
        self.check_input(x, context)
        if context is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: the data is the posterior's context")
        bound, s = self._replicas_and_weights(x, 1)
        if not diagnostics or s.shape[0] == 1:
            return bound[0], {}
        return bound[0], {"posterior_ess": (1.0 / s.detach().square().sum(0)).mean()}

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Samples of the model ``x ~ p(x)`` (prior, then likelihood)."""
        return self.model.rsample(n, context)

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        return self.model.log_unnormalized_density(x)
