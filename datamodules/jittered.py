r"""Continuous ("jittered") MNIST and Fashion-MNIST (ALGORITHMS.md section 5, "Data"), for EIMs
in data space.

Each pixel is its integer intensity ``k`` in 0..255 plus uniform noise: ``x = k + u``,
``u ~ U(0, 1)``, so ``x`` lies in ``[0, 256)`` and ``floor(x) = k``. A density on this 0–256 scale
lower-bounds the discrete likelihood (``P(k) >= exp(E_u[log p(k + u)])``); to compare with a
density on the [0, 1] scale add ``784 * log(256)`` nats to the latter's negative log-likelihood,
and for bits per dimension use ``nll / (784 * log 2)``.

Training images get fresh noise every epoch, a pure function of (seed, epoch, image) through the
training loader (so resumed runs are exact); validation and test noise is drawn
once from a generator seeded by ``seed``. Splits as for the dynamic binarized variants: train =
the first 50,000 of the 60,000 training images, valid = the last 10,000 (``val_size``; the
authors' code has no validation split for Fashion-MNIST, so this one is ours), test = the 10,000
test images. ``data_mean`` is the per-pixel mean of the training integers plus 0.5 (the mean of
the jittered values).
"""

from __future__ import annotations

from torch import Tensor

from .binarized import ImageDataModule, _check_int, grayscale_split

__all__ = ["JitteredMNISTDataModule", "JITTERED_DATASETS"]

JITTERED_DATASETS = ("mnist", "fashion")


class JitteredMNISTDataModule(ImageDataModule):
    """MNIST or Fashion-MNIST with integer pixels plus U(0, 1) noise, float32 in ``[0, 256)``.

    Args:
        dataset: ``"mnist"`` or ``"fashion"``.
        root: directory holding the IDX files, plain or ``.gz``: flat in ``root`` or in
            ``root/MNIST/raw``, ``root/mnist``, ``root/FashionMNIST/raw``, ``root/fashion-mnist``.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default: ``batch_size``).
        flatten: images as ``[B, 784]`` (True) or ``[B, 1, 28, 28]`` (False).
        val_size: how many of the training file's images (the last ones) form the validation split.
        train_subset, val_subset, test_subset: use only the first n images of a split; None: all.
        num_workers: DataLoader worker processes (0: load in the main process).
        pin_memory: DataLoader ``pin_memory``.
        seed: seed of the fixed noise of the validation and test images.
        download: fetch missing files with torchvision (needs internet).
    """

    train_transform = "jitter"
    eval_transform = "jitter"

    def __init__(
        self,
        dataset: str = "mnist",
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        flatten: bool = True,
        val_size: int = 10_000,
        train_subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        if dataset not in JITTERED_DATASETS:
            raise ValueError(f"unknown jittered dataset {dataset!r}; choose one of {list(JITTERED_DATASETS)}")
        _check_int("val_size", val_size)
        super().__init__(
            root,
            batch_size,
            eval_batch_size,
            flatten,
            train_subset,
            val_subset,
            test_subset,
            num_workers,
            pin_memory,
            seed,
            download,
        )
        self.save_hyperparameters()
        self.dataset, self.val_size = dataset, val_size

    def _raw(self, split: str) -> Tensor:
        return grayscale_split(self.dataset, self.root, split, self.val_size, self.download)

    def _mean(self, raw_mean: Tensor) -> Tensor:
        return raw_mean + 0.5
