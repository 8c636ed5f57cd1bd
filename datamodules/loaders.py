"""DataLoaders that keep runs reproducible and multi-process evaluation exact.

* No loader touches the global random stream: PyTorch's DataLoader draws a base seed from it
  for every new iterator unless it has its own ``generator``, which would make the model's
  negatives depend on how often data is loaded (validation, resumption). Every loader here
  has its own generator.
* Shuffled training order is a function of ``(seed, epoch)`` (:class:`EpochSeededRandomSampler`;
  Lightning calls ``set_epoch``), and a run resumed in the middle of an epoch skips the batches
  that epoch already used (read off the trainer's global step), so it sees exactly the batches of
  an uninterrupted run.
* Per-read random transforms (dynamic binarization, jitter) can be keyed by ``(epoch, index)``:
  with ``tag_epoch`` the sampler yields ``(epoch, index)`` pairs and the dataset draws its noise
  from :func:`counter_uniform`, a pure function of (seed, epoch, index), so a resumed run (and a
  run with any number of workers) reads exactly the same bits.
* Evaluation under multi-process training splits the set across processes *without padding*
  (Lightning's ``UnrepeatedDistributedSampler``), so the mean over processes is exactly the mean
  over the set (a padded ``DistributedSampler`` would count some examples twice).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

__all__ = ["EpochSeededRandomSampler", "counter_uniform", "seed64", "train_loader", "eval_loader"]

_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # splitmix64's increment, as a signed int64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def seed64(value: int) -> int:
    """Any Python int as a generator seed: ``value mod 2**64`` (values that fit keep their seeds)."""
    return int(value) % 2**64


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64(z: Tensor) -> Tensor:
    """splitmix64's finaliser (Steele, Lea, Flood 2014), wrapping int64 arithmetic."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def counter_uniform(seed: int, epoch: Tensor, index: Tensor, width: int) -> Tensor:
    """Uniforms ``[N, width]`` on ``[0, 1)`` (float32, 24-bit grid), a pure function of
    ``(seed, epoch[n], index[n], column)``: row ``n`` is the splitmix64 stream whose state is
    keyed by (seed, epoch, index). Counter-based, so no generator state needs saving or replaying."""
    if epoch.dim() != 1 or epoch.shape != index.shape:
        raise ValueError(
            f"epoch and index must be 1-D of the same length, got {list(epoch.shape)} and {list(index.shape)}"
        )
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    signed = (seed64(seed) ^ 2**63) - 2**63  # the same int64 for every seed that fitted before
    seed_key = _mix64(torch.tensor(signed, dtype=torch.int64) * _GOLDEN + _GOLDEN)
    key = _mix64(_mix64(seed_key + epoch.long() * _GOLDEN) + index.long() * _GOLDEN)  # [N]
    counters = torch.arange(1, width + 1, dtype=torch.int64) * _GOLDEN  # [width]
    return _shr(_mix64(key[:, None] + counters), 40).float() * 2.0**-24


class EpochSeededRandomSampler(Sampler):
    """A random permutation of ``range(len(dataset))`` drawn from ``(seed, epoch)``; with
    ``tag_epoch``, each index comes as an ``(epoch, index)`` pair.

    With a ``trainer``, an iterator started in the middle of an epoch (a resumed run) begins
    after the ``batch_size``-sized batches that epoch has already consumed, counted from
    ``trainer.global_step`` (times ``accumulate_grad_batches``) and ``trainer.current_epoch``.
    """

    def __init__(
        self, dataset: Dataset, seed: int = 0, batch_size: int = 1, trainer=None, tag_epoch: bool = False
    ) -> None:
        self.n, self.seed, self.epoch = len(dataset), seed, 0
        self.batch_size, self.trainer, self.tag_epoch = batch_size, trainer, tag_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches_done(self) -> int:
        """Batches of the current epoch that training has already consumed (0 at an epoch start)."""
        t = self.trainer
        if t is None or not t.training:
            return 0
        per_epoch = math.ceil(self.n / self.batch_size)
        done = t.global_step * t.accumulate_grad_batches - t.current_epoch * per_epoch
        return done if 0 < done < per_epoch else 0

    def current_epoch(self) -> int:
        """The trainer's epoch while training, else the one ``set_epoch`` gave. (A DataLoader with
        workers starts its index iterator when it is created, which on a resumed run comes before
        Lightning's ``set_epoch``.)"""
        t = self.trainer
        return t.current_epoch if t is not None and t.training else self.epoch

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        epoch = self.current_epoch()
        gen = torch.Generator().manual_seed(seed64(self.seed * 1_000_003 + epoch))
        order = torch.randperm(self.n, generator=gen)[self.batches_done() * self.batch_size :].tolist()
        if self.tag_epoch:
            return iter([(epoch, i) for i in order])
        return iter(order)

    def __len__(self) -> int:
        return self.n


class _Batches(BatchSampler):
    """Batches of a sampler's keys, handed to the dataset whole (``dataset[keys]``); ``set_epoch``
    reaches the inner sampler."""

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)


def train_loader(
    dataset: Dataset, batch_size: int | None, seed: int = 0, shuffle: bool = True, trainer=None, **kwargs
) -> DataLoader:
    """Training loader: shuffled by ``(seed, epoch)`` and resumable mid-epoch given the
    ``trainer`` (or in order), with its own generator. A dataset with ``epoch_keyed = True``
    receives ``(epoch, index)`` pairs (see :func:`counter_uniform`). A dataset with
    ``reads_batches = True`` is read a batch at a time, ``dataset[list of keys] -> [B, ...]``,
    with no per-item reads and collation."""
    tag = getattr(dataset, "epoch_keyed", False)
    sampler = EpochSeededRandomSampler(dataset, seed, batch_size or 1, trainer, tag_epoch=tag) if shuffle else None
    generator = torch.Generator().manual_seed(seed64(seed))
    if batch_size is not None and getattr(dataset, "reads_batches", False):
        batches = _Batches(sampler if sampler is not None else SequentialSampler(dataset), batch_size, drop_last=False)
        return DataLoader(dataset, batch_size=None, sampler=batches, generator=generator, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator, **kwargs)


def eval_loader(dataset: Dataset, batch_size: int, trainer=None, **kwargs) -> DataLoader:
    """Validation/test loader: in order; split across processes without padding when distributed."""
    sampler = None
    if trainer is not None and trainer.world_size > 1:
        sampler = UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator().manual_seed(0), **kwargs
    )
