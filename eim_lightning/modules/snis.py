"""LightningModule: the SNIS EIM (ALGORITHMS.md 2.1), trained on its lower bound

    L_SNIS(x) = log pi(x) + U(x) - log( (1/K) [ e^{U(x)} + sum_{j<K} e^{U(x'_j)} ] ).

``SNIS(data_dim=2)`` is the paper's 2-D model: proposal N(0, I), energy MLP 20-20 tanh,
K = 1024, negatives shared across the batch. Pass ``proposal``/``energy`` or a ready
``density`` for custom use. ``module.density`` is the layer-2 :class:`eim_lightning.densities.SNIS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch import nn

from .. import densities
from .mixin import BoundEstimatorMixin, default_mlp, default_proposal, resolve_density

__all__ = ["SNIS"]


class SNIS(BoundEstimatorMixin, L.LightningModule):
    """Self-normalised importance sampling EIM.

    Args:
        data_dim: dimension of the data (ignored when ``density`` is given).
        num_proposals: K.
        hidden_sizes: hidden layers of the default energy MLP.
        share_proposal_samples: share the K-1 negatives across the batch.
        proposal: proposal density (default N(0, I)).
        energy: energy network (default MLP ``data_dim -> hidden_sizes -> 1``, tanh).
        density: a ready :class:`eim_lightning.densities.SNIS` (then no parts).
        **kwargs: estimator options of :class:`BoundEstimatorMixin` (lr, num_test_samples, ...).
    """

    def __init__(
        self,
        data_dim: int = 2,
        num_proposals: int = 1024,
        hidden_sizes: Sequence[int] = (20, 20),
        share_proposal_samples: bool = True,
        proposal: densities.Density | None = None,
        energy: nn.Module | None = None,
        density: densities.SNIS | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["proposal", "energy", "density"])
        self.density = resolve_density(
            density,
            {"proposal": proposal, "energy": energy},
            lambda: densities.SNIS(
                default_proposal(data_dim, proposal),
                default_mlp(data_dim, hidden_sizes, energy),
                num_proposals=num_proposals,
                share_proposal_samples=share_proposal_samples,
            ),
        )
