"""LightningModule: LARS (Bauer & Mnih 2019; ALGORITHMS.md 2.4), the baseline EIMs compete with.

Trains on the truncated-rejection log-density with a moving-average estimate of Z. Because Z is
estimated, its value is **an estimate of log q_T(x), not a bound**: it is logged as
``train/log_prob_estimate``, ``val/log_prob_estimate`` and ``test/log_prob_estimate``.

* after every optimiser step, ``Z_ema <- mean stopgrad(Z_s)``, averaged over processes, so the
  buffer is identical on every worker (and saved in checkpoints);
* at the start of validation Z is re-estimated from ``num_z_val_samples`` proposal samples,
  at the start of testing from ``num_z_eval_samples`` (default 1e8; the LARS paper used 1e10),
  streamed in chunks and averaged over processes.

Both are done by :class:`BoundEstimatorMixin` for every LARS density inside any module (so a
VAE with a LARS prior gets them too). Any other evaluation of the density
(``module.density.log_prob_lower_bound(x, 1000)`` after ``trainer.fit``, in either mode) uses
the evaluation Z too, re-estimated from ``num_z_eval_samples`` samples when the parameters have
changed since (see :class:`eim_lightning.densities.LARS`); only the training step uses the
moving average.

``LARS(data_dim=2)`` is the paper's 2-D model: N(0, I) proposal, acceptance MLP 20-20 tanh,
T = 1024 and K = 1024 samples for Z per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch import nn

from .. import densities
from .mixin import BoundEstimatorMixin, default_mlp, default_proposal, resolve_density

__all__ = ["LARS"]


class LARS(BoundEstimatorMixin, L.LightningModule):
    """LARS with an estimated normaliser.

    Args:
        data_dim: dimension of the data (ignored when ``density`` is given).
        T: truncation.
        num_z_samples: proposal samples per training step for Z.
        num_z_val_samples: proposal samples for Z at validation.
        num_z_eval_samples: proposal samples for Z at test.
        z_eval_chunk_size: chunk size of the streamed estimates.
        antithetic: antithetic pairs in the streamed estimates.
        hidden_sizes: hidden layers of the default acceptance MLP.
        proposal: proposal density (default N(0, I)).
        accept_logit: acceptance-logit network (default MLP ``data_dim -> hidden_sizes -> 1``).
        density: a ready :class:`eim_lightning.densities.LARS` (then no parts).
        **kwargs: estimator options of :class:`BoundEstimatorMixin`.
    """

    bound_name = "log_prob_estimate"

    def __init__(
        self,
        data_dim: int = 2,
        T: int = 1024,
        num_z_samples: int = 1024,
        num_z_val_samples: int = 10**5,
        num_z_eval_samples: int = 10**8,
        z_eval_chunk_size: int = densities.base.SAMPLE_CHUNK_SIZE,
        antithetic: bool = False,
        hidden_sizes: Sequence[int] = (20, 20),
        proposal: densities.Density | None = None,
        accept_logit: nn.Module | None = None,
        density: densities.LARS | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["proposal", "accept_logit", "density"])
        self.density = resolve_density(
            density,
            {"proposal": proposal, "accept_logit": accept_logit},
            lambda: densities.LARS(
                default_proposal(data_dim, proposal),
                default_mlp(data_dim, hidden_sizes, accept_logit),
                T=T,
                num_z_samples=num_z_samples,
                num_z_val_samples=num_z_val_samples,
                num_z_eval_samples=num_z_eval_samples,
                z_eval_chunk_size=z_eval_chunk_size,
                antithetic=antithetic,
            ),
        )
