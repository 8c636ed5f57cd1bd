"""The density image callback: files, TensorBoard images, and the orientation of its panels."""

import torch

from datamodules import Toy2DDataModule, make_target
from eim_lightning import SNIS, Gaussian
from eim_lightning.callbacks import DensityImageCallback, colorize


def test_colorize_maps_the_unit_interval_to_rgb():
    img = colorize(torch.tensor([[0.0, 0.5, 1.0]]))
    assert img.shape == (3, 1, 3) and img.min() >= 0 and img.max() <= 1
    assert img[:, 0, 0].sum() < img[:, 0, 2].sum()  # dark to bright


def test_panels_put_the_positive_quadrant_top_right():
    """A Gaussian centred at (1, 1): the brightest pixel of its density panel is in the top-right
    quadrant, and so is the mass of its sample histogram."""
    model = Gaussian(data_dim=2)
    with torch.no_grad():
        model.density.loc.fill_(1.0)
    cb = DensityImageCallback(grid_size=40, num_samples=4000)
    strip = cb.strip(model, target=None, limit=2.0)
    g = 40
    panel = lambda i: strip[:, 2 : 2 + g, 2 + i * (g + 2) : 2 + i * (g + 2) + g].sum(0)  # noqa: E731
    density, hist = panel(1), panel(3)
    r, c = divmod(int(density.argmax()), g)
    assert r < g // 2 and c > g // 2
    assert hist[: g // 2, g // 2 :].sum() > hist[g // 2 :, : g // 2].sum()


def test_target_panels_show_the_checkerboard():
    cb = DensityImageCallback(grid_size=32, num_samples=2000)
    strip = cb.strip(Gaussian(data_dim=2), target=make_target("checkerboard"), limit=2.0)
    target = strip[:, 2:34, 2:34].sum(0)
    # cell (i, j) = (0, 0), bottom-left, is in the support; (1, 0) is not
    assert target[28, 4] > target[28, 12]


def test_target_panels_are_drawn_once_per_target_and_equal_fresh_ones():
    cb = DensityImageCallback(grid_size=32, num_samples=2000)
    model = Gaussian(data_dim=2)
    checkerboard, rings = make_target("checkerboard"), make_target("nine_gaussians")
    first = cb.strip(model, target=checkerboard, limit=2.0)
    again = cb.strip(model, target=checkerboard, limit=2.0)
    other = cb.strip(model, target=rings, limit=2.0)
    fresh = DensityImageCallback(grid_size=32, num_samples=2000).strip(model, target=rings, limit=2.0)
    target_columns = [*range(0, 34), *range(2 * 34, 3 * 34)]  # panels 1 and 3 (and their borders)
    assert torch.equal(first[:, :, target_columns], again[:, :, target_columns])
    assert not torch.equal(first[:, :, target_columns], other[:, :, target_columns])
    assert torch.equal(other[:, :, target_columns], fresh[:, :, target_columns])


def test_writes_pngs_and_tensorboard_images(make_trainer, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    cb = DensityImageCallback(every_n_steps=2, grid_size=16, num_samples=500)
    trainer = make_trainer(
        max_steps=4, callbacks=[cb], logger=TensorBoardLogger(tmp_path, name="run"), limit_val_batches=0
    )
    trainer.fit(SNIS(num_proposals=8), datamodule=Toy2DDataModule(steps_per_epoch=4))
    images = sorted(p.name for p in (tmp_path / "run" / "version_0" / "images").glob("*.png"))
    assert images == ["final.png", "step_0000002.png", "step_0000004.png"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "version_0"))
    acc.Reload()
    assert any(tag.startswith("density/") for tag in acc.Tags()["images"])
