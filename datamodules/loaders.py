"""DataLoaders that keep runs reproducible and multi-process evaluation exact.

* No loader touches the global random stream: PyTorch's DataLoader draws a base seed from it
  for every new iterator unless it has its own ``generator``, which would make the model's
  negatives depend on how often data is loaded (validation, resumption). Every loader here
  has its own generator.
* Shuffled training order is a function of ``(seed, epoch)`` (:class:`EpochSeededRandomSampler`;
  Lightning calls ``set_epoch``), and a run resumed in the middle of an epoch skips the batches
  that epoch already used (read off the trainer's global step), so it sees exactly the batches of
  an uninterrupted run.
* Evaluation under multi-process training splits the set across processes *without padding*
  (Lightning's ``UnrepeatedDistributedSampler``), so the mean over processes is exactly the mean
  over the set (a padded ``DistributedSampler`` would count some examples twice).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochSeededRandomSampler", "train_loader", "eval_loader"]


class EpochSeededRandomSampler(Sampler[int]):
    """A random permutation of ``range(len(dataset))`` drawn from ``(seed, epoch)``.

    With a ``trainer``, an iterator started in the middle of an epoch (a resumed run) begins
    after the ``batch_size``-sized batches that epoch has already consumed, counted from
    ``trainer.global_step`` (times ``accumulate_grad_batches``) and ``trainer.current_epoch``.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, batch_size: int = 1, trainer=None) -> None:
        self.n, self.seed, self.epoch = len(dataset), seed, 0
        self.batch_size, self.trainer = batch_size, trainer

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

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen)
        return iter(order[self.batches_done() * self.batch_size :].tolist())

    def __len__(self) -> int:
        return self.n


def train_loader(
    dataset: Dataset, batch_size: int | None, seed: int = 0, shuffle: bool = True, trainer=None, **kwargs
) -> DataLoader:
    """Training loader: shuffled by ``(seed, epoch)`` and resumable mid-epoch given the
    ``trainer`` (or in order), with its own generator."""
    sampler = EpochSeededRandomSampler(dataset, seed, batch_size or 1, trainer) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator().manual_seed(seed), **kwargs)


def eval_loader(dataset: Dataset, batch_size: int, trainer=None, **kwargs) -> DataLoader:
    """Validation/test loader: in order; split across processes without padding when distributed."""
    sampler = None
    if trainer is not None and trainer.world_size > 1:
        sampler = UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator().manual_seed(0), **kwargs)
