"""A base for synthetic LightningDataModules: fresh training samples every step, fixed evaluation sets.

A subclass only says how to draw ``n`` samples from a ``torch.Generator`` (:meth:`sample`: a
tensor, or a tuple of tensors for paired data). Training batches are drawn in the main process
from a generator seeded by (seed, process rank, global step), as in
:class:`~datamodules.toy2d.Toy2DDataModule`, so a resumed run sees exactly the batches of an
uninterrupted one; validation and test sets are fixed by the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from .loaders import eval_loader, train_loader

__all__ = ["SyntheticDataModule", "check_positive_ints"]


class _FreshSamples(IterableDataset):
    """``steps`` batches of ``source.sample(batch_size, generator)``, each from a generator seeded
    by (seed, rank, global batch index), the index starting at the trainer's global step."""

    def __init__(self, source, batch_size: int, steps: int, seed: int, position: Callable[[], tuple[int, int]]):
        self.source, self.batch_size, self.steps, self.seed, self.position = source, batch_size, steps, seed, position

    def __iter__(self) -> Iterator[Tensor]:
        start, rank = self.position()
        for i in range(start, start + self.steps):
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + rank) * 1_000_000_007 + i)
            yield self.source.sample(self.batch_size, gen)

    def __len__(self) -> int:
        return self.steps


def check_positive_ints(**values: int) -> None:
    """Raise a clear ``ValueError`` unless every value is an ``int >= 1``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class SyntheticDataModule(L.LightningDataModule):
    """Fresh samples each training step; fixed validation and test sets.

    Args:
        batch_size: training batch size.
        steps_per_epoch: training batches per epoch.
        val_size, test_size: sizes of the fixed evaluation sets.
        eval_batch_size: batch size of the evaluation loaders.
        drop_last_eval: drop an incomplete last evaluation batch (for in-batch negatives).
        seed: seed of every sample this module draws.
    """

    def __init__(
        self,
        batch_size: int = 128,
        steps_per_epoch: int = 1000,
        val_size: int = 2048,
        test_size: int = 10_240,
        eval_batch_size: int = 512,
        drop_last_eval: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_positive_ints(batch_size=batch_size, steps_per_epoch=steps_per_epoch, val_size=val_size,
                            test_size=test_size, eval_batch_size=eval_batch_size)
        if drop_last_eval and min(val_size, test_size) < eval_batch_size:
            raise ValueError(
                f"val_size ({val_size}) and test_size ({test_size}) must be >= eval_batch_size ({eval_batch_size}) "
                f"when incomplete evaluation batches are dropped"
            )
        self.batch_size, self.steps_per_epoch, self.seed = batch_size, steps_per_epoch, seed
        self.val_size, self.test_size, self.eval_batch_size = val_size, test_size, eval_batch_size
        self.drop_last_eval = drop_last_eval
        self._sets: dict[int, TensorDataset] = {}

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, ...]:
        """``n`` samples (a tensor, or a tuple of tensors)."""
        raise NotImplementedError

    def _fixed(self, n: int, stream: int) -> TensorDataset:
        if stream not in self._sets:
            out = self.sample(n, torch.Generator().manual_seed(self.seed * 1_000_003 + stream))
            self._sets[stream] = TensorDataset(*(out if isinstance(out, tuple) else (out,)))
        return self._sets[stream]

    def _position(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 0) if trainer is None else (trainer.global_step, trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        data = _FreshSamples(self, self.batch_size, self.steps_per_epoch, self.seed, self._position)
        return train_loader(data, batch_size=None, seed=self.seed, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self._fixed(self.val_size, 1), self.eval_batch_size, self.trainer, drop_last=self.drop_last_eval)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self._fixed(self.test_size, 2), self.eval_batch_size, self.trainer, drop_last=self.drop_last_eval)
