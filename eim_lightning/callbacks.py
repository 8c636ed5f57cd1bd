"""Layer 4: callbacks. :class:`DensityImageCallback` draws the paper's 2-D figures;
:class:`ImageSampleCallback` (at the end of this file) logs sample and reconstruction grids of
image models.

Every ``every_n_steps`` training steps and at the end of training it renders, on a grid over
``[-limit, limit]^2``, four panels side by side:

1. the target density (when the datamodule has a ``target`` with ``log_prob``),
2. the model's density image as the paper plots it (``density.log_unnormalized_density``:
   pi e^U for SNIS, pi a for TRS/LARS, e^{-E} for HIS, the density for a Gaussian),
3. a histogram of target samples,
4. a histogram of ``density.sample(num_samples)``, the model's exact samples,

and logs the strip to TensorBoard (``add_image``) and writes it as a PNG under ``output_dir``
(default ``<log_dir>/images``). Images are made with torch and torchvision only.

Both callbacks draw their samples inside Lightning's ``isolate_rng``: rendering an image (on
rank 0 only) leaves every process's training random stream exactly where it was, so a run
trains identically with or without them.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from torchvision.utils import make_grid, save_image

__all__ = ["DensityImageCallback", "colorize", "ImageSampleCallback"]

# anchors of the viridis colour map, interpolated linearly
_VIRIDIS = torch.tensor(
    [[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551], [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]]
)


def colorize(values: Tensor) -> Tensor:
    """Map ``[H, W]`` values in [0, 1] to an RGB image ``[3, H, W]`` (viridis)."""
    v = values.clamp(0, 1).float() * (len(_VIRIDIS) - 1)
    lo = v.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (v - lo).unsqueeze(-1)
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
    return rgb.permute(2, 0, 1)


def _density_panel(log_density: Tensor) -> Tensor:
    finite = torch.isfinite(log_density)
    if not bool(finite.any()):
        return colorize(torch.zeros_like(log_density))
    top = log_density[finite].max()
    return colorize(torch.where(finite, torch.exp(log_density - top), torch.zeros_like(log_density)))


def _histogram_panel(samples: Tensor, grid_size: int, limit: float) -> Tensor:
    samples = samples.detach().float().cpu()
    counts, _ = torch.histogramdd(samples, bins=[grid_size, grid_size], range=[-limit, limit, -limit, limit])
    image = counts.T.flip(0)  # rows: y from top to bottom; columns: x
    return colorize(image / image.max().clamp_min(1.0))


class DensityImageCallback(L.Callback):
    """Log the model's 2-D density image and sample histogram beside the target's.

    Args:
        every_n_steps: render every this many training steps (and always at the end).
        grid_size: pixels per side of each panel.
        num_samples: samples per histogram.
        limit: half-width of the plotted square (default: the target's ``plot_limit``, else 3).
        output_dir: where PNG files go (default ``<trainer.log_dir>/images``).
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        grid_size: int = 128,
        num_samples: int = 10_000,
        limit: float | None = None,
        output_dir: str | None = None,
    ) -> None:
        if every_n_steps < 1 or grid_size < 2 or num_samples < 1:
            raise ValueError("every_n_steps >= 1, grid_size >= 2 and num_samples >= 1 are required")
        self.every_n_steps, self.grid_size, self.num_samples = every_n_steps, grid_size, num_samples
        self.limit, self.output_dir = limit, output_dir
        self.last_path: Path | None = None

    def _directory(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "images"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_render = None
        rank_zero_info(f"DensityImageCallback: density and sample images go to {self._directory(trainer)}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.render(trainer, pl_module, f"step_{trainer.global_step:07d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.render(trainer, pl_module, "final")

    @torch.no_grad()
    def strip(self, pl_module: L.LightningModule, target=None, limit: float | None = None) -> Tensor:
        """The ``[3, H, 4W]`` image strip (target density, model density, target and model
        histograms); target panels are blank when ``target`` is None."""
        density = pl_module.density
        limit = limit or self.limit or getattr(target, "plot_limit", 3.0)
        g = self.grid_size
        device = next(iter(pl_module.parameters())).device
        dtype = next(iter(pl_module.parameters())).dtype
        axis = torch.linspace(-limit, limit, g, device=device, dtype=dtype)
        ys, xs = torch.meshgrid(axis.flip(0), axis, indexing="ij")
        points = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
        was_training = density.training
        density.eval()
        try:
            model_image = _density_panel(density.log_unnormalized_density(points).reshape(g, g).float().cpu())
            model_hist = _histogram_panel(density.sample(self.num_samples), g, limit)
        finally:
            density.train(was_training)
        target_image, target_hist = self._target_panels(target, points.cpu(), limit)
        return make_grid([target_image, model_image, target_hist, model_hist], nrow=4, padding=2, pad_value=1.0)

    def _target_panels(self, target, points: Tensor, limit: float) -> tuple[Tensor, Tensor]:
        """The target's density image and histogram (its samples from a fixed seed): the same at every
        render, so drawn once per target and plotted square."""
        g = self.grid_size
        if target is None:
            return torch.ones(3, g, g), torch.ones(3, g, g)
        key = (limit, g, self.num_samples)
        cached = self.__dict__.get("_target_cache")
        if cached is None or cached[0] is not target or cached[1] != key:
            image = _density_panel(target.log_prob(points.double()).reshape(g, g))
            hist = _histogram_panel(target.sample(self.num_samples, torch.Generator().manual_seed(0)), g, limit)
            cached = self.__dict__["_target_cache"] = (target, key, (image, hist))
        return cached[2]

    @isolate_rng()
    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> None:
        if not trainer.is_global_zero:
            return
        target = getattr(trainer.datamodule, "target", None) if trainer.datamodule is not None else None
        last = getattr(self, "_last_render", None)
        if last is not None and last[0] == trainer.global_step:
            image = last[1]  # the weights have not changed since (e.g. the final image after the last step's)
        else:
            image = self.strip(pl_module, target)
            self._last_render = (trainer.global_step, image)
        directory = self._directory(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        self.last_path = directory / f"{tag}.png"
        save_image(image, self.last_path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("density/target_model_targethist_modelhist", image, trainer.global_step)


class ImageSampleCallback(L.Callback):
    """Log image grids of a model of 28x28 images: its exact samples, the decoder means at prior
    draws, and reconstructions of training images, every ``every_n_steps`` steps and at the end.

    Works for a latent-variable model (``density.reconstruct``/``sample_means``, e.g. the VAE and
    ConvHVAE) and for a pixel-space EIM whose proposal is one (samples of the EIM itself,
    reconstructions and decoder means from its proposal). Images go to TensorBoard
    (``images/samples``, ``images/means``, ``images/reconstructions``: originals on odd rows,
    reconstructions below them) and to PNG files under ``output_dir`` (default
    ``<log_dir>/images``).

    Args:
        every_n_steps: render every this many training steps (and always at the end).
        num_samples: samples per grid (a square number reads best).
        num_reconstructions: training images reconstructed (0: none).
        pixel_range: the data's maximum (1 for binary images, 256 for jittered ones).
        image_shape: ``(H, W)`` of one image.
        output_dir: where PNG files go.
    """

    def __init__(
        self,
        every_n_steps: int = 10_000,
        num_samples: int = 64,
        num_reconstructions: int = 32,
        pixel_range: float = 1.0,
        image_shape: tuple[int, int] = (28, 28),
        output_dir: str | None = None,
    ) -> None:
        if every_n_steps < 1 or num_samples < 1 or num_reconstructions < 0 or not pixel_range > 0:
            raise ValueError(
                "every_n_steps >= 1, num_samples >= 1, num_reconstructions >= 0 and pixel_range > 0 are required"
            )
        self.every_n_steps, self.num_samples, self.num_reconstructions = every_n_steps, num_samples, num_reconstructions
        self.pixel_range, self.image_shape, self.output_dir = pixel_range, tuple(image_shape), output_dir
        self.last_paths: list[Path] = []
        self._batch: Tensor | None = None

    def _directory(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "images"

    def _grid(self, images: Tensor, nrow: int = 8) -> Tensor:
        images = (images.detach().float().cpu() / self.pixel_range).clamp(0, 1)
        return make_grid(images.reshape(-1, 1, *self.image_shape), nrow=nrow, padding=2, pad_value=0.5)

    @torch.no_grad()
    def grids(self, pl_module: L.LightningModule, batch: Tensor | None = None) -> dict[str, Tensor]:
        """``{"samples", "means", "reconstructions"}`` grids ``[3, H, W]`` (those the model has)."""
        density = pl_module.density
        latent = density if hasattr(density, "reconstruct") else getattr(density, "proposal", None)
        was_training = density.training
        density.eval()
        try:
            out = {"samples": self._grid(density.sample(self.num_samples))}
            if latent is not None and hasattr(latent, "reconstruct"):
                out["means"] = self._grid(latent.sample_means(self.num_samples))
                if batch is not None and self.num_reconstructions:
                    x = batch[: self.num_reconstructions]
                    recon = latent.reconstruct(x)
                    pairs = torch.stack([x.reshape(recon.shape), recon])  # [2, n, D]
                    rows = [pairs[j, i : i + 8] for i in range(0, len(x), 8) for j in (0, 1)]
                    out["reconstructions"] = self._grid(torch.cat(rows))
        finally:
            density.train(was_training)
        return out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._batch = x[: self.num_reconstructions].detach()
        if trainer.global_step % self.every_n_steps == 0:
            self.render(trainer, pl_module, f"step_{trainer.global_step:07d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.render(trainer, pl_module, "final")

    @isolate_rng()
    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> None:
        if not trainer.is_global_zero:
            return
        directory = self._directory(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        self.last_paths = []
        for name, image in self.grids(pl_module, self._batch).items():
            path = directory / f"{name}_{tag}.png"
            save_image(image, path)
            self.last_paths.append(path)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(f"images/{name}", image, trainer.global_step)
