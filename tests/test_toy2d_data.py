"""2-D targets against exact oracles (quadrature, closed forms) and the datamodule's contract."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from datamodules import TARGETS, Toy2DDataModule, make_target


def _midpoint_grid(limit, n):
    """Midpoints of an n x n grid of cells over [-limit, limit]^2 and the cell width."""
    h = 2 * limit / n
    axis = -limit + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2), h


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_density_integrates_to_one(name):
    target = make_target(name)
    points, h = _midpoint_grid(3.0, 1200)
    mass = torch.exp(target.log_prob(points)).sum().item() * h * h
    assert mass == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_samples_follow_log_prob(name):
    """Chi-square of a 2-D histogram of sample() against the density integrated over each bin."""
    target = make_target(name)
    n, bins, limit = 200_000, 12, 2.4
    x = target.sample(n, torch.Generator().manual_seed(1)).double()
    edges = np.linspace(-limit, limit, bins + 1)
    counts, _, _ = np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=[edges, edges])
    # bin probabilities by midpoint quadrature on a fine sub-grid
    sub = 40
    fine = np.linspace(-limit, limit, bins * sub + 1)
    mid = torch.tensor((fine[:-1] + fine[1:]) / 2)
    gx, gy = torch.meshgrid(mid, mid, indexing="ij")
    dens = torch.exp(target.log_prob(torch.stack([gx, gy], -1))).numpy() * (fine[1] - fine[0]) ** 2
    probs = dens.reshape(bins, sub, bins, sub).sum(axis=(1, 3))
    expected = probs * n
    keep = expected > 20
    assert abs(expected[keep].sum() - counts[keep].sum()) / n < 0.01
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = keep.sum() - 1
    assert stats.chi2.sf(chi2, dof) > 1e-4, (chi2, dof)


def test_expected_log_likelihoods():
    assert make_target("checkerboard").expected_log_likelihood == pytest.approx(-math.log(8))
    nine = make_target("nine_gaussians")
    assert nine.expected_log_likelihood == pytest.approx(-0.4299, abs=1e-4)
    # the closed form neglects overlap: Monte Carlo agrees within its error
    assert nine.expected_log_prob(nine.log_prob, n=200_000) == pytest.approx(nine.expected_log_likelihood, abs=0.01)
    assert make_target("two_rings").expected_log_likelihood == pytest.approx(-1.514, abs=0.005)


def test_unknown_target_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown 2-D target 'moons'.*checkerboard"):
        make_target("moons")
    with pytest.raises(ValueError, match="unknown 2-D target"):
        Toy2DDataModule("moons")


@pytest.mark.parametrize("arg", ["batch_size", "steps_per_epoch", "test_size"])
def test_bad_sizes_are_clear_errors(arg):
    with pytest.raises(ValueError, match=arg):
        Toy2DDataModule("checkerboard", **{arg: 0})


def test_training_batches_are_fresh_and_reproducible():
    dm = Toy2DDataModule("two_rings", batch_size=64, steps_per_epoch=5)
    first = list(dm.train_dataloader())
    again = list(dm.train_dataloader())
    assert len(first) == 5 and first[0].shape == (64, 2)
    assert not torch.equal(first[0], first[1])  # fresh every step
    for a, b in zip(first, again):  # the same (seed, step) gives the same batch
        assert torch.equal(a, b)
    other = list(Toy2DDataModule("two_rings", batch_size=64, steps_per_epoch=5, seed=1).train_dataloader())
    assert not torch.equal(first[0], other[0])


def test_training_batches_continue_from_the_global_step():
    """A resumed run (global step s) sees the batches an uninterrupted run sees at step s."""

    class FakeTrainer:
        global_step, global_rank, accumulate_grad_batches = 0, 0, 1

    dm = Toy2DDataModule("checkerboard", batch_size=8, steps_per_epoch=6)
    dm.trainer = FakeTrainer()
    full = list(dm.train_dataloader())
    FakeTrainer.global_step = 4
    resumed = list(dm.train_dataloader())
    assert torch.equal(resumed[0], full[4]) and torch.equal(resumed[1], full[5])
    FakeTrainer.global_step, FakeTrainer.global_rank = 0, 1
    assert not torch.equal(list(dm.train_dataloader())[0], full[0])  # other ranks draw other samples


def test_validation_and_test_sets_are_fixed_by_the_seed():
    dm = Toy2DDataModule("nine_gaussians")
    dm.setup("fit")
    (val1,) = next(iter(dm.val_dataloader()))
    test = torch.cat([b[0] for b in dm.test_dataloader()])
    assert test.shape == (10_000, 2)
    dm2 = Toy2DDataModule("nine_gaussians")
    (val2,) = next(iter(dm2.val_dataloader()))
    assert torch.equal(val1, val2)
    assert not torch.equal(val1[:100], test[:100])
    assert dm.event_shape == (2,) and torch.equal(dm.data_mean, torch.zeros(2))
