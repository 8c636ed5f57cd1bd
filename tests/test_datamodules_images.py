"""Image datamodules: static / dynamic binarized MNIST, binarized and jittered Fashion-MNIST.

Real files (static MNIST, grayscale MNIST for dynamic MNIST, Fashion-MNIST) come from the
``data_dir`` fixture; the IDX reader's layouts and edge cases are also tested on small IDX files
the tests write themselves (with ``struct``, an oracle independent of the reader under test)."""

from __future__ import annotations

import ast
import gzip
import math
import re
import struct
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from datamodules import BinarizedMNISTDataModule, JitteredMNISTDataModule, read_amat, read_idx
from datamodules.binarized import STATIC_MNIST_URL, binarize, jitter

REPO = Path(__file__).resolve().parents[1]

N_TRAIN, N_TEST, N_VAL = 120, 20, 20


# -- helpers ----------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """An IDX file of ``array`` (uint8, any ndim), written by hand."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def tiny_images(n: int, seed: int) -> np.ndarray:
    """``n`` 28x28 uint8 images using the whole 0..255 range, with exact 0s and 255s."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, :4] = 0
    images[:, -4:] = 255
    return images


@pytest.fixture
def tiny_mnist():
    return tiny_images(N_TRAIN, 1), tiny_images(N_TEST, 2)


def write_tiny(
    root: Path, train: np.ndarray, test: np.ndarray, sub: str = "MNIST/raw", gz: bool = False, dotted: bool = False
) -> Path:
    d = root / sub if sub else root
    sep = "." if dotted else "-"
    write_idx(d / f"train-images{sep}idx3-ubyte", train, gz)
    write_idx(d / f"t10k-images{sep}idx3-ubyte", test, gz)
    write_idx(d / f"train-labels{sep}idx1-ubyte", np.zeros(len(train), np.uint8), gz)
    return root


def oracle_idx_images(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 784)


def all_batches(loader) -> torch.Tensor:
    return torch.cat([b for b in loader])


def static_lines(data_dir: Path, split: str, n: int) -> list[bytes]:
    with gzip.open(data_dir / "binarized_mnist" / f"binarized_mnist_{split}.amat.gz") as f:
        return [f.readline() for _ in range(n)]


# -- static MNIST (real files) ----------------------------------------------------------------


def test_static_real_files_counts_shapes_values_mean(data_dir):
    dm = BinarizedMNISTDataModule("static", str(data_dir), batch_size=64)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (50_000, 10_000, 10_000)
    assert dm.event_shape == torch.Size([784])
    for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        assert set(ds.images.unique().tolist()) == {0, 1}
    mean = dm.data_mean
    assert mean.shape == (784,) and mean.dtype == torch.float32
    assert abs(float(mean.mean()) - 0.1306) < 1e-3
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (64, 784) and batch.dtype == torch.float32
    assert set(batch.unique().tolist()) <= {0.0, 1.0}
    # the fast parser agrees with a naive parse of the first and last lines of each file
    for split, ds in (("train", dm.train_dataset), ("valid", dm.val_dataset), ("test", dm.test_dataset)):
        first = np.array(static_lines(data_dir, split, 1)[0].split(), dtype=np.int64)
        assert torch.equal(ds[0].long(), torch.from_numpy(first))
    with gzip.open(data_dir / "binarized_mnist" / "binarized_mnist_test.amat.gz") as f:
        last = np.array(f.read().splitlines()[-1].split(), dtype=np.int64)
    assert torch.equal(dm.test_dataset[9_999].long(), torch.from_numpy(last))
    # static is fixed: reading twice gives the same bits; val/test loaders are in file order
    assert torch.equal(dm.train_dataset[3], dm.train_dataset[3])
    assert torch.equal(next(iter(dm.val_dataloader())), dm.val_dataset.images[:64].float())

    shaped = BinarizedMNISTDataModule("static", str(data_dir), batch_size=8, flatten=False, test_subset=100)
    assert shaped.event_shape == torch.Size([1, 28, 28])
    assert shaped.data_mean.shape == (1, 28, 28)
    assert torch.equal(shaped.data_mean.flatten(), mean)
    shaped.setup("test")
    batch = next(iter(shaped.test_dataloader()))
    assert batch.shape == (8, 1, 28, 28)
    assert torch.equal(batch.flatten(1), dm.test_dataset.images[:8].float())
    assert len(shaped.test_dataset) == 100


def test_static_plain_amat_in_both_locations_and_any_whitespace(data_dir, tmp_path):
    n = 300
    lines = {s: static_lines(data_dir, s, n) for s in ("train", "valid", "test")}
    (tmp_path / "binarized_mnist").mkdir()
    (tmp_path / "binarized_mnist" / "binarized_mnist_train.amat").write_bytes(b"".join(lines["train"]))
    (tmp_path / "binarized_mnist_valid.amat").write_bytes(b"".join(lines["valid"]))
    # other whitespace (CRLF, tabs, double spaces, no final newline) goes through the line parser
    odd = [b"\t" + line.rstrip(b"\n").replace(b" ", b"  ") + b"\r\n" for line in lines["test"]]
    (tmp_path / "binarized_mnist_test.amat").write_bytes(b"".join(odd).rstrip(b"\r\n"))

    dm = BinarizedMNISTDataModule("static", str(tmp_path), batch_size=32)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (n, n, n)
    full = BinarizedMNISTDataModule("static", str(data_dir), train_subset=n, val_subset=n, test_subset=n)
    full.setup()
    for split in ("train_dataset", "val_dataset", "test_dataset"):
        assert torch.equal(getattr(dm, split).images, getattr(full, split).images)
    assert torch.allclose(dm.data_mean, full.data_mean)


# -- dynamic MNIST (real grayscale MNIST files) --------------------------------------------------


def test_dynamic_mnist_real_split_mean_and_published_statistics(data_dir):
    train = oracle_idx_images(data_dir / "mnist" / "train-images-idx3-ubyte.gz")
    test = oracle_idx_images(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    # the published grayscale statistics of the 60,000 training images (pixels scaled to [0, 1])
    assert (len(train), len(test)) == (60_000, 10_000)
    assert abs(train.mean() / 255 - 0.13066) < 5e-5 and abs((train / 255).std() - 0.30811) < 5e-5
    dm = BinarizedMNISTDataModule("dynamic", str(data_dir), batch_size=128)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (50_000, 10_000, 10_000)
    assert torch.equal(dm.train_dataset.images, torch.from_numpy(train[:50_000].copy()))
    expected_mean = torch.from_numpy(train[:50_000].astype(np.float64).mean(0) / 255).float()
    assert torch.allclose(dm.data_mean, expected_mean, atol=1e-6)
    # validation and test: binarized once (0 -> 0 and 255 -> 1 surely), Bernoulli(gray / 255) on average
    for fixed, gray in ((dm.val_dataset.images, train[50_000:]), (dm.test_dataset.images, test)):
        assert set(fixed.unique().tolist()) == {0, 1}
        assert (fixed[torch.from_numpy(gray == 0)] == 0).all() and (fixed[torch.from_numpy(gray == 255)] == 1).all()
        assert abs(float(fixed.float().mean()) - gray.mean() / 255) < 1e-3
    # training batches: fresh binary draws of the grayscale images
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (128, 784) and set(batch.unique().tolist()) == {0.0, 1.0}


# -- Fashion-MNIST (real files) ---------------------------------------------------------------


def test_fashion_real_split_and_mean(data_dir):
    dm = BinarizedMNISTDataModule("fashion", str(data_dir))
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (50_000, 10_000, 10_000)
    train = oracle_idx_images(data_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    test = oracle_idx_images(data_dir / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")
    assert len(train) == 60_000
    assert torch.equal(dm.train_dataset.images, torch.from_numpy(train[:50_000].copy()))
    # valid: fixed binarization of the last 10k training images (0 -> 0, 255 -> 1 surely)
    val = dm.val_dataset.images
    assert set(val.unique().tolist()) == {0, 1}
    assert (val[torch.from_numpy(train[50_000:] == 0)] == 0).all()
    assert (val[torch.from_numpy(train[50_000:] == 255)] == 1).all()
    assert (dm.test_dataset.images[torch.from_numpy(test == 255)] == 1).all()
    expected_mean = torch.from_numpy(train[:50_000].astype(np.float64).mean(0) / 255).float()
    assert torch.allclose(dm.data_mean, expected_mean, atol=1e-6)
    # the fixed binarizations are Bernoulli(gray / 255): their means match the grayscale means
    # (10k images x 784 pixels: the standard error of the overall mean is below 2e-4)
    assert abs(float(val.float().mean()) - train[50_000:].mean() / 255) < 1e-3
    assert abs(float(dm.test_dataset.images.float().mean()) - test.mean() / 255) < 1e-3


def test_fashion_dynamic_binarization_is_fresh_and_unbiased(data_dir):
    dm = BinarizedMNISTDataModule("fashion", str(data_dir), batch_size=100, train_subset=1000)
    ds = dm.train_dataset
    p = ds.images[0].double() / 255
    a, b = ds[0], ds[0]
    assert set(torch.cat([a, b]).unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)
    assert torch.equal(a[p == 0], torch.zeros_like(a[p == 0])) and torch.equal(a[p == 1], torch.ones_like(a[p == 1]))
    n = 4000
    reads = torch.stack(ds.__getitems__([0] * n)).double()
    assert reads.shape == (n, 784)
    # per pixel: |mean - p| < 5 standard errors (+1e-9 for p in {0, 1}, where the error is 0)
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-9
    assert ((reads.mean(0) - p).abs() < tol).all()
    # an epoch through the shuffled loader: fresh bits each epoch, mean matches data_mean
    loader = dm.train_dataloader()
    epoch0 = all_batches(loader)
    loader.sampler.set_epoch(1)  # what Lightning does at each epoch start
    epoch1 = all_batches(loader)
    assert epoch1.shape == (1000, 784) and not torch.equal(epoch0, epoch1)
    pixel_se = math.sqrt(0.25 / epoch1.numel())
    assert abs(float(epoch1.mean()) - float(dm.data_mean.mean())) < 6 * pixel_se
    # the bits are a function of (seed, epoch, image): the same epoch read again gives the same batches
    assert torch.equal(all_batches(loader), epoch1)
    loader.sampler.set_epoch(0)
    assert torch.equal(all_batches(dm.train_dataloader()), epoch0)


def test_dynamic_bits_are_keyed_by_seed_epoch_and_image(data_dir):
    """Each training image's bits depend on (seed, epoch, image) only: not on the shuffle order,
    the batch it lands in or how many batches were read before (which is what makes a resumed
    run read the same bits), and they differ between epochs, images and seeds."""
    dm = BinarizedMNISTDataModule("fashion", str(data_dir), batch_size=50, train_subset=200, seed=5)
    ds = dm.train_dataset
    a = torch.stack(ds.__getitems__([(3, 10), (3, 11), (4, 10)]))
    b = torch.stack(ds.__getitems__([(4, 10), (3, 10)]))
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0]) and torch.equal(ds[(3, 11)], a[1])
    p = ds.images[10].double() / 255
    mixed = (p > 0.2) & (p < 0.8)  # pixels where two Bernoulli draws differ with probability > 0.3
    assert mixed.sum() > 100
    assert not torch.equal(a[0][mixed], a[2][mixed])  # another epoch
    other = BinarizedMNISTDataModule("fashion", str(data_dir), batch_size=50, train_subset=200, seed=6).train_dataset
    assert not torch.equal(other[(3, 10)][mixed], a[0][mixed])  # another seed
    # the loader's epoch e batches are exactly the keyed reads of its (epoch, index) order
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(7)
    keys = [key for batch in loader.sampler for key in batch]  # the loader reads whole batches of keys
    assert keys[0][0] == 7 and sorted(i for _, i in keys) == list(range(200))
    assert torch.equal(all_batches(loader), torch.stack(ds.__getitems__(keys)))
    # 2000 epochs of one image: the keyed bits are Bernoulli(p) per pixel (5 standard errors)
    n = 2000
    reads = torch.stack(ds.__getitems__([(e, 10) for e in range(n)])).double()
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-9
    assert ((reads.mean(0) - p).abs() < tol).all()


def test_fashion_eval_binarization_fixed_across_epochs_and_instances(data_dir):
    kwargs = dict(val_subset=500, test_subset=300, batch_size=64, eval_batch_size=128)
    dm = BinarizedMNISTDataModule("fashion", str(data_dir), seed=3, **kwargs)
    dm.setup("fit")
    dm.setup("test")
    v1, v2 = all_batches(dm.val_dataloader()), all_batches(dm.val_dataloader())
    t1, t2 = all_batches(dm.test_dataloader()), all_batches(dm.test_dataloader())
    assert v1.shape == (500, 784) and t1.shape == (300, 784)
    assert torch.equal(v1, v2) and torch.equal(t1, t2)
    assert torch.equal(dm.val_dataset[7], dm.val_dataset[7])
    again = BinarizedMNISTDataModule("fashion", str(data_dir), seed=3, **kwargs)
    assert torch.equal(all_batches(again.val_dataloader()), v1)
    assert torch.equal(all_batches(again.test_dataloader()), t1)
    other = BinarizedMNISTDataModule("fashion", str(data_dir), seed=4, **kwargs)
    assert not torch.equal(all_batches(other.val_dataloader()), v1)
    # the subset is a prefix of the full fixed binarization (same bits whatever the slice)
    small = BinarizedMNISTDataModule("fashion", str(data_dir), seed=3, val_subset=100)
    assert torch.equal(small.val_dataset.images.float(), v1[:100])


# -- dynamic MNIST on tiny IDX files ----------------------------------------------------------


@pytest.mark.parametrize(
    "sub, gz, dotted",
    [("MNIST/raw", False, False), ("", False, False), ("", True, False), ("mnist", True, False), ("", False, True)],
    ids=["torchvision-layout", "flat-plain", "flat-gz", "mnist-dir-gz", "dotted-names"],
)
def test_dynamic_mnist_tiny_idx(tmp_path, tiny_mnist, sub, gz, dotted):
    train, test = tiny_mnist
    root = write_tiny(tmp_path, train, test, sub=sub, gz=gz, dotted=dotted)
    dm = BinarizedMNISTDataModule("dynamic", str(root), batch_size=16, val_size=N_VAL)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (100, 20, 20)
    flat = train.reshape(N_TRAIN, 784)
    assert torch.equal(dm.train_dataset.images, torch.from_numpy(flat[:100]))
    expected_mean = torch.from_numpy(flat[:100].astype(np.float64).mean(0) / 255).float()
    assert torch.allclose(dm.data_mean, expected_mean, atol=1e-6)
    val, held_out = dm.val_dataset.images, torch.from_numpy(flat[100:])
    assert (val[held_out == 0] == 0).all() and (val[held_out == 255] == 1).all()
    tst, gray_test = dm.test_dataset.images, torch.from_numpy(test.reshape(N_TEST, 784))
    assert (tst[gray_test == 0] == 0).all() and (tst[gray_test == 255] == 1).all()
    batches = list(dm.train_dataloader())
    assert len(batches) == 7 and batches[0].shape == (16, 784) and batches[-1].shape == (4, 784)
    assert set(torch.cat(batches).unique().tolist()) == {0.0, 1.0}
    assert torch.equal(all_batches(dm.val_dataloader()), all_batches(dm.val_dataloader()))
    assert dm.hparams["variant"] == "dynamic" and dm.hparams["val_size"] == N_VAL


def test_dynamic_subsets_and_unflattened(tmp_path, tiny_mnist):
    root = write_tiny(tmp_path, *tiny_mnist)
    dm = BinarizedMNISTDataModule(
        "dynamic", str(root), batch_size=8, val_size=N_VAL, flatten=False, train_subset=30, val_subset=10, test_subset=5
    )
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (30, 10, 5)
    assert dm.event_shape == torch.Size([1, 28, 28]) and dm.data_mean.shape == (1, 28, 28)
    assert next(iter(dm.train_dataloader())).shape == (8, 1, 28, 28)
    assert next(iter(dm.test_dataloader())).shape == (5, 1, 28, 28)
    expected = torch.from_numpy(tiny_mnist[0][:30].astype(np.float64).mean(0) / 255).float()
    assert torch.allclose(dm.data_mean[0], expected, atol=1e-6)


def test_worker_processes_draw_fresh_bits(tmp_path, tiny_mnist):
    """With DataLoader workers, training bits stay fresh across epochs and equal those of a
    loader without workers; valid bits stay fixed."""
    root = write_tiny(tmp_path, *tiny_mnist)
    dm = BinarizedMNISTDataModule("dynamic", str(root), batch_size=10, val_size=N_VAL, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    e1 = all_batches(loader)
    loader.sampler.set_epoch(1)
    e2 = all_batches(loader)
    assert e1.shape == e2.shape == (100, 784) and not torch.equal(e1, e2)
    batches = list(loader)
    assert not any(torch.equal(batches[0], b) for b in batches[1:])
    # the bits do not depend on the workers: a worker-free loader reads the same epoch identically
    single = BinarizedMNISTDataModule("dynamic", str(root), batch_size=10, val_size=N_VAL).train_dataloader()
    single.sampler.set_epoch(1)
    assert torch.equal(all_batches(single), e2)
    assert torch.equal(all_batches(dm.val_dataloader()), dm.val_dataset.images.float())


def test_download_goes_through_torchvision(tmp_path, tiny_mnist, monkeypatch):
    """Offline stand-in for torchvision.datasets.MNIST: it writes the files where torchvision
    would, so this checks our side of the download path (call, layout, then our reader)."""
    import torchvision.datasets

    calls = []

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            write_tiny(Path(root), *tiny_mnist, sub="MNIST/raw")

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    root = tmp_path / "new"
    dm = BinarizedMNISTDataModule("dynamic", str(root), val_size=N_VAL, download=True)
    dm.prepare_data()
    assert calls and all(c == (str(root), c[1], True) for c in calls)
    dm.setup()
    assert len(dm.train_dataset) == 100


# -- jittered ---------------------------------------------------------------------------------


def test_jittered_tiny_mnist(tmp_path, tiny_mnist):
    train, test = tiny_mnist
    root = write_tiny(tmp_path, train, test, sub="", gz=True)
    dm = JitteredMNISTDataModule("mnist", str(root), batch_size=25, val_size=N_VAL, seed=1)
    dm.setup()
    ints = torch.from_numpy(train.reshape(N_TRAIN, 784)[:100]).float()
    e1, e2 = torch.stack(dm.train_dataset.__getitems__(list(range(100)))), dm.train_dataset[0]
    assert e1.dtype == torch.float32 and e1.shape == (100, 784)
    assert (e1 >= 0).all() and (e1 < 256).all() and torch.equal(e1.floor(), ints)
    assert not torch.equal(e1[0], e2) and torch.equal(e2.floor(), ints[0])
    epoch = all_batches(dm.train_dataloader())
    assert epoch.shape == (100, 784) and (epoch < 256).all()
    val1, val2 = all_batches(dm.val_dataloader()), all_batches(dm.val_dataloader())
    assert torch.equal(val1, val2)
    assert torch.equal(val1.floor(), torch.from_numpy(train.reshape(N_TRAIN, 784)[100:]).float())
    tst = all_batches(dm.test_dataloader())
    assert torch.equal(tst.floor(), torch.from_numpy(test.reshape(N_TEST, 784)).float())
    assert torch.allclose(dm.data_mean, ints.double().mean(0).float() + 0.5, atol=1e-4)
    again = JitteredMNISTDataModule("mnist", str(root), val_size=N_VAL, seed=1)
    assert torch.equal(all_batches(again.val_dataloader()), val1)
    shaped = JitteredMNISTDataModule("mnist", str(root), batch_size=4, val_size=N_VAL, flatten=False)
    assert shaped.event_shape == (1, 28, 28) and next(iter(shaped.train_dataloader())).shape == (4, 1, 28, 28)


def test_jittered_fashion_real(data_dir):
    dm = JitteredMNISTDataModule("fashion", str(data_dir), train_subset=2000, val_subset=1000, test_subset=1000)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (2000, 1000, 1000)
    ints = dm.train_dataset.images.float()
    x = torch.stack(dm.train_dataset.__getitems__(list(range(2000))))
    assert (x >= 0).all() and (x < 256).all() and torch.equal(x.floor(), ints)
    noise = (x - ints).double()
    # U(0, 1) noise: mean 1/2, variance 1/12, over 1.6M pixels (6 standard errors)
    assert abs(float(noise.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / noise.numel())
    assert abs(float(noise.var()) - 1 / 12) < 1e-3
    assert abs(float(dm.data_mean.mean()) - (float(ints.mean()) + 0.5)) < 1e-4


def test_jitter_never_rounds_up_to_the_next_integer():
    """float32 ``255 + u`` rounds to 256 for u within 2**-17 of 1 (about 8 of 10**6 draws)."""
    k = torch.full((2_000_000,), 255, dtype=torch.uint8)
    x = jitter(k, torch.rand(k.shape, generator=torch.Generator().manual_seed(0)))
    assert (x < 256).all() and (x.floor() == 255).all()
    assert (jitter(k, torch.full(k.shape, 1 - 2.0**-24)) < 256).all()  # the largest counter_uniform value
    small = jitter(torch.zeros(10, dtype=torch.uint8))
    assert (small > 0).all() and (small < 1).all()
    b = binarize(torch.tensor([0, 255] * 500, dtype=torch.uint8)).view(-1, 2)
    assert b.dtype == torch.float32 and (b[:, 0] == 0).all() and (b[:, 1] == 1).all()


# -- errors -----------------------------------------------------------------------------------


def test_unknown_variant_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown binarized MNIST variant 'stattic'.*'static', 'dynamic', 'fashion'"):
        BinarizedMNISTDataModule("stattic", str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown jittered dataset 'kmnist'.*'mnist', 'fashion'"):
        JitteredMNISTDataModule("kmnist", str(tmp_path))
    with pytest.raises(ValueError, match=r"val_size=5000 does not apply to static MNIST"):
        BinarizedMNISTDataModule("static", str(tmp_path), val_size=5000)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 0"):
        BinarizedMNISTDataModule("dynamic", str(tmp_path), batch_size=0)
    with pytest.raises(ValueError, match=r"train_subset must be an integer >= 1 or None, got -3"):
        BinarizedMNISTDataModule("dynamic", str(tmp_path), train_subset=-3)


def test_missing_files_say_what_where_and_how(tmp_path):
    dm = BinarizedMNISTDataModule("static", str(tmp_path))
    with pytest.raises(
        FileNotFoundError,
        match=r"'binarized_mnist_train.amat' \(plain or .gz\) not found; looked in: "
        + re.escape(f"{tmp_path}; {tmp_path / 'binarized_mnist'}")
        + r"\. Pass download=True.*"
        + re.escape(STATIC_MNIST_URL + "binarized_mnist_train.amat"),
    ):
        dm.setup()
    with pytest.raises(FileNotFoundError, match=r"root directory .*nowhere does not exist"):
        BinarizedMNISTDataModule("static", str(tmp_path / "nowhere")).setup("test")
    with pytest.raises(
        FileNotFoundError,
        match=r"MNIST train images 'train-images-idx3-ubyte'.*looked in: .*"
        r"MNIST/raw.*Pass download=True \(needs internet",
    ):
        BinarizedMNISTDataModule("dynamic", str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match=r"FashionMNIST train images.*fashion-mnist.*download=True"):
        _ = JitteredMNISTDataModule("fashion", str(tmp_path)).data_mean  # the property loads the data
    # only the test file missing: the message names it
    write_idx(tmp_path / "train-images-idx3-ubyte", tiny_images(30, 0))
    with pytest.raises(FileNotFoundError, match=r"MNIST test images 't10k-images-idx3-ubyte'"):
        BinarizedMNISTDataModule("dynamic", str(tmp_path), val_size=10).setup("test")


def test_corrupt_idx_files(tmp_path):
    good = tiny_images(30, 0)
    path = write_idx(tmp_path / "a" / "train-images-idx3-ubyte", good)
    data = path.read_bytes()
    bad_magic = tmp_path / "b" / "train-images-idx3-ubyte"
    bad_magic.parent.mkdir()
    bad_magic.write_bytes(b"\x08\x03\x00\x00" + data[4:])
    with pytest.raises(ValueError, match=r"not an IDX file: bad magic number 08030000"):
        read_idx(bad_magic)
    truncated = tmp_path / "c" / "train-images-idx3-ubyte"
    truncated.parent.mkdir()
    truncated.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"is truncated: its header promises shape \[30, 28, 28\]"):
        BinarizedMNISTDataModule("dynamic", str(truncated.parent), val_size=10).setup("fit")
    bad_gz = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    bad_gz.parent.mkdir()
    bad_gz.write_bytes(gzip.compress(data)[:-50])
    with pytest.raises(ValueError, match=r"corrupt or truncated gzip file"):
        JitteredMNISTDataModule("mnist", str(bad_gz.parent), val_size=10).setup("fit")
    labels = write_idx(tmp_path / "e" / "train-images-idx3-ubyte", np.zeros(30, np.uint8))
    with pytest.raises(ValueError, match=r"shape \[30\]; expected uint8 images \[N, 28, 28\]"):
        BinarizedMNISTDataModule("dynamic", str(labels.parent), val_size=10).setup("fit")
    assert np.array_equal(read_idx(path), good)


def test_split_sizes_that_do_not_fit(tmp_path, tiny_mnist):
    root = write_tiny(tmp_path, *tiny_mnist)
    with pytest.raises(ValueError, match=r"val_size=10000 leaves no training images: the training file has only 120"):
        BinarizedMNISTDataModule("dynamic", str(root)).setup("fit")
    with pytest.raises(ValueError, match=r"train_subset=500 exceeds the 100 images of the train split"):
        BinarizedMNISTDataModule("dynamic", str(root), val_size=N_VAL, train_subset=500).setup("fit")
    with pytest.raises(ValueError, match=r"test_subset=21 exceeds the 20 images of the test split"):
        JitteredMNISTDataModule("mnist", str(root), val_size=N_VAL, test_subset=21).setup("test")


def good_line() -> bytes:
    return b" ".join([b"0", b"1"] * 392) + b"\n"


@pytest.mark.parametrize(
    "line, message",
    [
        (b" ".join([b"0"] * 783) + b"\n", r"line 2 has 783 values, expected 784"),
        (b" ".join([b"0"] * 783 + [b"2"]) + b"\n", r"line 2 holds the value '2'; .*must be 0 or 1"),
        (b" ".join([b"0"] * 783 + [b"0.5"]) + b"\n", r"line 2 holds the value '0.5'"),
        (b" ".join([b"0"] * 782 + [b"10"]) + b"\n", r"line 2 has 783 values"),
        (b" ".join([b"1"] * 300), r"line 2 has 300 values.*corrupt or truncated"),
    ],
    ids=["short-line", "value-2", "value-float", "merged-digits", "truncated"],
)
def test_corrupt_amat_lines(tmp_path, line, message):
    (tmp_path / "binarized_mnist_train.amat").write_bytes(good_line() + line)
    with pytest.raises(ValueError, match=r"binarized_mnist_train.amat: " + message):
        _ = BinarizedMNISTDataModule("static", str(tmp_path)).data_mean  # the property loads the data


def test_corrupt_amat_files(tmp_path):
    empty = tmp_path / "binarized_mnist_valid.amat"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds no images \(empty file\)"):
        read_amat(empty)
    gz = tmp_path / "binarized_mnist_test.amat.gz"
    gz.write_bytes(gzip.compress(good_line() * 20)[:-30])
    with pytest.raises(ValueError, match=r"binarized_mnist_test.amat.gz is a corrupt or truncated gzip file"):
        BinarizedMNISTDataModule("static", str(tmp_path)).setup("test")
    ok = tmp_path / "ok" / "binarized_mnist_test.amat.gz"
    ok.parent.mkdir()
    ok.write_bytes(gzip.compress(good_line() * 3))
    assert read_amat(ok).shape == (3, 784) and read_amat(ok)[:, :4].tolist() == [[0, 1, 0, 1]] * 3


# -- integration ------------------------------------------------------------------------------


def test_no_model_imports():
    """``datamodules`` knows no model: none of its files imports ``eim_lightning``."""
    for path in (REPO / "datamodules").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n.split(".")[0] == "eim_lightning" for n in names), path


def test_typed_init_builds_from_config(tmp_path, tiny_mnist):
    """LightningCLI builds datamodules from YAML through jsonargparse's view of the typed __init__."""
    from jsonargparse import ArgumentParser

    root = write_tiny(tmp_path, *tiny_mnist)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(BinarizedMNISTDataModule, "data")
    parser.add_class_arguments(JitteredMNISTDataModule, "jit")
    cfg = parser.parse_object(
        {
            "data": {"variant": "dynamic", "root": str(root), "val_size": 20, "train_subset": 50, "flatten": False},
            "jit": {"dataset": "mnist", "root": str(root), "val_size": 20, "test_subset": 7},
        }
    )
    init = parser.instantiate(cfg)
    assert isinstance(init.data, BinarizedMNISTDataModule) and init.data.event_shape == (1, 28, 28)
    assert len(init.data.train_dataset) == 50 and len(init.jit.test_dataset) == 7


