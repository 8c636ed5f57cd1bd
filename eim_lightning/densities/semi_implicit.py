r"""Semi-implicit variational families (SIVI, IWHVI) whose reverse model is an SNIS EIM (ALGORITHMS.md 4).

The family mixes a conditional Gaussian over a latent mixing variable psi::

    q(z | x) = int q(z | psi, x) q(psi) dpsi,     psi ~ q(psi) (e.g. N(0, I)),
    z | psi, x ~ N(mu(psi, x), diag(sigma(psi, x)^2))           (a ConditionalNormal on [psi, x]).

``log q(z|x)`` is intractable. For a sample z drawn with psi_0, any reverse model r(psi | z, x) gives
``log q(z|x) <= E[log q(z, psi_0 | x) - log r(psi_0 | z, x)]``. Take r the SNIS EIM with proposal
tau(psi | z, x) and energy ``U(psi) = log q(z | psi, x) + log q(psi) - log tau(psi | z, x)`` (SNIS with
this U tends to the exact q(psi | z, x) as K grows), and lower-bound its log-density by L_SNIS with
K - 1 fresh psi_k ~ tau (:func:`~eim_lightning.bounds.snis_lower_bound`)::

    log q(z|x) <~ log q(z, psi_0|x) - L_SNIS(psi_0)
               = log (1/K) sum_{k=0}^{K-1} q(z|psi_k, x) q(psi_k) / tau(psi_k|z, x),

an upper bound in expectation, decreasing in K, so the family serves as a variational posterior
(:meth:`SemiImplicit.rsample_and_log_prob_upper_bound`, used by
:class:`~eim_lightning.densities.eim_posterior_vae.EIMPosteriorVAE`).

* **SIVI** (Yin & Zhou 2018, with the K-sample bound of Molchanov et al. 2019): ``tau = q(psi)``,
  the bound is ``log (1/K) sum_k q(z | psi_k, x)``; K = 1 gives ``log q(z | psi_0, x)``.
* **IWHVI** (Sobolev & Vetrov 2019): a learned ``tau(psi | z, x)`` (a ConditionalNormal on [z, x]);
  with tau the exact q(psi | z, x) the bound is exact for every K.

With ``psi_0`` fresh from tau as well, the same average is an unbiased estimate of ``q(z|x)``, whose
log is the lower bound of :meth:`SemiImplicit.log_prob_replicas`.

Shapes: ``context x [B, Dx]``; samples ``z [n, B, Dz]``; mixing draws ``psi [K, n, B, Dpsi]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..bounds import snis_lower_bound
from ..ops import log_mean_exp
from .base import Density, check_positive_int
from .conditional_normal import ConditionalNormal

__all__ = ["SemiImplicit"]


def _join(a: Tensor, b: Tensor) -> Tensor:
    """``[a, b]`` on the last dimension, ``b`` broadcast over ``a``'s leading dimensions."""
    return torch.cat([a, b.expand(*a.shape[:-1], b.shape[-1]).to(a.dtype)], dim=-1)


class SemiImplicit(Density):
    """Semi-implicit posterior ``q(z|x) = int q(z|psi, x) q(psi) dpsi`` with an SNIS reverse model.

    Args:
        mixing: ``q(psi)``, an exact unconditional density with ``rsample`` and ``log_prob``
            (e.g. ``Normal(psi_dim)``).
        conditional: ``q(z | psi, x)``, a :class:`ConditionalNormal` whose context is ``[psi, x]``.
        reverse: ``tau(psi | z, x)``, a :class:`ConditionalNormal` over psi whose context is
            ``[z, x]`` (IWHVI), or ``None`` for ``tau = q(psi)`` (SIVI).
        num_reverse_samples: K >= 1, the SNIS reverse model's particles.
    """

    def __init__(
        self,
        mixing: Density,
        conditional: ConditionalNormal,
        reverse: ConditionalNormal | None = None,
        num_reverse_samples: int = 16,
        eval_chunk_size: int = 64,
    ) -> None:
        super().__init__(conditional.event_shape, eval_chunk_size)
        if reverse is not None and reverse.event_shape != mixing.event_shape:
            raise ValueError(f"reverse must be over psi {list(mixing.event_shape)}, got {list(reverse.event_shape)}")
        self.mixing, self.conditional, self.reverse = mixing, conditional, reverse
        self.num_reverse_samples = check_positive_int("num_reverse_samples (K)", num_reverse_samples)

    @property
    def family(self) -> str:
        return "sivi" if self.reverse is None else "iwhvi"

    def _draw_reverse(self, m: int, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``m`` draws ``psi ~ tau(.|z, x)`` ``[m, *z.shape[:-1], Dpsi]`` and ``log tau`` ``[m, ...]``."""
        if self.reverse is not None:
            return self.reverse.rsample_and_log_prob(m, _join(z, x))
        batch = z.shape[:-1]
        psi = self.mixing.rsample(m * math.prod(batch[:-1]), x).reshape(m, *batch, *self.mixing.event_shape)
        return psi, self.mixing.log_prob(psi)

    def _log_tau(self, psi: Tensor, z: Tensor, x: Tensor) -> Tensor:
        return self.mixing.log_prob(psi) if self.reverse is None else self.reverse.log_prob(psi, _join(z, x))

    def _log_joint(self, psi: Tensor, z: Tensor, x: Tensor) -> Tensor:
        """``log q(z | psi, x) + log q(psi)``, broadcast over psi's leading dimensions."""
        return self.conditional.log_prob(z, _join(psi, x)) + self.mixing.log_prob(psi)

    def rsample_and_log_prob_upper_bound(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z [n, B, Dz]`` and ``log q_upper(z|x) = log q(z, psi_0|x) - L_SNIS(psi_0)`` ``[n, B]``."""
        x = self.conditional._require_context(context)
        psi0 = self.mixing.rsample(n, x)  # [n, B, Dpsi]
        z = self.conditional.rsample(1, _join(psi0, x))[0]  # [n, B, Dz]
        log_joint0, log_tau0 = self._log_joint(psi0, z, x), self._log_tau(psi0, z, x)
        k1 = self.num_reverse_samples - 1
        if k1 > 0:
            psi, log_tau = self._draw_reverse(k1, z, x)
            u_neg = self._log_joint(psi, z, x) - log_tau  # [K-1, n, B]
        else:
            u_neg = log_joint0.new_empty(0, *log_joint0.shape)
        return z, log_joint0 - snis_lower_bound(log_tau0, log_joint0 - log_tau0, u_neg)

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        """``[m, B]`` replicas of ``log (1/K) sum_k q(z|psi_k, c) q(psi_k) / tau(psi_k|z, c)`` with every
        ``psi_k ~ tau`` (unbiased for ``q(z|c)`` inside the log); here ``x`` is z and ``context`` the data."""
        check_positive_int("num_replicas", num_replicas)
        data = self.conditional._require_context(context)
        k = self.num_reverse_samples
        psi, log_tau = self._draw_reverse(k * num_replicas, x, data)  # [K*m, B, Dpsi]
        log_w = (self._log_joint(psi, x, data) - log_tau).reshape(k, num_replicas, x.shape[0])
        return log_mean_exp(log_w, dim=0)
