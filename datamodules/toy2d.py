r"""The paper's 2-D targets (ALGORITHMS.md section 5) and their LightningDataModule.

Targets, each with an exact ``log_prob``, a ``sample`` and its expected log-likelihood
``E_p[log p(x)]`` (minus the entropy; the ceiling of any model's mean test bound):

* ``nine_gaussians``: equal mixture of 9 isotropic Gaussians at {-1, 0, 1}^2, variance 0.01;
  ``E_p[log p] = -log 9 - log(2 pi e 0.01) = -0.4299`` (overlap negligible);
* ``two_rings``: angle U[0, 2pi), radius ½N(0.6, 0.1²) + ½N(1.3, 0.1²),
  ``log p(x) = log p_r(|x|) - log(2 pi |x|)``; ``E_p[log p] ≈ -1.514`` (Monte Carlo);
* ``checkerboard``: uniform on the 8 cells (i, j) of a 4x4 grid over [-2, 2]^2 with i + j even;
  ``E_p[log p] = -log 8 = -2.0794``.

:class:`Toy2DDataModule` draws a fresh batch of target samples every training step (in the main
process, no workers), from a generator seeded by (seed, process rank, global step), so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would. Validation and
test sets are fixed by the seed (test: 10,000 points by default, since shared negatives make a
2-D test bound noisy).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .synthetic import SyntheticDataModule

__all__ = ["Target", "NineGaussians", "TwoRings", "Checkerboard", "TARGETS", "make_target", "Toy2DDataModule"]


class Target:
    """A 2-D target density with exact ``log_prob`` and ``sample``."""

    name: str = ""
    #: half-width of the square the plots show
    plot_limit: float = 2.5
    event_shape = torch.Size([2])

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    @property
    def mean(self) -> Tensor:
        """All three targets are symmetric about the origin."""
        return torch.zeros(2)

    def expected_log_prob(self, log_prob: Callable[[Tensor], Tensor], n: int = 10**6, seed: int = 12345) -> float:
        """Monte Carlo ``E_p[log f(x)]`` from ``n`` target samples (fixed seed)."""
        gen = torch.Generator().manual_seed(seed)
        total, done = 0.0, 0
        while done < n:
            m = min(10**5, n - done)
            total += float(log_prob(self.sample(m, gen).double()).sum())
            done += m
        return total / n

    @property
    def expected_log_likelihood(self) -> float:
        """``E_p[log p(x)]``, in nats."""
        return self.expected_log_prob(self.log_prob)


class NineGaussians(Target):
    name = "nine_gaussians"
    plot_limit = 1.6
    std = 0.1

    #: the 9 component means, the grid {-1, 0, 1}^2
    centres = torch.cartesian_prod(torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0]))

    def _centres(self, like: Tensor) -> Tensor:
        return self.centres.to(like.dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        c = self._centres(x)
        sq = ((x.unsqueeze(-2) - c) ** 2).sum(-1)
        log_comp = -0.5 * sq / self.std**2 - math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(log_comp, dim=-1) - math.log(9)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.randint(0, 9, (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator)
        return self._centres(noise)[idx] + self.std * noise

    @property
    def expected_log_likelihood(self) -> float:
        return -math.log(9) - math.log(2 * math.pi * math.e * self.std**2)


class TwoRings(Target):
    name = "two_rings"
    plot_limit = 1.8
    radii = (0.6, 1.3)
    std = 0.1

    def log_prob(self, x: Tensor) -> Tensor:
        r = x.norm(dim=-1)
        mu = torch.tensor(self.radii, dtype=x.dtype, device=x.device)
        log_comp = -0.5 * ((r.unsqueeze(-1) - mu) / self.std) ** 2 - math.log(self.std * math.sqrt(2 * math.pi))
        log_pr = torch.logsumexp(log_comp, dim=-1) - math.log(2)
        return log_pr - torch.log(2 * math.pi * r)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        theta = 2 * math.pi * torch.rand(n, generator=generator)
        comp = torch.randint(0, 2, (n,), generator=generator)
        r = torch.tensor(self.radii)[comp] + self.std * torch.randn(n, generator=generator)
        return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1)


class Checkerboard(Target):
    name = "checkerboard"
    plot_limit = 2.2

    #: lower-left corners of the 8 filled unit cells
    corners = torch.tensor([(i - 2.0, j - 2.0) for i in range(4) for j in range(4) if (i + j) % 2 == 0])

    def log_prob(self, x: Tensor) -> Tensor:
        inside = (x.abs() < 2).all(-1)
        cell = torch.floor(x + 2).long().clamp(0, 3)
        even = (cell.sum(-1) % 2) == 0
        return torch.where(
            inside & even, torch.full_like(x[..., 0], -math.log(8)), torch.full_like(x[..., 0], -math.inf)
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.corners[torch.randint(0, 8, (n,), generator=generator)] + torch.rand(n, 2, generator=generator)

    @property
    def expected_log_likelihood(self) -> float:
        return -math.log(8)


TARGETS: dict[str, type[Target]] = {t.name: t for t in (NineGaussians, TwoRings, Checkerboard)}


def make_target(name: str) -> Target:
    """The target called ``name`` (one of :data:`TARGETS`)."""
    if name not in TARGETS:
        raise ValueError(f"unknown 2-D target {name!r}; choose one of {sorted(TARGETS)}")
    return TARGETS[name]()


class Toy2DDataModule(SyntheticDataModule):
    """Samples of a 2-D target: fresh every training step, fixed for validation and test.

    Args:
        target: ``"checkerboard"``, ``"nine_gaussians"`` or ``"two_rings"``.
        batch_size: training batch size (the paper: 128).
        steps_per_epoch: training batches per epoch (validation runs after each epoch).
        val_size: validation points (fixed).
        test_size: test points (fixed; at least 10,000 recommended).
        eval_batch_size: batch size of the validation and test loaders.
        seed: seed of every sample this module draws.
    """

    event_shape = torch.Size([2])

    def __init__(
        self,
        target: str = "checkerboard",
        batch_size: int = 128,
        steps_per_epoch: int = 1000,
        val_size: int = 2000,
        test_size: int = 10_000,
        eval_batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        self.target = make_target(target)
        super().__init__(
            batch_size=batch_size,
            steps_per_epoch=steps_per_epoch,
            val_size=val_size,
            test_size=test_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
        )
        self.save_hyperparameters()

    @property
    def data_mean(self) -> Tensor:
        return self.target.mean

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.target.sample(n, generator)