class _ShapeProbe(L.LightningModule):
    """Checks what a model sees: the datamodule's event shape and data mean, tensor batches."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(784, 1)
        self.seen = []

    def setup(self, stage):
        dm = self.trainer.datamodule
        self.register_buffer("data_mean", torch.as_tensor(dm.data_mean).reshape(1, 784).clone())
        assert tuple(dm.event_shape) == (1, 28, 28)

    def training_step(self, batch, batch_idx):
        self.seen.append(tuple(batch.shape))
        return self.layer(batch.flatten(1) - self.data_mean).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.seen.append(tuple(batch.shape))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_fit_and_validate(tmp_path, tiny_mnist):
    root = write_tiny(tmp_path, *tiny_mnist)
    dm = BinarizedMNISTDataModule(
        "dynamic", str(root), batch_size=32, eval_batch_size=10, val_size=N_VAL, flatten=False
    )
    model = _ShapeProbe()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    train_shapes = [s for s in model.seen if s[0] != 10]
    assert train_shapes == [(32, 1, 28, 28)] * 3 + [(4, 1, 28, 28)]
    assert model.seen.count((10, 1, 28, 28)) >= 2  # the sanity check and the epoch's validation
    assert torch.allclose(model.data_mean.view(1, 28, 28), dm.data_mean)
