"""LightningModule: the HIS EIM (ALGORITHMS.md 2.3), trained on the mean of

    l = log pi(x_0) + log N(rho_0; 0, I) - log r(rho_T | x_T)

with ``rho_T ~ r(.|x_T)`` and ``(x_0, rho_0)`` from the exact reverse of the tempered leapfrog.
``HIS(data_dim=2)`` is the paper's 2-D model: proposal N(0, I), potential MLP 20-20 tanh,
momentum network 20-20 tanh, T = 5 leapfrog steps, eps = 0.1, alpha_t = 0.995 initially.
Validation and test work under Lightning's inference mode (the density computes grad E in a
local ``inference_mode(False)`` block). On the CPU the default MLP networks train with
closed-form gradients (``densities.HIS.closed_form_gradients``), replayed from a TorchScript
trace (the ``closed_form``, ``trace`` and ``compile`` options of the step engine). Diagnostics:
mean step size, product of the alpha_t.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch import nn

from .. import densities
from .mixin import BoundEstimatorMixin, default_mlp, default_proposal, resolve_density

__all__ = ["HIS"]


class HIS(BoundEstimatorMixin, L.LightningModule):
    """Hamiltonian importance sampling EIM.

    Args:
        data_dim: dimension of the data (ignored when ``density`` is given).
        T: leapfrog steps (``T >= 0``).
        hidden_sizes: hidden layers of the default potential and momentum networks.
        step_size_init: initial leapfrog step size.
        alpha_init: initial tempering factor (0.995 for 2-D, 0.9995 for images).
        proposal: proposal density (default N(0, I)).
        potential: potential network E (default MLP ``data_dim -> hidden_sizes -> 1`` without an
            output bias, which would get no gradient). With ``T = 0`` the potential is unused
            and multi-process training needs ``strategy="ddp_find_unused_parameters_true"``.
        momentum_net: network for r(rho_T | x_T) (default MLP ``data_dim -> hidden_sizes -> 2 data_dim``).
        density: a ready :class:`eim_lightning.densities.HIS` (then no parts).
        **kwargs: estimator options of :class:`BoundEstimatorMixin`.
    """

    def __init__(
        self,
        data_dim: int = 2,
        T: int = 5,
        hidden_sizes: Sequence[int] = (20, 20),
        step_size_init: float = 0.1,
        alpha_init: float = 0.995,
        proposal: densities.Density | None = None,
        potential: nn.Module | None = None,
        momentum_net: nn.Module | None = None,
        density: densities.HIS | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["proposal", "potential", "momentum_net", "density"])
        self.density = resolve_density(
            density,
            {"proposal": proposal, "potential": potential, "momentum_net": momentum_net},
            lambda: densities.HIS(
                default_proposal(data_dim, proposal),
                default_mlp(data_dim, hidden_sizes, potential, output_bias=False),  # E enters only via grad E
                default_mlp(data_dim, hidden_sizes, momentum_net, out_dim=2 * data_dim),
                T=T,
                step_size_init=step_size_init,
                alpha_init=alpha_init,
            ),
        )
