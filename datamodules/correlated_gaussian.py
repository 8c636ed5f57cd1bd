r"""Correlated Gaussian pairs with known mutual information: the oracle for InfoNCE / CPC.

    x ~ N(0, I_d),     c = rho x + sqrt(1 - rho^2) eps,   eps ~ N(0, I_d),

so each coordinate pair has correlation rho, the marginals are N(0, I_d), and

    I(X; C) = -(d / 2) log(1 - rho^2)  nats.

The optimal critic is the log density ratio ``log p(c|x) - log p(c)`` (up to a function of c),
:meth:`CorrelatedGaussianDataModule.log_density_ratio`. Batches are pairs ``(x, c)``; evaluation
batches are all full (``drop_last``) so every InfoNCE estimate uses the same K.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .synthetic import SyntheticDataModule, check_positive_ints

__all__ = ["CorrelatedGaussianDataModule"]


class CorrelatedGaussianDataModule(SyntheticDataModule):
    """Pairs ``(x [dim], c [dim])`` with per-coordinate correlation ``rho``.

    Args:
        dim: dimension d of x and of c.
        rho: correlation in (-1, 1); ignored when ``mutual_information`` is given.
        mutual_information: the I(X; C) in nats to set ``rho`` from (optional).
        **kwargs: batch_size, steps_per_epoch, val_size, test_size, eval_batch_size (K at
            evaluation), seed, as :class:`~datamodules.synthetic.SyntheticDataModule`; evaluation
            batches are all full.
    """

    def __init__(self, dim: int = 2, rho: float = 0.9, mutual_information: float | None = None, **kwargs) -> None:
        super().__init__(drop_last_eval=True, **kwargs)
        check_positive_ints(dim=dim)
        if mutual_information is not None:
            if not mutual_information >= 0:
                raise ValueError(f"mutual_information must be >= 0 nats, got {mutual_information}")
            rho = math.sqrt(-math.expm1(-2.0 * mutual_information / dim))
        if not -1.0 < rho < 1.0:
            raise ValueError(f"rho must be in (-1, 1), got {rho}")
        self.save_hyperparameters()
        self.dim, self.rho = dim, float(rho)

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.dim])

    @property
    def context_shape(self) -> torch.Size:
        return torch.Size([self.dim])

    @property
    def data_mean(self) -> Tensor:
        return torch.zeros(self.dim)

    @property
    def mutual_information(self) -> float:
        """``I(X; C) = -(d/2) log(1 - rho^2)`` nats."""
        return -0.5 * self.dim * math.log1p(-(self.rho**2))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` pairs ``(x [n, d], c [n, d])``."""
        x = torch.randn(n, self.dim, generator=generator)
        c = self.rho * x + math.sqrt(1.0 - self.rho**2) * torch.randn(n, self.dim, generator=generator)
        return x, c

    def log_density_ratio(self, x: Tensor, c: Tensor) -> Tensor:
        """``log p(c | x) - log p(c)`` ``[*batch]``: the optimal InfoNCE critic."""
        s2 = 1.0 - self.rho**2
        cond = -0.5 * ((c - self.rho * x).square() / s2 + math.log(s2)).sum(-1)
        return cond + 0.5 * c.square().sum(-1)
