r"""IDX files (the format of MNIST and Fashion-MNIST): find them, read them, download them.

An IDX file is a 4-byte magic number ``0x00 0x00 <type code> <ndim>``, then ``ndim`` big-endian
``int32`` sizes, then the values, big-endian, row-major. :func:`read_idx` reads one, plain or
gzipped (by content, whatever its name), and checks the header against the file's length.

:func:`load_mnist_images` finds the grayscale train and test images of MNIST or Fashion-MNIST
under a ``root`` directory, in the layouts users have:

* flat in ``root`` (``root/train-images-idx3-ubyte[.gz]``, as the original sites serve them);
* torchvision's layout ``root/MNIST/raw/`` or ``root/FashionMNIST/raw/``;
* ``root/mnist/`` or ``root/fashion-mnist/`` (``fashion_mnist`` too).

Files may be plain or ``.gz``, and named ``train-images-idx3-ubyte`` or
``train-images.idx3-ubyte``. torchvision is used only to download (``download=True``, needs
internet); it stores the files in its own layout, which this module then reads.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_idx", "find_idx", "load_mnist_images", "IDX_DATASETS"]

#: IDX type code -> numpy dtype (big-endian)
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: dataset name -> (torchvision class name, sub-directories searched below root, download source)
IDX_DATASETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "mnist": ("MNIST", ("MNIST/raw", "mnist", "MNIST"), "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion": (
        "FashionMNIST",
        ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist", "FashionMNIST"),
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}

_SPLIT_STEMS = {"train": "train-images", "test": "t10k-images"}

# in-process cache of parsed files: (resolved path, size, mtime_ns) -> array
_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped if they are gzip (detected by content), with a
    ``ValueError`` naming the file if the gzip stream is corrupt or truncated."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is a corrupt or truncated gzip file ({err}); delete it and get it again") from err


def _cache_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (plain or gzipped), cached in-process (so it
    is read-only: copy it before modifying).

    Raises ``ValueError`` naming the file if the magic number is wrong or the data are shorter or
    longer than the header says.
    """
    path = Path(path)
    key = _cache_key(path)
    if key in _CACHE:
        return _CACHE[key]
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise ValueError(
            f"{path} is not an IDX file: bad magic number {data[:4].hex() or '(empty file)'} "
            f"(expected 0000 + type code {'/'.join(f'{c:02x}' for c in _IDX_TYPES)} + number of dimensions); "
            f"the file is corrupt or not what its name says"
        )
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(
            f"{path} is {what}: its header promises shape {list(shape)} ({expected} bytes) but it has "
            f"{len(data)} bytes; delete it and get it again"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("="))
    array.flags.writeable = False
    _CACHE[key] = array
    return array


def find_idx(dirs: list[Path], stem: str, kind: str = "idx3") -> Path | None:
    """The first of ``<dir>/<stem>-<kind>-ubyte[.gz]`` or ``<dir>/<stem>.<kind>-ubyte[.gz]``
    that exists, over ``dirs`` in order; ``None`` if none does."""
    for d in dirs:
        for name in (f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"):
            for suffix in ("", ".gz"):
                candidate = d / (name + suffix)
                if candidate.is_file():
                    return candidate
    return None


def search_dirs(root: Path, dataset: str) -> list[Path]:
    """Where :func:`load_mnist_images` looks for ``dataset``'s files, in order."""
    return [root] + [root / sub for sub in IDX_DATASETS[dataset][1]]


def _download(root: Path, dataset: str) -> None:
    import torchvision.datasets as tvd  # only needed to download

    cls = getattr(tvd, IDX_DATASETS[dataset][0])
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def load_mnist_images(dataset: str, root: str | Path, split: str, download: bool = False) -> Tensor:
    """The grayscale images of ``dataset`` (``"mnist"`` or ``"fashion"``) in ``split``
    (``"train"``: the 60,000 training images; ``"test"``: the 10,000 test images), as a
    ``uint8`` tensor ``[N, 28, 28]`` (a copy of the cached file contents).

    Raises ``FileNotFoundError`` saying which file was looked for, where, and how to get it.
    """
    if dataset not in IDX_DATASETS:
        raise ValueError(f"unknown IDX dataset {dataset!r}; choose one of {sorted(IDX_DATASETS)}")
    if split not in _SPLIT_STEMS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(_SPLIT_STEMS)}")
    root = Path(root).expanduser()
    stem = _SPLIT_STEMS[split]
    dirs = search_dirs(root, dataset)
    path = find_idx(dirs, stem)
    if path is None and download:
        _download(root, dataset)
        path = find_idx(dirs, stem)
    if path is None:
        cls_name, _, url = IDX_DATASETS[dataset]
        where = "; ".join(str(d) for d in dirs)
        missing = "" if root.is_dir() else f" (the root directory {root} does not exist)"
        raise FileNotFoundError(
            f"{cls_name} {split} images '{stem}-idx3-ubyte' (plain or .gz) not found{missing}; looked in: {where}. "
            f"Pass download=True (needs internet; torchvision saves them under {root / cls_name / 'raw'}) "
            f"or put the IDX files from {url} in {root}"
        )
    images = read_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{path} holds a {images.dtype} array of shape {list(images.shape)}; expected uint8 images "
            f"[N, 28, 28] (is it a labels file or another data set?)"
        )
    return torch.from_numpy(images.copy())
