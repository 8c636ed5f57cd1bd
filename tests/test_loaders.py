"""Data-loader utilities: the counter-based uniforms that key per-read noise by (seed, epoch, index)."""

import pytest
import torch
from scipy import stats

from datamodules.binarized import ImageDataset
from datamodules.loaders import EpochSeededRandomSampler, counter_uniform


def test_counter_uniforms_are_uniform_on_the_24_bit_grid():
    n, width = 2000, 784
    u = counter_uniform(0, torch.zeros(n, dtype=torch.long), torch.arange(n), width)
    assert u.shape == (n, width) and u.dtype == torch.float32
    assert u.min() >= 0 and u.max() < 1
    assert torch.equal(u * 2**24, (u * 2**24).round())  # exactly k / 2**24
    flat = u.double().flatten()
    assert stats.kstest(flat[:200_000].numpy(), "uniform").pvalue > 1e-3
    # 1.57 M draws: mean and variance within 6 standard errors of 1/2 and 1/12
    assert abs(float(flat.mean()) - 0.5) < 6 * (1 / 12 / flat.numel()) ** 0.5
    assert abs(float(flat.var()) - 1 / 12) < 6 * (1 / 180 / flat.numel()) ** 0.5
    # no correlation between neighbouring columns or neighbouring rows (|r| < 6 / sqrt(N))
    for a, b in ((u[:, :-1], u[:, 1:]), (u[:-1], u[1:])):
        r = torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1]
        assert abs(float(r)) < 6 / a.numel() ** 0.5


def test_counter_uniforms_are_a_pure_function_of_seed_epoch_and_index():
    epoch, index = torch.tensor([0, 0, 1, 5]), torch.tensor([0, 1, 0, 3])
    u = counter_uniform(7, epoch, index, 16)
    assert torch.equal(u, counter_uniform(7, epoch, index, 16))
    assert torch.equal(u[2:3], counter_uniform(7, epoch[2:3], index[2:3], 16))  # row by row
    assert torch.equal(u[:, :5], counter_uniform(7, epoch, index, 5))  # a prefix of the stream
    rows = {tuple(r.tolist()) for r in u}
    assert len(rows) == 4  # every (epoch, index) has its own stream
    assert not torch.equal(u, counter_uniform(8, epoch, index, 16))  # and every seed
    # epoch/index pairs that sum alike still differ (keys are mixed, not added)
    assert not torch.equal(
        counter_uniform(0, torch.tensor([1]), torch.tensor([0]), 8),
        counter_uniform(0, torch.tensor([0]), torch.tensor([1]), 8),
    )


def test_sampler_tags_indices_with_the_epoch():
    data = list(range(10))
    plain, tagged = EpochSeededRandomSampler(data, seed=3), EpochSeededRandomSampler(data, seed=3, tag_epoch=True)
    plain.set_epoch(2)
    tagged.set_epoch(2)
    assert list(tagged) == [(2, i) for i in plain]
    assert sorted(plain) == data


class _Trainer:
    """What the sampler reads off a Lightning Trainer, at step 10 of a resumed run (epoch 1)."""

    training, current_epoch, global_step, accumulate_grad_batches = True, 1, 10, 1


def test_resumed_sampler_follows_the_trainers_epoch_and_skips_consumed_batches():
    """96 items in batches of 16: step 10 is batch 4 of epoch 1. The resumed iterator yields the
    rest of epoch 1's order even though nobody called ``set_epoch(1)`` (a DataLoader with workers
    starts its iterator before Lightning does)."""
    data = list(range(96))
    resumed = EpochSeededRandomSampler(data, seed=0, batch_size=16, trainer=_Trainer(), tag_epoch=True)
    uninterrupted = EpochSeededRandomSampler(data, seed=0, batch_size=16, tag_epoch=True)
    uninterrupted.set_epoch(1)
    assert list(resumed) == list(uninterrupted)[4 * 16 :]


@pytest.mark.parametrize("transform", ["none", "binarize"])
def test_batch_reads_give_the_batches_of_per_item_reads_and_collation(transform):
    """The training loader reads an ImageDataset a batch at a time; its batches (fresh, after
    ``set_epoch``, and resumed mid-epoch) are exactly those of DataLoader's per-item reads and
    default collation over the same sampler, last partial batch included."""
    from torch.utils.data import DataLoader

    from datamodules.loaders import train_loader

    images = (torch.rand(100, 784) * 255).to(torch.uint8) if transform == "binarize" else torch.rand(100, 784)
    dataset = ImageDataset(images, (784,), transform=transform, seed=4)
    for trainer in (None, _Trainer()):
        batched = train_loader(dataset, 16, seed=2, trainer=trainer)
        sampler = EpochSeededRandomSampler(dataset, 2, 16, trainer, tag_epoch=dataset.epoch_keyed)
        per_item = DataLoader(dataset, batch_size=16, sampler=sampler, collate_fn=lambda rows: torch.stack(rows))
        for epoch in (0, 3):
            batched.sampler.set_epoch(epoch)
            sampler.set_epoch(epoch)
            got, want = list(batched), list(per_item)
            assert len(got) == len(want) and got[-1].shape[0] == want[-1].shape[0] == 100 % 16
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"epoch and index must be 1-D of the same length, got \[3\] and \[2\]"):
        counter_uniform(0, torch.zeros(3, dtype=torch.long), torch.arange(2), 4)
    with pytest.raises(ValueError, match=r"epoch and index must be 1-D.*got \[2, 2\] and \[2, 2\]"):
        counter_uniform(0, torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), 4)
    for width in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"width must be a positive integer"):
            counter_uniform(0, torch.zeros(2, dtype=torch.long), torch.arange(2), width)
    dataset = ImageDataset(torch.zeros(5, 784, dtype=torch.uint8), [784], "binarize")
    with pytest.raises(ValueError, match=r"keyed reads take \(epoch, index\) pairs, got \(0, 1, 2\)"):
        dataset.__getitems__([(0, 1, 2)])
