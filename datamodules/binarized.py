r"""Binarized MNIST family (ALGORITHMS.md section 5, "Images"/"Data"): static MNIST, dynamic
MNIST and dynamically binarized Fashion-MNIST.

Variants of :class:`BinarizedMNISTDataModule` (train / valid / test sizes):

* ``"static"``: Larochelle & Murray's (2011) fixed binarization, 50,000 / 10,000 / 10,000, read
  from ``binarized_mnist_{train,valid,test}.amat`` (plain or ``.gz``) in ``root`` or
  ``root/binarized_mnist``: one image a line, 784 space-separated 0/1 values, row-major 28x28.
* ``"dynamic"``: grayscale MNIST (torchvision's, or IDX files, see :mod:`datamodules.idx`),
  re-binarized with fresh Bernoulli draws ``x ~ Bernoulli(pixel / 255)`` every epoch (through
  the training loader the noise is a pure function of (seed, epoch, image), so a resumed run
  reads the same bits; see :class:`ImageDataset`); train = the first 50,000 of the 60,000
  training images, valid = the last 10,000, test = the 10,000 test images. Valid and test are
  binarized once, with a generator seeded by ``seed``, so every epoch and every run with that
  seed sees the same bits.
* ``"fashion"``: Fashion-MNIST, binarized like ``"dynamic"`` (as in the LARS and EIM papers).
  The authors' code has no validation split for Fashion-MNIST; this module holds out the last
  10,000 of the 60,000 training images as validation (train = the first 50,000), so its
  training set is 10,000 images smaller than the papers'.

Images are float32 ``[B, 784]`` (``flatten=True``, the default) or ``[B, 1, 28, 28]``, values in
{0., 1.}; batches are plain tensors. ``data_mean`` is the training split's pixel mean (of the
grayscale intensities / 255 for the dynamic variants): the model centres its energy inputs on
it and may initialise a decoder bias from it.

The continuous (jittered) variants live in :mod:`datamodules.jittered`; both share
:class:`ImageDataModule`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .idx import _cache_key, load_mnist_images, read_bytes
from .loaders import counter_uniform, eval_loader, seed64, train_loader

__all__ = [
    "BinarizedMNISTDataModule",
    "ImageDataModule",
    "ImageDataset",
    "VARIANTS",
    "STATIC_MNIST_URL",
    "read_amat",
    "load_static_mnist",
    "binarize",
    "jitter",
]

VARIANTS = ("static", "dynamic", "fashion")
STATIC_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_AMAT_SPLITS = ("train", "valid", "test")
_PIXELS = 784
_LINE = 2 * _PIXELS  # "d d ... d\n": 784 digits, 783 spaces, a newline

_AMAT_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


# -- pixel transforms -------------------------------------------------------------------------


def binarize(gray: Tensor, u: Tensor | None = None) -> Tensor:
    """``Bernoulli(gray / 255)`` draws as float32 {0., 1.} (``gray``: integers 0..255): one where
    the uniform ``u`` (same shape; default fresh from torch's global generator) is below ``gray / 255``."""
    p = gray.float().div_(255.0)
    return ((torch.rand(p.shape) if u is None else u) < p).float()


def jitter(ints: Tensor, u: Tensor | None = None) -> Tensor:
    """``ints + u`` as float32 (``ints``: integers 0..255; ``u`` uniform on [0, 1), default fresh
    from torch's global generator), strictly below ``ints + 1``.

    The noise is capped at ``1 - 2**-16`` (probability 2**-16 moved onto that value): below 256
    float32 steps are at most 2**-16, so ``k + u`` is then never rounded up to ``k + 1``."""
    noise = torch.rand(ints.shape) if u is None else u.clone()
    return noise.clamp_(max=1.0 - 2.0**-16).add_(ints.float())


_TRANSFORMS: dict[str, Callable[[Tensor, Tensor | None], Tensor]] = {"binarize": binarize, "jitter": jitter}


def _transform(name: str, raw: Tensor, noise: Callable[[], Tensor]) -> Tensor:
    """``raw`` through transform ``name`` (``"none"``: as float32) with uniforms from ``noise()``."""
    return raw.float() if name == "none" else _TRANSFORMS[name](raw, noise())


class ImageDataset(Dataset):
    """Images stored as a tensor ``[N, 784]`` and returned as float32 of ``event_shape``, through
    ``transform`` (``"none"``, ``"binarize"`` or ``"jitter"``) applied afresh at every read.

    The transform's uniforms: when the dataset is read by ``(epoch, index)`` pairs (what
    :func:`datamodules.loaders.train_loader` passes, since ``epoch_keyed`` is set for a random
    transform), they are :func:`datamodules.loaders.counter_uniform` of (``seed``, epoch, index):
    fresh every epoch, and the same bits on a resumed run and with any number of workers. Read
    by a plain index, they come from torch's global generator.

    Items are plain tensors; ``dataset[keys]`` with a list of keys (what the training loader passes)
    and ``__getitems__`` transform a whole batch at once.
    """

    #: ``dataset[list of keys]`` is a whole batch (:func:`datamodules.loaders.train_loader` reads it so)
    reads_batches = True

    def __init__(self, images: Tensor, event_shape: Sequence[int], transform: str = "none", seed: int = 0) -> None:
        if transform != "none" and transform not in _TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose one of {['none', *sorted(_TRANSFORMS)]}")
        self.images = images
        self.event_shape = torch.Size(event_shape)
        self.transform = transform
        self.seed = seed
        self.epoch_keyed = transform != "none"

    def __len__(self) -> int:
        return self.images.shape[0]

    def _read(self, keys: list) -> Tensor:
        if keys and isinstance(keys[0], (tuple, list)):
            pairs = torch.as_tensor(keys, dtype=torch.long)
            if pairs.dim() != 2 or pairs.shape[1] != 2:
                raise ValueError(f"keyed reads take (epoch, index) pairs, got {keys[0]!r}")
            epoch, index = pairs.unbind(1)
            raw = self.images[index]
            batch = _transform(self.transform, raw, lambda: counter_uniform(self.seed, epoch, index, raw.shape[1]))
        else:
            raw = self.images[torch.as_tensor(keys, dtype=torch.long)]
            batch = _transform(self.transform, raw, lambda: torch.rand(raw.shape))
        return batch.view(len(keys), *self.event_shape)

    def __getitem__(self, key: int | tuple[int, int] | list) -> Tensor:
        """One item (an index or an ``(epoch, index)`` pair), or a list of them: a batch ``[B, ...]``."""
        if isinstance(key, list):
            return self._read(key)
        return self._read([key])[0]

    def __getitems__(self, keys: list) -> list[Tensor]:
        return list(self._read(keys).unbind(0))

    def value_cover(self) -> Tensor | None:
        """Every value a read can yield, as float32 ``[M, *event_shape]`` (the list of values, its
        last row padded with the first), so that an elementwise check of it (finite, binary) checks
        every batch the dataset will ever yield: the training loop checks this once at the start of
        fit instead of checking each batch. ``"binarize"``: 0 and 1; ``"none"``: the stored values;
        ``"jitter"``: None (continuous values; batches are checked as they come)."""
        if self.transform == "binarize":
            values = torch.tensor([0.0, 1.0])
        elif self.transform != "none":
            return None
        elif self.images.dtype == torch.uint8:  # a count of each byte value: no sort of the whole set
            values = torch.bincount(self.images.reshape(-1), minlength=256).nonzero().flatten().float()
        else:
            values = torch.unique(self.images).float()
        n = self.event_shape.numel()
        rows = -(-values.numel() // n)
        padded = torch.cat([values, values[:1].expand(rows * n - values.numel())])
        return padded.view(rows, *self.event_shape)


# -- static MNIST files -----------------------------------------------------------------------


def _parse_amat_lines(path: Path, data: bytes) -> np.ndarray:
    """Line-by-line parse of any whitespace layout, with errors naming the line."""
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != _PIXELS:
            raise ValueError(
                f"{path}: line {number} has {len(tokens)} values, expected {_PIXELS} (28x28); "
                f"the file is corrupt or truncated"
            )
        digits = b"".join(tokens)
        if len(digits) != _PIXELS or digits.translate(None, b"01"):
            bad = next(t for t in tokens if t not in (b"0", b"1"))
            raise ValueError(
                f"{path}: line {number} holds the value {bad.decode(errors='replace')!r}; static binarized "
                f"MNIST values must be 0 or 1"
            )
        rows.append(np.frombuffer(digits, np.uint8))
    if not rows:
        raise ValueError(f"{path} holds no images (empty file)")
    return np.stack(rows) - 48


def read_amat(path: str | Path) -> np.ndarray:
    """The images of a static binarized MNIST ``.amat`` file (plain or gzipped), ``uint8``
    ``[N, 784]`` of 0/1, read-only, cached in-process.

    The canonical layout (each line ``784`` single digits separated by single spaces) is
    parsed as one ``[N, 1568]`` byte array (50,000 images in well under a second); any
    other whitespace is parsed line by line. A line with the wrong number of values or a value
    other than 0/1 raises ``ValueError`` naming the file and the line.
    """
    path = Path(path)
    key = _cache_key(path)
    if key in _AMAT_CACHE:
        return _AMAT_CACHE[key]
    data = read_bytes(path)
    if data and not data.endswith(b"\n"):
        data += b"\n"
    images = None
    if data and len(data) % _LINE == 0:
        a = np.frombuffer(data, np.uint8).reshape(-1, _LINE)
        values = a[:, 0::2]
        if (a[:, 1:-1:2] == 32).all() and (a[:, -1] == 10).all() and ((values == 48) | (values == 49)).all():
            images = values - 48
    if images is None:
        images = _parse_amat_lines(path, data)
    images.flags.writeable = False
    _AMAT_CACHE[key] = images
    return images


def _find_amat(root: Path, split: str) -> tuple[Path | None, list[Path]]:
    dirs = [root, root / "binarized_mnist"]
    for d in dirs:
        for suffix in ("", ".gz"):
            candidate = d / f"binarized_mnist_{split}.amat{suffix}"
            if candidate.is_file():
                return candidate, dirs
    return None, dirs


def load_static_mnist(root: str | Path, split: str, download: bool = False) -> Tensor:
    """Static binarized MNIST's ``split`` (``"train"``, ``"valid"`` or ``"test"``) as ``uint8``
    ``[N, 784]`` of 0/1, from ``root`` or ``root/binarized_mnist``; ``download=True`` fetches
    a missing file from :data:`STATIC_MNIST_URL` into ``root/binarized_mnist`` (needs internet)."""
    if split not in _AMAT_SPLITS:
        raise ValueError(f"unknown static MNIST split {split!r}; choose one of {list(_AMAT_SPLITS)}")
    root = Path(root).expanduser()
    name = f"binarized_mnist_{split}.amat"
    path, dirs = _find_amat(root, split)
    if path is None and download:
        from torchvision.datasets.utils import download_url  # only needed to download

        download_url(STATIC_MNIST_URL + name, str(root / "binarized_mnist"))
        path, dirs = _find_amat(root, split)
    if path is None:
        missing = "" if root.is_dir() else f" (the root directory {root} does not exist)"
        raise FileNotFoundError(
            f"static binarized MNIST file '{name}' (plain or .gz) not found{missing}; looked in: "
            f"{'; '.join(map(str, dirs))}. Pass download=True (needs internet) or download it from "
            f"{STATIC_MNIST_URL + name} into {root}"
        )
    return torch.from_numpy(read_amat(path).copy())


# -- the datamodules --------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int = 1, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " or None" if optional else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{none}, got {value!r}")


class ImageDataModule(L.LightningDataModule):
    """Shared machinery of the 28x28 image datamodules: splits, subsets, seeds, loaders and
    ``data_mean``. A subclass says where a split's raw ``uint8 [N, 784]`` images come from
    (``_raw``), how training and evaluation images are transformed (``train_transform``,
    ``eval_transform``) and how a raw mean becomes ``data_mean`` (``_mean``).
    Evaluation transforms are drawn once from a generator seeded by (``seed``, split)."""

    event_shape = torch.Size([_PIXELS])
    train_transform = "none"
    eval_transform = "none"

    def __init__(
        self,
        root: str,
        batch_size: int,
        eval_batch_size: int | None,
        flatten: bool,
        train_subset: int | None,
        val_subset: int | None,
        test_subset: int | None,
        num_workers: int,
        pin_memory: bool,
        seed: int,
        download: bool,
    ) -> None:
        super().__init__()
        _check_int("batch_size", batch_size)
        _check_int("eval_batch_size", eval_batch_size, optional=True)
        _check_int("train_subset", train_subset, optional=True)
        _check_int("val_subset", val_subset, optional=True)
        _check_int("test_subset", test_subset, optional=True)
        _check_int("num_workers", num_workers, minimum=0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.flatten = flatten
        self.subsets = {"train": train_subset, "valid": val_subset, "test": test_subset}
        self.num_workers, self.pin_memory, self.seed, self.download = num_workers, pin_memory, seed, download
        self.event_shape = torch.Size([_PIXELS]) if flatten else torch.Size([1, 28, 28])
        self._datasets: dict[str, ImageDataset] = {}
        self._data_mean: Tensor | None = None

    # subclasses ---------------------------------------------------------------------------

    def _raw(self, split: str) -> Tensor:
        """The full ``split`` (``"train"``, ``"valid"``, ``"test"``) as ``uint8 [N, 784]``."""
        raise NotImplementedError

    def _mean(self, raw_mean: Tensor) -> Tensor:
        """``data_mean`` from the per-pixel mean of the raw training images."""
        return raw_mean

    # splits -------------------------------------------------------------------------------

    def _subset(self, split: str) -> Tensor:
        raw = self._raw(split).reshape(-1, _PIXELS)
        n = self.subsets[split]
        if n is None:
            return raw
        if n > raw.shape[0]:
            arg = {"train": "train_subset", "valid": "val_subset", "test": "test_subset"}[split]
            raise ValueError(f"{arg}={n} exceeds the {raw.shape[0]} images of the {split} split")
        return raw[:n]

    def _dataset(self, split: str) -> ImageDataset:
        if split not in self._datasets:
            raw = self._subset(split)
            if split == "train":
                self._datasets[split] = ImageDataset(raw, self.event_shape, self.train_transform, self.seed)
            else:
                stream = {"valid": 1, "test": 2}[split]
                gen = torch.Generator().manual_seed(seed64(self.seed * 1_000_003 + stream))
                fixed = _transform(self.eval_transform, raw, lambda: torch.rand(raw.shape, generator=gen))
                if self.eval_transform == "binarize":
                    fixed = fixed.to(torch.uint8)  # 4x less memory; read back as float32
                self._datasets[split] = ImageDataset(fixed, self.event_shape, "none")
        return self._datasets[split]

    @property
    def train_dataset(self) -> ImageDataset:
        return self._dataset("train")

    @property
    def val_dataset(self) -> ImageDataset:
        return self._dataset("valid")

    @property
    def test_dataset(self) -> ImageDataset:
        return self._dataset("test")

    @property
    def data_mean(self) -> Tensor:
        """Per-pixel mean of the training split (after ``train_subset``), of ``event_shape``."""
        if self._data_mean is None:
            raw_mean = self._subset("train").double().mean(0)
            self._data_mean = self._mean(raw_mean).float().view(self.event_shape)
        return self._data_mean

    # Lightning hooks -----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Downloads missing files when ``download=True`` (Lightning calls this on one process)."""
        if self.download:
            for split in ("train", "valid", "test"):
                self._raw(split)

    def setup(self, stage: str | None = None) -> None:
        splits = {
            "fit": ("train", "valid"),
            "validate": ("valid",),
            "test": ("test",),
            "predict": ("test",),
            None: ("train", "valid", "test"),
        }
        if stage not in splits:
            raise ValueError(f"unknown stage {stage!r}; expected one of {list(splits)}")
        for split in splits[stage]:
            self._dataset(split)

    def _loader_options(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
        }

    def train_dataloader(self) -> DataLoader:
        return train_loader(
            self.train_dataset, self.batch_size, seed=self.seed, trainer=self.trainer, **self._loader_options()
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_dataset, self.eval_batch_size, self.trainer, **self._loader_options())

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self.test_dataset, self.eval_batch_size, self.trainer, **self._loader_options())

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def grayscale_split(dataset: str, root: Path, split: str, val_size: int, download: bool) -> Tensor:
    """``split`` of grayscale MNIST or Fashion-MNIST as ``uint8 [N, 784]``: ``"train"`` = the
    first ``60000 - val_size`` training images, ``"valid"`` = the last ``val_size``,
    ``"test"`` = the test images."""
    images = load_mnist_images(dataset, root, "test" if split == "test" else "train", download)
    images = images.reshape(-1, _PIXELS)
    if split == "test":
        return images
    if val_size >= images.shape[0]:
        raise ValueError(
            f"val_size={val_size} leaves no training images: the training file has only {images.shape[0]} "
            f"images (pass a smaller val_size)"
        )
    return images[:-val_size] if split == "train" else images[-val_size:]


class BinarizedMNISTDataModule(ImageDataModule):
    """Binarized MNIST (``"static"``, ``"dynamic"``) or Fashion-MNIST (``"fashion"``, dynamic
    binarization; validation = the last 10,000 training images, as the authors' code has no
    validation split for it). See the module docstring for the splits.

    Args:
        variant: ``"static"``, ``"dynamic"`` or ``"fashion"``.
        root: directory holding the files: ``binarized_mnist_{train,valid,test}.amat[.gz]``
            (static, in ``root`` or ``root/binarized_mnist``); MNIST / Fashion-MNIST IDX files,
            plain or ``.gz``, flat in ``root`` or in ``root/MNIST/raw``, ``root/mnist``,
            ``root/FashionMNIST/raw``, ``root/fashion-mnist``.
        batch_size: training batch size (the paper: 128).
        eval_batch_size: validation/test batch size (default: ``batch_size``).
        flatten: images as ``[B, 784]`` (True) or ``[B, 1, 28, 28]`` (False).
        val_size: dynamic variants: how many of the 60,000 training images (the last ones) form
            the validation split (default 10,000). Static MNIST's files fix its split, so it must
            be left unset there.
        train_subset, val_subset, test_subset: use only the first n images of a split (small
            slices for tests and smoke runs); None: all.
        num_workers: DataLoader worker processes (0: load in the main process).
        pin_memory: DataLoader ``pin_memory``.
        seed: seed of the fixed binarization of the validation and test images (dynamic variants).
        download: fetch missing files (needs internet): MNIST / Fashion-MNIST via torchvision
            into ``root/MNIST/raw`` / ``root/FashionMNIST/raw``, static MNIST from
            :data:`STATIC_MNIST_URL` into ``root/binarized_mnist``.
    """

    def __init__(
        self,
        variant: str = "static",
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        flatten: bool = True,
        val_size: int | None = None,
        train_subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown binarized MNIST variant {variant!r}; choose one of {list(VARIANTS)}")
        if variant == "static" and val_size is not None:
            raise ValueError(
                f"val_size={val_size} does not apply to static MNIST, whose files fix the split "
                f"(50000/10000/10000); leave it unset (use val_subset for a smaller validation set)"
            )
        _check_int("val_size", val_size, optional=True)
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
        self.variant = variant
        self.val_size = 10_000 if val_size is None else val_size
        if variant != "static":
            self.train_transform = self.eval_transform = "binarize"

    def _raw(self, split: str) -> Tensor:
        if self.variant == "static":
            return load_static_mnist(self.root, split, self.download)
        dataset = "mnist" if self.variant == "dynamic" else "fashion"
        return grayscale_split(dataset, self.root, split, self.val_size, self.download)

    def _mean(self, raw_mean: Tensor) -> Tensor:
        return raw_mean if self.variant == "static" else raw_mean / 255.0
