r"""Data from a fixed linear-Gaussian latent-variable model (factor analysis), whose log-likelihood is exact.

    z ~ N(0, I_{d_z}),   x = W z + b + sigma eps,   eps ~ N(0, I_{d_x}),   so  p(x) = N(b, W W^T + sigma^2 I).

``W`` (entries N(0, 1)), ``b`` (N(0, 1)) are drawn once from the seed. The true parameters are
exposed (``weight``, ``bias``, ``noise_scale``) so that a model of the same family evaluates the
exact log-likelihood of the data (e.g. ``eim_lightning.densities.LinearGaussianModel(...,
weight=dm.weight, bias=dm.bias, noise_scale=dm.noise_scale)``): the ceiling that the variational
bounds (ELBO, IWAE, EIM posteriors) of a trained model approach from below.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .loaders import seed64
from .synthetic import SyntheticDataModule, check_positive_ints

__all__ = ["LinearGaussianDataModule"]


class LinearGaussianDataModule(SyntheticDataModule):
    """Samples ``x [data_dim]`` of a fixed random linear-Gaussian latent model.

    Args:
        data_dim: dimension of x.
        latent_dim: dimension of z.
        noise_scale: sigma.
        **kwargs: batch_size, steps_per_epoch, val_size, test_size, eval_batch_size, seed, as
            :class:`~datamodules.synthetic.SyntheticDataModule`.
    """

    def __init__(self, data_dim: int = 8, latent_dim: int = 2, noise_scale: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        check_positive_ints(data_dim=data_dim, latent_dim=latent_dim)
        if not noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {noise_scale}")
        self.save_hyperparameters()
        self.latent_dim, self.noise_scale = latent_dim, float(noise_scale)
        gen = torch.Generator().manual_seed(seed64(self.seed * 1_000_003 + 7))
        self.weight = torch.randn(data_dim, latent_dim, generator=gen)
        self.bias = torch.randn(data_dim, generator=gen)

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.weight.shape[0]])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``[n, data_dim]``."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        return (
            z @ self.weight.T + self.bias + self.noise_scale * torch.randn(n, self.weight.shape[0], generator=generator)
        )
