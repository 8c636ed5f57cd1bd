r"""IWAE: the importance-weighted bound (Burda et al. 2016) and its EIM reading (ALGORITHMS.md 4).

With particles ``z_1..z_K ~ q0(z | x)`` (reparameterised) and weights ``w_k = p(x, z_k) / q0(z_k | x)``,

    L_K(x) = E[ log (1/K) sum_k w_k ]  <=  log p(x).

**Unification.** IWAE is the ELBO of the model with an SNIS posterior (proposal q0, energy
``U(z; x) = log w(z)``, :class:`LogImportanceWeight`) whose selected index is summed analytically
(:class:`~eim_lightning.densities.eim_posterior_vae.EIMPosteriorVAE`)::

    sum_k s_k (log w_k - log s_k) - log K  =  log (1/K) sum_k w_k      for  s = softmax(log w),

on the very same particles; :meth:`IWAE.as_snis_posterior` builds that model. K = 1 is the ELBO.

**Gradients.** ``gradient_estimator="standard"`` differentiates ``log (1/K) sum_k w_k`` pathwise.
``"dreg"`` (doubly reparameterised, Tucker, Lawson, Gu & Maddison 2018) replaces the encoder's
gradient by its lower-variance unbiased form

    grad_phi = sum_k  wt_k^2  d log w_k / d z_k  dz_k / dphi,    wt = softmax(log w)  (held fixed),

with ``log q0`` evaluated at fixed parameters, while the model keeps ``sum_k wt_k grad_theta log w_k``.
It is implemented by a surrogate whose *value* is the bound: the per-particle gradient reaching
``z_k`` is multiplied by ``wt_k`` (a tensor hook), so ``sum_k wt_k log w_k`` gives the model
``wt_k`` and the encoder ``wt_k^2``. Evaluation (no gradient) is the same for both.

The proposal must offer ``rsample_and_log_prob(n, context, detach_params)``
(:class:`~eim_lightning.densities.ConditionalNormal`); the model the latent-model protocol of
:mod:`.linear_gaussian`. Shapes: ``x [B, Dx]``; particles ``[K, m, B, Dz]``; bounds ``[B]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..ops import as_float32_or_wider, log_mean_exp
from .base import Density, check_positive_int
from .eim_posterior_vae import EIMPosteriorVAE, check_latent_model
from .snis import SNIS

__all__ = ["IWAE", "LogImportanceWeight", "GRADIENT_ESTIMATORS"]

GRADIENT_ESTIMATORS = ("standard", "dreg")


class LogImportanceWeight(nn.Module):
    """The energy ``U(z; x) = log p(x, z) - log q0(z | x)`` that makes SNIS-in-q the IWAE bound.

    Called as ``net(z, x)`` (the data is the context), like any conditional energy."""

    def __init__(self, model: Density, proposal: Density) -> None:
        super().__init__()
        self.model, self.proposal = model, proposal

    def forward(self, z: Tensor, context: Tensor) -> Tensor:
        return self.model.log_joint(context, z) - self.proposal.log_prob(z, context)


class IWAE(Density):
    """Importance-weighted lower bound on ``log p(x)`` of a latent-variable model.

    Args:
        model: latent-variable model (``log_joint(x, z)``, ``latent_dim``, ``event_shape``).
        proposal: the encoder ``q0(z | x)``, e.g. a :class:`~eim_lightning.densities.ConditionalNormal`.
        num_particles: K >= 1.
        gradient_estimator: ``"standard"`` or ``"dreg"``.
        eval_chunk_size: replicas evaluated at once by ``log_prob_lower_bound``.
    """

    def __init__(
        self,
        model: Density,
        proposal: Density,
        num_particles: int = 16,
        gradient_estimator: Literal["standard", "dreg"] = "standard",
        eval_chunk_size: int = 64,
    ) -> None:
        check_latent_model(model, proposal, type(self).__name__)
        super().__init__(model.event_shape, eval_chunk_size)
        if not callable(getattr(proposal, "rsample_and_log_prob", None)):
            raise TypeError(
                f"IWAE needs a proposal with rsample_and_log_prob(n, context, detach_params) "
                f"(e.g. ConditionalNormal), got {type(proposal).__name__}"
            )
        if gradient_estimator not in GRADIENT_ESTIMATORS:
            raise ValueError(
                f"gradient_estimator must be one of {list(GRADIENT_ESTIMATORS)}, got {gradient_estimator!r}"
            )
        self.model, self.proposal = model, proposal
        self.num_particles = check_positive_int("num_particles (K)", num_particles)
        self.gradient_estimator = gradient_estimator

    def _draw(self, x: Tensor, num_replicas: int, detach_proposal_params: bool) -> tuple[Tensor, Tensor, Tensor]:
        k, batch = self.num_particles, x.shape[0]
        flat, log_q = self.proposal.rsample_and_log_prob(
            k * num_replicas, context=x, detach_params=detach_proposal_params
        )
        z = flat.reshape(k, num_replicas, batch, *flat.shape[2:])
        return flat, z, self.model.log_joint(x, z) - log_q.reshape(k, num_replicas, batch)

    def log_weights(
        self, x: Tensor, num_replicas: int = 1, detach_proposal_params: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Particles ``z [K, m, B, Dz]`` and their log-weights ``log w [K, m, B]``.

        The particles are drawn exactly as :meth:`SNIS.rsample_particles` draws them (one
        ``rsample`` of ``K * m``), so both see the same randomness under the same seed."""
        return self._draw(x, num_replicas, detach_proposal_params)[1:]

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        """``[m, B]`` replicas of ``log (1/K) sum_k w_k``."""
        if context is not None:
            raise ValueError("IWAE is unconditional: the data is the proposal's context")
        return log_mean_exp(self.log_weights(x, num_replicas)[1], dim=0)

    def _dreg_bound(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat, _, log_w = self._draw(x, 1, detach_proposal_params=True)
        weights = torch.softmax(as_float32_or_wider(log_w.detach()), dim=0).to(log_w.dtype)  # wt, held fixed
        if flat.requires_grad:
            # on the tensor the proposal returned: both log p(x, z) and log q0(z|x) reach z through it
            flat.register_hook(lambda grad: grad * weights.reshape(*flat.shape[:2], 1))
        surrogate = (weights * log_w).sum(0)
        value = log_mean_exp(log_w.detach(), dim=0)
        return (value + (surrogate - surrogate.detach()))[0], weights

    def bound_and_diagnostics(self, x: Tensor, context: Tensor | None = None, diagnostics: bool = True):
        """Training bound ``[B]`` (its gradient is DReG's with ``gradient_estimator="dreg"``) and
        the effective sample size ``1 / sum_k wt_k^2`` of the normalised weights."""
        self.check_input(x, context)
        if context is not None:
            raise ValueError("IWAE is unconditional: the data is the proposal's context")
        if self.gradient_estimator == "dreg" and torch.is_grad_enabled():
            bound, weights = self._dreg_bound(x)
        else:
            _, log_w = self.log_weights(x, 1)
            bound = log_mean_exp(log_w, dim=0)[0]
            weights = torch.softmax(as_float32_or_wider(log_w.detach()), dim=0)
        return bound, {"ess": (1.0 / weights.square().sum(0)).mean()} if diagnostics else {}

    def as_snis_posterior(self) -> EIMPosteriorVAE:
        """The same bound read as an EIM: the model with an SNIS posterior (proposal q0, energy
        ``log w``, K particles, selected index summed analytically). Shares all parameters."""
        energy = LogImportanceWeight(self.model, self.proposal)
        snis = SNIS(self.proposal, energy, num_proposals=self.num_particles, share_proposal_samples=False)
        return EIMPosteriorVAE(self.model, snis, eval_chunk_size=self.eval_chunk_size)

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Samples of the model ``x ~ p(x)``."""
        return self.model.rsample(n, context)

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        return self.model.log_unnormalized_density(x)
