"""LightningModule: the Gaussian baseline, a learnable diagonal Gaussian fit by maximum
likelihood (its "bound" is the exact log-density ``log N(x; mu, diag(sigma^2))``)."""

from __future__ import annotations

import lightning as L

from .. import densities
from .mixin import BoundEstimatorMixin

__all__ = ["Gaussian"]


class Gaussian(BoundEstimatorMixin, L.LightningModule):
    """Learnable diagonal Gaussian over ``data_dim`` (initialised at N(0, I)).

    Args:
        data_dim: dimension of the data.
        **kwargs: estimator options of :class:`BoundEstimatorMixin`.
    """

    def __init__(self, data_dim: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.density = densities.Normal(data_dim, learnable=True)
