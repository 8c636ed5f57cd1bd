r"""Diagonal Gaussian ``N(loc, diag(scale^2))``, the EIMs' default proposal.

    log N(x; mu, sigma) = -1/2 sum_d [ ((x_d - mu_d) / sigma_d)^2 + 2 log sigma_d + log 2 pi ]

Fixed (buffers, the default ``N(0, I)``) or learnable (``loc`` and
``scale = max(softplus(raw), min_scale)``, as the ``Gaussian`` baseline). The log-density is exact, so
``log_prob_lower_bound(x, S) == log_prob(x)`` for every S. Unconditional: a ``context`` only
sets the sample shape ``[n, B, dim]`` (the same distribution for every context).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LOG_2PI, Density, check_positive_int, positive_scale

__all__ = ["Normal", "inverse_softplus"]


def inverse_softplus(y: Tensor) -> Tensor:
    """``x`` such that ``softplus(x) = y`` (``y > 0``)."""
    return y + torch.log(-torch.expm1(-y))


class Normal(Density):
    """Diagonal Gaussian over vectors ``[dim]``.

    Args:
        dim: event dimension.
        loc: mean, a float or a ``[dim]`` tensor.
        scale: standard deviation (> 0), a float or a ``[dim]`` tensor.
        learnable: make ``loc`` and ``scale`` parameters (scale = max(softplus(raw), min_scale)).
        min_scale: lower limit of a learnable scale.
    """

    exact_log_prob = True

    def __init__(
        self,
        dim: int,
        loc: float | Tensor = 0.0,
        scale: float | Tensor = 1.0,
        learnable: bool = False,
        min_scale: float = 1e-5,
    ) -> None:
        check_positive_int("dim", dim)
        super().__init__((dim,))
        loc_t = torch.as_tensor(loc, dtype=torch.get_default_dtype()).expand(dim).clone()
        scale_t = torch.as_tensor(scale, dtype=torch.get_default_dtype()).expand(dim).clone()
        if not bool((scale_t > 0).all()):
            raise ValueError(f"Normal scale must be > 0, got {scale}")
        self.learnable = learnable
        self.min_scale = min_scale
        if learnable:
            if not bool((scale_t > min_scale).all()):
                raise ValueError(f"a learnable scale must exceed min_scale={min_scale}, got {scale}")
            self.loc = nn.Parameter(loc_t)
            self.raw_scale = nn.Parameter(inverse_softplus(scale_t))
        else:
            self.register_buffer("loc", loc_t)
            self.register_buffer("fixed_scale", scale_t)

    @property
    def scale(self) -> Tensor:
        if self.learnable:
            return positive_scale(self.raw_scale, self.min_scale)
        return self.fixed_scale

    @property
    def mean(self) -> Tensor:
        return self.loc

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density ``[*batch]`` of ``x [*batch, dim]``."""
        if x.dim() == 0 or x.shape[-1:] != self.event_shape:
            raise ValueError(
                f"Normal over [{self.event_shape[0]}] expected input of shape [..., {self.event_shape[0]}], "
                f"got {list(x.shape)}"
            )
        scale = self.scale
        z = (x - self.loc) / scale
        return z.square().sum(-1).mul(-0.5) - self._log_normalizer(scale)

    def log_prob_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``log_prob(x)`` and its gradient ``-(x - loc) / scale^2``, in closed form."""
        scale = self.scale
        z = (x - self.loc) / scale
        return z.square().sum(-1).mul(-0.5) - self._log_normalizer(scale), -z / scale

    def _log_normalizer(self, scale: Tensor) -> Tensor:
        """``sum log scale + (d/2) log 2 pi``; for a fixed scale kept until the buffer changes
        (replaced, e.g. by ``.to()``, or modified in place): three operations fewer per call."""
        if self.learnable or torch.compiler.is_compiling():
            return torch.log(scale).sum() + 0.5 * LOG_2PI * self.event_shape[0]
        cached = self.__dict__.get("_log_normalizer_cache")
        if cached is None or cached[0] is not scale or cached[1] != scale._version:
            value = torch.log(scale).sum() + 0.5 * LOG_2PI * self.event_shape[0]
            cached = self.__dict__["_log_normalizer_cache"] = (scale, scale._version, value)
        return cached[2]

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        check_positive_int("num_replicas", num_replicas)
        return self.log_prob(x).expand(num_replicas, x.shape[0])

    def log_prob_lower_bound(self, x: Tensor, num_samples: int = 1, context: Tensor | None = None) -> Tensor:
        """Exact: equals :meth:`log_prob` for every ``num_samples``."""
        self.check_input(x, context)
        check_positive_int("num_samples", num_samples)
        return self.log_prob(x)

    def log_prob_for_elbo(self, z: Tensor, log_q: Tensor, objective: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """As a prior: the exact ``log N(z)`` ``[m, B]`` of posterior samples ``z [m, B, dim]``."""
        return self.log_prob(z), {}

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        shape = self._sample_shape(n, context)
        eps = torch.randn(*shape, *self.event_shape, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + self.scale * eps

    def reflect(self, x: Tensor) -> Tensor:
        """The antithetic partner ``2 loc - x`` of a sample ``x`` (same distribution)."""
        return 2 * self.loc - x

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        return self.log_prob(x)
