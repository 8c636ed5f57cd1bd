"""Layer 3: the training loop's checks of its input and its loss, kept off the hot path.

* **The training data, once**: where the training loader's dataset can list every value it will
  ever yield (``dataset.value_cover()``, e.g. :class:`datamodules.binarized.ImageDataset`:
  0 and 1 for binarized images, the stored values of a fixed set), the density checks those
  values once when training starts (``Density.check_values``: finite, binary pixels for a
  Bernoulli likelihood, ...) and the steps check types and shapes only. A data set with a value
  the model cannot score stops fit before the first step, naming the data set. Where a module or
  datamodule overrides a batch-transfer hook (which may change the values) this is not done.
* **Otherwise, each block of steps**: the batches of a block are checked together (one host
  sync) before any of its steps, and a bad one raises, naming its step.
* **The loss**: a non-finite loss stops training, naming the first bad step, before any later
  checkpoint, validation or image (``check_finite_every_n_steps``; one host sync per Lightning
  batch), and the fused optimiser skips that step on device.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import lightning as L
import torch
from torch import Tensor

from ..densities.base import values_prechecked
from .engine import overrides

__all__ = ["InputChecksMixin"]

_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


class InputChecksMixin:
    """Checks of the training loop. The module provides ``density`` (or overrides
    :meth:`check_training_values`), ``unpack_batch(batch)``, ``validate_inputs`` and
    ``check_finite_every_n_steps``."""

    _training_data_checked = False

    def check_training_data(self) -> None:
        """At the start of training: check the values of the whole training data set once, where
        its dataset lists them (``value_cover()``); then the steps skip their value checks."""
        self._training_data_checked = False
        if not self.validate_inputs:
            return
        trainer = self.trainer
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        cover = getattr(dataset, "value_cover", None)
        datamodule = getattr(trainer, "datamodule", None)
        hooks = [(self, L.LightningModule)] + ([(datamodule, L.LightningDataModule)] if datamodule is not None else [])
        if not callable(cover) or any(overrides(obj, hook, base) for obj, base in hooks for hook in _TRANSFER_HOOKS):
            return
        values = cover()
        if values is None:
            return
        try:
            self.check_training_values(values.to(self.device))
        except ValueError as error:
            raise ValueError(
                f"{type(self).__name__}: the training data ({type(dataset).__name__}) holds values the model "
                f"cannot score, so training did not start: {error}"
            ) from None
        self._training_data_checked = True

    def check_training_values(self, x: Tensor) -> None:
        """Raise a clear error for training values ``x`` (any leading shape) the model cannot score:
        the density's :meth:`~eim_lightning.densities.Density.check_values`."""
        self.density.check_values(x)

    def check_batch(self, batch) -> None:
        """Check a training batch's values eagerly (``validate_inputs``; one host sync)."""
        if self.validate_inputs:
            self.density.check_input(self.unpack_batch(batch))

    def checked_block(self, steps: list) -> AbstractContextManager:
        """Check the values of a block's batches at once, before any of its steps (one host
        sync; none where the training data were checked at the start), and return the context
        that runs the block without the densities' per-call value checks; a bad batch raises,
        naming its step. Types and shapes are still checked at every step; batches that differ in
        shape or dtype are left to those per-step checks."""
        if not self.validate_inputs:
            return nullcontext()
        if self._training_data_checked:
            return values_prechecked()
        xs = [self.unpack_batch(batch) for batch in steps]
        x0 = xs[0]
        if not x0.is_floating_point() or any(
            x.shape != x0.shape or x.dtype != x0.dtype or x.device != x0.device for x in xs
        ):
            return nullcontext()
        try:
            self.check_training_values(torch.stack(xs) if len(xs) > 1 else x0)
        except ValueError:
            for i, x in enumerate(xs):
                try:
                    self.check_training_values(x)
                except ValueError as error:
                    raise ValueError(
                        f"{type(self).__name__}: the batch of training step {self.global_step + i} is not "
                        f"valid: {error}"
                    ) from None
            raise
        return values_prechecked()

    def nonfinite_guard(self, loss: Tensor) -> Tensor | None:
        """For a checked step: a flag that makes the optimiser skip a non-finite step on device
        (``loss * 0`` is 0 for a finite loss and NaN otherwise: two operations)."""
        n = self.check_finite_every_n_steps
        if not n or self.global_step % n:
            return None
        return torch.nan_to_num(loss.detach() * 0, nan=1.0).float()  # the fused kernels take float32

    def _check_finite(self, results) -> None:
        """Raise, naming the first checked step whose loss is not finite (one host sync)."""
        n = self.check_finite_every_n_steps
        if not n:
            return
        first_step = self.global_step - (0 if self.automatic_optimization else len(results))
        checked = [i for i in range(len(results)) if (first_step + i) % n == 0]
        if not checked:
            return
        finite = torch.stack([torch.isfinite(results[i][0]) for i in checked])
        if bool(finite.all()):
            return
        i = checked[int((~finite).nonzero()[0, 0])]
        # only now, off the hot path: a finite loss with non-finite gradients updates the weights to
        # NaN, and the loss turns non-finite one step later
        params_finite = all(bool(torch.isfinite(p).all()) for p in self.parameters())
        cause = (
            ""
            if params_finite
            else "; the parameters were already non-finite: an earlier step's gradients were non-finite "
            "although its loss was finite (try a smaller learning rate or step size, or gradient clipping)"
        )
        raise FloatingPointError(
            f"{type(self).__name__}: non-finite training loss at global step {first_step + i} "
            f"(train/{self.bound_name} = {(-results[i][0]).item()}){cause}; the last checkpoint is left untouched"
        )
