"""A base for synthetic LightningDataModules: fresh training samples every step, fixed evaluation sets.

A subclass only says how to draw ``n`` samples from a ``torch.Generator`` (:meth:`sample`: a
tensor, or a tuple of tensors for paired data). Training batches are drawn in the main process,
batch ``i`` of the run from a generator seeded by (seed, process rank, i), as in
:class:`~datamodules.toy2d.Toy2DDataModule`, so a resumed run sees exactly the batches of an
uninterrupted one; validation and test sets are fixed by the seed. Any Python int is a valid
seed: the generator seed is reduced modulo 2**64 (seeds that fit unreduced keep their streams).

Blocks: with ``steps_per_block = N > 1`` (set by eim-lightning's step engine at setup, see
``eim_lightning.modules.engine``) the loader yields ``{"steps": [batch_i, ..., batch_{i+N-1}]}``,
each batch drawn exactly as with N = 1, so that one Lightning batch feeds N optimiser steps.
Blocks never straddle a multiple of N, so their ends fall on every multiple of N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from .loaders import eval_loader, seed64, train_loader

__all__ = ["SyntheticDataModule", "check_positive_ints"]


def batch_seed(seed: int, rank: int, index: int) -> int:
    """The generator seed of training batch ``index`` on process ``rank``: a 64-bit key of the three."""
    return seed64((seed * 1_000_003 + rank) * 1_000_000_007 + index)


class _FreshSamples(IterableDataset):
    """``steps`` batches of ``source.sample(batch_size, generator)``, each from a generator seeded
    by (seed, rank, run-wide batch index), the index starting where the run stands; grouped into
    blocks of at most ``block`` batches that never straddle a multiple of ``block``."""

    def __init__(
        self, source, batch_size: int, steps: int, seed: int, block: int, position: Callable[[], tuple[int, int]]
    ):
        self.source, self.batch_size, self.steps, self.seed, self.position = source, batch_size, steps, seed, position
        self.block = block

    def _batch(self, rank: int, i: int):
        return self.source.sample(self.batch_size, torch.Generator().manual_seed(batch_seed(self.seed, rank, i)))

    def __iter__(self) -> Iterator:
        start, rank = self.position()
        end = start + self.steps
        if self.block == 1:
            for i in range(start, end):
                yield self._batch(rank, i)
            return
        i = start
        while i < end:
            stop = min(end, (i // self.block + 1) * self.block)
            yield {"steps": [self._batch(rank, j) for j in range(i, stop)]}
            i = stop

    def __len__(self) -> int:
        if self.block == 1:
            return self.steps
        start, _ = self.position()
        return len(range(start // self.block, -(-(start + self.steps) // self.block)))


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
        check_positive_ints(
            batch_size=batch_size,
            steps_per_epoch=steps_per_epoch,
            val_size=val_size,
            test_size=test_size,
            eval_batch_size=eval_batch_size,
        )
        if drop_last_eval and min(val_size, test_size) < eval_batch_size:
            raise ValueError(
                f"val_size ({val_size}) and test_size ({test_size}) must be >= eval_batch_size ({eval_batch_size}) "
                f"when incomplete evaluation batches are dropped"
            )
        self.batch_size, self.steps_per_epoch, self.seed = batch_size, steps_per_epoch, seed
        self.val_size, self.test_size, self.eval_batch_size = val_size, test_size, eval_batch_size
        self.drop_last_eval = drop_last_eval
        #: optimiser steps per training batch (set by the model's step engine at setup)
        self.steps_per_block = 1
        self._sets: dict[int, TensorDataset] = {}

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, ...]:
        """``n`` samples (a tensor, or a tuple of tensors)."""
        raise NotImplementedError

    def _fixed(self, n: int, stream: int) -> TensorDataset:
        if stream not in self._sets:
            out = self.sample(n, torch.Generator().manual_seed(seed64(self.seed * 1_000_003 + stream)))
            self._sets[stream] = TensorDataset(*(out if isinstance(out, tuple) else (out,)))
        return self._sets[stream]

    def _position(self) -> tuple[int, int]:
        """(training batches the run has used, rank): optimiser steps, times the accumulation."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        used = trainer.global_step * trainer.accumulate_grad_batches
        return used, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        data = _FreshSamples(
            self, self.batch_size, self.steps_per_epoch, self.seed, self.steps_per_block, self._position
        )
        return train_loader(data, batch_size=None, seed=self.seed, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(
            self._fixed(self.val_size, 1), self.eval_batch_size, self.trainer, drop_last=self.drop_last_eval
        )

    def test_dataloader(self) -> DataLoader:
        return eval_loader(
            self._fixed(self.test_size, 2), self.eval_batch_size, self.trainer, drop_last=self.drop_last_eval
        )
