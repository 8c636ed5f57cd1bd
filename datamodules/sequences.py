r"""Synthetic sequence data for FIVO / SMC: sampled linear-Gaussian sequences and noisy sines.

Both datamodules yield batches ``[B, T, 1]`` and expose ``event_shape = [T, 1]``. Validation and
test sets are fixed by ``seed``. Training data is either a fixed set of ``train_size`` sequences
(shuffled in an order fixed by (seed, epoch)) or, with ``train_size=None``, a fresh batch every
step drawn from a generator seeded by (seed, process rank, global step), so a resumed run sees the
batches an uninterrupted one would (the same scheme as :class:`datamodules.Toy2DDataModule`).

* :class:`LinearGaussianSequenceDataModule`: the 1-D state-space model (q, r are variances)::

      z_1 ~ N(0, q),   z_t = a z_{t-1} + N(0, q),   x_t = z_t + N(0, r).

  Its exact log-likelihood is the Kalman filter's: data knows no model, so it is not computed
  here; use ``eim_lightning.kalman.kalman_log_likelihood(x[..., 0], dm.a, dm.q, dm.r)`` or the
  ``log_likelihood`` of ``FIVO.linear_gaussian(dm.a, dm.q, dm.r).model`` (which ``FIVO`` logs as
  ``val/log_likelihood`` and ``test/log_likelihood``).
* :class:`SineSequenceDataModule`: x_t = A sin(ω t + φ) + σ ε_t, t = 0..T-1, with per-sequence
  A ~ U[amplitude], ω ~ U[frequency] (radians per step), φ ~ U[0, 2π) and ε_t ~ N(0, 1): a
  nonlinear latent-variable process (a VRNN must infer A, ω, φ from the first observations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .loaders import train_loader
from .synthetic import SyntheticDataModule

__all__ = ["SequenceDataModule", "LinearGaussianSequenceDataModule", "SineSequenceDataModule"]


class SequenceDataModule(SyntheticDataModule):
    """Base of the synthetic sequence datamodules: subclasses implement :meth:`sample`.

    Args:
        T: sequence length.
        batch_size: training batch size.
        train_size: number of fixed training sequences, or ``None`` for fresh sequences every step.
        steps_per_epoch: training batches per epoch when ``train_size`` is ``None``.
        val_size: fixed validation sequences.
        test_size: fixed test sequences.
        eval_batch_size: batch size of the validation and test loaders.
        seed: seed of every sequence this module draws.
    """

    obs_dim: int = 1

    def __init__(
        self,
        T: int = 20,
        batch_size: int = 32,
        train_size: int | None = None,
        steps_per_epoch: int = 1000,
        val_size: int = 256,
        test_size: int = 1024,
        eval_batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            steps_per_epoch=steps_per_epoch,
            val_size=val_size,
            test_size=test_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
        )
        for name, value in (("T", T), ("train_size", 1 if train_size is None else train_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.T, self.train_size = T, train_size

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one example: ``[T, obs_dim]``."""
        return torch.Size([self.T, self.obs_dim])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh sequences ``[n, T, obs_dim]`` (float32)."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        if self.train_size is None:
            return super().train_dataloader()
        return train_loader(self._fixed(self.train_size, 3), self.batch_size, seed=self.seed, trainer=self.trainer)


class LinearGaussianSequenceDataModule(SequenceDataModule):
    """Sequences of the 1-D linear-Gaussian state-space model (see the module docstring).

    Args:
        a: transition coefficient.
        q: transition (and initial) variance, > 0.
        r: emission variance, > 0.
        T, batch_size, train_size, ...: see :class:`SequenceDataModule`.
    """

    def __init__(self, a: float = 0.9, q: float = 1.0, r: float = 0.5, T: int = 20, **kwargs) -> None:
        super().__init__(T=T, **kwargs)
        if not (q > 0 and r > 0) or not math.isfinite(a):
            raise ValueError(f"need a finite a and variances q, r > 0, got a={a}, q={q}, r={r}")
        self.save_hyperparameters()
        self.a, self.q, self.r = float(a), float(q), float(r)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        state_noise = torch.randn(n, self.T, generator=generator, dtype=torch.float64) * math.sqrt(self.q)
        obs_noise = torch.randn(n, self.T, generator=generator, dtype=torch.float64) * math.sqrt(self.r)
        z = torch.zeros(n, dtype=torch.float64)
        path = []
        for w_t in state_noise.unbind(1):
            z = self.a * z + w_t
            path.append(z)
        return (torch.stack(path, 1) + obs_noise).float().unsqueeze(-1)


class SineSequenceDataModule(SequenceDataModule):
    """Noisy sine waves with random amplitude, frequency and phase (see the module docstring).

    Args:
        T: sequence length (default 25).
        amplitude: range (low, high) of A.
        frequency: range (low, high) of ω, radians per step.
        noise_std: σ.
        batch_size, train_size, ...: see :class:`SequenceDataModule`.
    """

    def __init__(
        self,
        T: int = 25,
        amplitude: Sequence[float] = (0.5, 1.5),
        frequency: Sequence[float] = (0.2, 0.8),
        noise_std: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(T=T, **kwargs)
        for name, rng in (("amplitude", amplitude), ("frequency", frequency)):
            if len(rng) != 2 or not rng[0] <= rng[1]:
                raise ValueError(f"{name} must be a range (low, high) with low <= high, got {rng!r}")
        if not noise_std > 0:
            raise ValueError(f"noise_std must be > 0, got {noise_std}")
        self.save_hyperparameters()
        self.amplitude, self.frequency, self.noise_std = tuple(amplitude), tuple(frequency), float(noise_std)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, 3, 1, generator=generator)
        amp = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * u[:, 0]
        omega = self.frequency[0] + (self.frequency[1] - self.frequency[0]) * u[:, 1]
        phase = 2 * math.pi * u[:, 2]
        t = torch.arange(self.T, dtype=torch.float32)
        eps = torch.randn(n, self.T, generator=generator)
        return (amp * torch.sin(omega * t + phase) + self.noise_std * eps).unsqueeze(-1)
