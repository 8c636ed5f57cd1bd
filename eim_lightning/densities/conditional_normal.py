r"""Conditional diagonal Gaussian ``q(z | c) = N(z; mu(c), diag(sigma(c)^2))``: amortised posteriors.

A network maps the context (for a posterior q0(z|x): the data point) to the mean and the
pre-softplus scale::

    [mu(c), h(c)] = net(c),     sigma(c) = max(softplus(h(c)), min_scale),
    log q(z | c) = sum_d log N(z_d; mu_d(c), sigma_d(c)^2),
    z = mu(c) + sigma(c) * eps,  eps ~ N(0, I)                      (reparameterised)

This is the VAE encoder, and the proposal ``q0(z|x)`` of the EIM posteriors of ALGORITHMS.md
section 4 (SNIS in q = IWAE, HIS in q = Hamiltonian VAE). Its log-density is exact, so as a
variational family its "upper bound" is ``log q`` itself.

Shapes: ``context [B, C]`` (or ``[*batch, C]``); samples ``[n, B, D]`` (``[n, *batch, D]``);
``log_prob(z, context)`` takes ``z [*S, B, D]`` (any leading sample dimensions, broadcast against
``context``) and returns ``[*S, B]``.
:meth:`ConditionalNormal.rsample_and_log_prob` with ``detach_params=True`` evaluates ``log q``
with the parameters held fixed (gradient through ``z`` only), which the DReG and
sticking-the-landing gradient estimators need (Roeder et al. 2017; Tucker et al. 2018).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Density, check_positive_int, positive_scale
from .latent import normal_log_prob

__all__ = ["ConditionalNormal"]


class ConditionalNormal(Density):
    """Diagonal Gaussian over ``[dim]`` whose mean and scale are ``net(context)``.

    Args:
        net: network ``[B, C] -> [B, 2 dim]``: the mean and the pre-softplus scale.
        dim: event dimension D.
        min_scale: lower limit of the scale.
    """

    exact_log_prob = True

    def __init__(self, net: nn.Module, dim: int, min_scale: float = 1e-5, eval_chunk_size: int = 64) -> None:
        check_positive_int("dim", dim)
        super().__init__((dim,), eval_chunk_size)
        if not min_scale >= 0:
            raise ValueError(f"min_scale must be >= 0, got {min_scale}")
        self.net = net
        self.min_scale = min_scale

    def _require_context(self, context: Tensor | None) -> Tensor:
        if context is None:
            raise ValueError(f"{type(self).__name__} is conditional: pass context=[B, ...] (e.g. the data x)")
        return context

    def params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)``, each ``[*batch, D]`` for ``context [*batch, C]``."""
        out = self.net(self._require_context(context))
        dim = self.event_shape[0]
        if out.shape != (*context.shape[:-1], 2 * dim):
            raise ValueError(
                f"{type(self).__name__}: net must map context {list(context.shape)} to "
                f"{[*context.shape[:-1], 2 * dim]} (mean and pre-softplus scale), got {list(out.shape)}"
            )
        loc, raw = out.split(dim, dim=-1)
        return loc, positive_scale(raw, self.min_scale)

    @staticmethod
    def _log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        # not torch.distributions.Normal, whose argument check raises on a NaN mean before the
        # training loop's own non-finite check can name the step
        return normal_log_prob((z - loc) / scale, scale)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact ``log q(z | c)``: ``z [*S, B, D]``, ``context [B, C]`` -> ``[*S, B]``."""
        loc, scale = self.params(self._require_context(context))
        return self._log_prob(z, loc, scale)

    def rsample_and_log_prob(
        self, n: int, context: Tensor | None = None, detach_params: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``z [n, *batch, D]`` (reparameterised) and ``log q(z | c)`` ``[n, *batch]``.

        With ``detach_params`` the log-density's mean and scale are held fixed, so its gradient
        reaches the network only through ``z``."""
        check_positive_int("n", n)
        loc, scale = self.params(self._require_context(context))  # [*batch, D] for context [*batch, C]
        z = loc + scale * torch.randn(n, *loc.shape, dtype=loc.dtype, device=loc.device)
        if detach_params:
            loc, scale = loc.detach(), scale.detach()
        return z, self._log_prob(z, loc, scale)

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Reparameterised samples ``[n, B, D]``."""
        return self.rsample_and_log_prob(n, context)[0]

    def rsample_and_log_prob_upper_bound(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Exact density: the "upper bound" is ``log q(z | c)`` itself."""
        return self.rsample_and_log_prob(n, context)
