"""Layer 3: the training loop's value checks (eim_lightning/modules/checks.py): a data set that lists
its values (``value_cover``) is checked once when training starts, not at every step; a value the
model cannot score anywhere in it stops fit before the first step; everything else is checked
batch by batch, naming the bad step."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules import BinarizedMNISTDataModule
from datamodules.binarized import ImageDataset
from datamodules.loaders import train_loader
from eim_lightning import VAE
from eim_lightning.densities.likelihoods import Bernoulli


def small_vae() -> VAE:
    return VAE(latent_dim=4, hidden_sizes=[8], num_val_samples=1)


@pytest.fixture
def count_binary_checks(monkeypatch):
    """The number of times the Bernoulli likelihood's value check has run (a list of the input sizes)."""
    calls = []
    check = Bernoulli.check

    def counted(self, x, owner):
        calls.append(x.shape[0])
        return check(self, x, owner)

    monkeypatch.setattr(Bernoulli, "check", counted)
    return calls


@pytest.mark.parametrize("stored", [torch.uint8, torch.float32])
def test_value_cover_of_a_fixed_set_is_exactly_its_stored_values(stored):
    images = torch.randint(0, 256, (300, 784), generator=torch.Generator().manual_seed(0)).to(stored)
    images[images == 7] = 8  # a value missing from the set
    cover = ImageDataset(images, (1, 28, 28)).value_cover()
    assert cover.dtype == torch.float32 and cover.shape[1:] == (1, 28, 28)
    assert set(cover.flatten().tolist()) == set(images.float().flatten().tolist())
    assert 7.0 not in set(cover.flatten().tolist())


def test_value_cover_of_binarized_reads_holds_every_value_they_yield():
    images = torch.randint(0, 256, (64, 784), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    data = ImageDataset(images, (784,), "binarize", seed=3)
    cover = set(data.value_cover().flatten().tolist())
    assert cover == {0.0, 1.0}
    seen = set(data[[(epoch, i) for epoch in range(3) for i in range(64)]].flatten().tolist())
    seen |= set(data[list(range(64))].flatten().tolist())
    assert seen <= cover


def test_jittered_reads_list_no_values():
    images = torch.randint(0, 256, (8, 784), dtype=torch.uint8)
    assert ImageDataset(images, (784,), "jitter").value_cover() is None


def test_listed_training_data_are_checked_once_not_at_every_step(make_trainer, count_binary_checks):
    images = torch.randint(0, 2, (64, 784), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    loader = train_loader(ImageDataset(images, (784,)), 16, seed=0)
    trainer = make_trainer(max_steps=5, limit_val_batches=0)
    trainer.fit(small_vae(), loader)
    assert trainer.global_step == 5
    assert count_binary_checks == [1]  # the cover (one row: 0 and 1), no batch


def test_unlisted_training_data_are_checked_at_every_step(make_trainer, count_binary_checks):
    images = torch.randint(0, 2, (64, 784), generator=torch.Generator().manual_seed(2)).float()
    trainer = make_trainer(max_steps=5, limit_val_batches=0)
    trainer.fit(small_vae(), DataLoader(TensorDataset(images), batch_size=16))
    assert trainer.global_step == 5
    assert count_binary_checks == [16] * 5


def test_a_value_anywhere_in_the_training_set_stops_fit_before_its_first_step(make_trainer):
    images = torch.randint(0, 2, (64, 784), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    images[-1, 5] = 128  # the last image: no early batch holds it
    model = small_vae()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(max_steps=5, limit_val_batches=0)
    match = r"the training data \(ImageDataset\) holds values the model cannot score.*needs binary data.*128"
    with pytest.raises(ValueError, match=match):
        trainer.fit(model, train_loader(ImageDataset(images, (784,)), 16, seed=0))
    assert trainer.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_batch_transfer_hook_brings_back_the_checks_at_every_step(make_trainer):
    class Halved(VAE):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch * 0.5

    images = torch.ones(64, 784, dtype=torch.uint8)
    trainer = make_trainer(max_steps=5, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"the batch of training step 0 is not valid: VAE has a Bernoulli"):
        trainer.fit(Halved(latent_dim=4, hidden_sizes=[8]), train_loader(ImageDataset(images, (784,)), 16, seed=0))


@pytest.mark.parametrize("variant", ["static", "dynamic"])
def test_the_real_mnist_training_sets_are_checked_once(data_dir, make_trainer, count_binary_checks, variant):
    dm = BinarizedMNISTDataModule(variant, root=str(data_dir), train_subset=64, val_subset=16, batch_size=16)
    trainer = make_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(small_vae(), datamodule=dm)
    assert trainer.global_step == 3 and count_binary_checks == [1]


def test_an_evaluation_checks_its_pixels_once_not_once_per_replica(count_binary_checks):
    from eim_lightning import densities as D

    torch.manual_seed(0)
    proposal = D.VAE(latent_dim=4, hidden_sizes=(8,))
    snis = D.SNIS(proposal, torch.nn.Linear(784, 1), num_proposals=4, eval_chunk_size=1)
    x = torch.randint(0, 2, (3, 784)).float()
    with torch.no_grad():
        assert torch.isfinite(snis.log_prob_lower_bound(x, num_samples=5)).all()
        assert count_binary_checks == [3]  # SNIS's own check of x delegates to its proposal's, once
        count_binary_checks.clear()
        proposal.log_prob_replicas(x, 2)  # the proposal called on its own still checks its pixels
        assert count_binary_checks == [3]
        with pytest.raises(ValueError, match="VAE has a Bernoulli likelihood and needs binary data"):
            snis.log_prob_lower_bound(x * 0.5, num_samples=5)
