"""DataLoaders that keep runs reproducible and multi-process evaluation exact.

* No loader touches the global random stream: PyTorch's DataLoader draws a base seed from it
  for every new iterator unless it has its own ``generator``, which would make the model's
  negatives depend on how often data is loaded (validation, resumption). Every loader here
  has its own generator.
* Shuffled training order is a function of ``(seed, epoch)`` (:class:`EpochSeededRandomSampler`;
  Lightning calls ``set_epoch``), so a run resumed at an epoch boundary sees the same order.
* Evaluation under multi-process training splits the set across processes *without padding*
  (Lightning's ``UnrepeatedDistributedSampler``), so the mean over processes is exactly the mean
  over the set (a padded ``DistributedSampler`` would count some examples twice).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochSeededRandomSampler", "train_loader", "eval_loader"]


class EpochSeededRandomSampler(Sampler[int]):
    """A random permutation of ``range(len(dataset))`` drawn from ``(seed, epoch)``."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = len(dataset), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


def train_loader(dataset: Dataset, batch_size: int | None, seed: int = 0, shuffle: bool = True, **kwargs) -> DataLoader:
    """Training loader: shuffled by ``(seed, epoch)`` (or in order), with its own generator."""
    sampler = EpochSeededRandomSampler(dataset, seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator().manual_seed(seed), **kwargs)


def eval_loader(dataset: Dataset, batch_size: int, trainer=None, **kwargs) -> DataLoader:
    """Validation/test loader: in order; split across processes without padding when distributed."""
    sampler = None
    if trainer is not None and trainer.world_size > 1:
        sampler = UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator().manual_seed(0), **kwargs)
