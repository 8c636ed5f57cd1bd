"""LightningModule: the TRS EIM (ALGORITHMS.md 2.2), trained on the truncated-rejection bound

    L_TRS(x) = log pi(x) + (1 - r(T-1|x)) log a(x) + E_r[t] Ê_pi[log(1 - a(x'))] + H[r(.|x)]

(``bound="authors"``: the authors' code form, log a(x) unweighted). ``TRS(data_dim=2)`` is the
paper's 2-D model: proposal N(0, I), acceptance MLP 20-20 tanh, T = 1024. Diagnostics: expected
trials 1/Z_v, Z_v and the acceptance rate of proposal samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L
from torch import nn

from .. import densities
from .mixin import BoundEstimatorMixin, default_mlp, default_proposal, resolve_density

__all__ = ["TRS"]


class TRS(BoundEstimatorMixin, L.LightningModule):
    """Truncated rejection sampling EIM.

    Args:
        data_dim: dimension of the data (ignored when ``density`` is given).
        T: truncation (maximum number of proposals).
        hidden_sizes: hidden layers of the default acceptance MLP.
        bound: ``"exact"`` (default) or ``"authors"``.
        proposal: proposal density (default N(0, I)).
        accept_logit: acceptance-logit network (default MLP ``data_dim -> hidden_sizes -> 1``).
        density: a ready :class:`eim_lightning.densities.TRS` (then no parts).
        **kwargs: estimator options of :class:`BoundEstimatorMixin`.
    """

    def __init__(
        self,
        data_dim: int = 2,
        T: int = 1024,
        hidden_sizes: Sequence[int] = (20, 20),
        bound: Literal["exact", "authors"] = "exact",
        proposal: densities.Density | None = None,
        accept_logit: nn.Module | None = None,
        density: densities.TRS | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["proposal", "accept_logit", "density"])
        self.density = resolve_density(
            density,
            {"proposal": proposal, "accept_logit": accept_logit},
            lambda: densities.TRS(
                default_proposal(data_dim, proposal),
                default_mlp(data_dim, hidden_sizes, accept_logit),
                T=T,
                bound=bound,
            ),
        )
