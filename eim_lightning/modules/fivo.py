r"""LightningModule: FIVO, a sequential latent-variable model trained on the SMC bound.

The unification (ALGORITHMS.md section 4): FIVO is SMC in q, the EIM whose auxiliaries are all
particles and ancestor indices, and never resampling is IWAE on whole sequences::

    L_FIVO(x) = E[ Σ_t log Σ_k W̄_{t-1}^k α_t^k ]  ──(never resample)──>  E[ log (1/K) Σ_k Π_t α_t^k ] = L_IWAE(x)

with α_t^k = p(x_t, z_t^k | z_{<t}^k) / q(z_t^k | z_{<t}^k, x) and W̄_{t-1} the normalised weights
carried since the last resampling (1/K right after one). Both are <= log p(x_{1:T}), and
exp(log Ẑ) is unbiased for p(x_{1:T}) under every scheme. Resampling happens when
ESS < ``ess_threshold`` · K (FIVO: K/2), by multinomial (FIVO's default), stratified or
systematic resampling; the resampling step's score-function gradient is dropped, as in FIVO.

``model`` is any layer-2 :class:`~eim_lightning.densities.SequentialModel` (composition):
:class:`~eim_lightning.densities.LinearGaussianSSM` (exact Kalman log-likelihood, the oracle)
or :class:`~eim_lightning.densities.VRNN`. ``FIVO.linear_gaussian(a, q, r)`` builds the first.

Training: K = ``num_particles`` particles per sequence. Validation and test use the same bound
with K = ``num_val_samples`` / ``num_test_samples`` particles (the mixin's "samples" are
particles here; SMC with K particles is tighter than K independent one-particle replicas).
Logged through the mixin: ``train/bound``, ``val/bound``, ``test/bound`` and the diagnostics
``train/resampling_events`` (mean resampling events per sequence) and ``train/ess_fraction``
(mean over t of ESS_t / K); for a model with an exact ``log_likelihood`` (the linear-Gaussian
one) also ``val/log_likelihood`` and ``test/log_likelihood``, so the gap is visible in TensorBoard.

Batches are ``[B, T, obs_dim]`` (or ``[B, T]`` for 1-D observations), or a tuple whose first
element is. A datamodule's ``event_shape`` ``[T, obs_dim]`` must end in the model's ``obs_dim``.

References: Maddison et al., "Filtering Variational Objectives" (NeurIPS 2017); Naesseth et al.,
"Variational Sequential Monte Carlo" (AISTATS 2018); Le et al., "Auto-Encoding Sequential Monte
Carlo" (ICLR 2018); Lawson et al. (NeurIPS 2019), section 4.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from ..densities import LinearGaussianSSM, SequentialModel
from ..densities.base import check_finite, check_positive_int
from ..densities.sequential import check_resampling
from ..smc import Resampling
from .mixin import BoundEstimatorMixin

__all__ = ["FIVO"]


class FIVO(BoundEstimatorMixin, L.LightningModule):
    """Filtering variational objective (SMC bound) for a sequential latent-variable model.

    FIVO is SMC in q: ``log Ẑ = Σ_t log Σ_k W̄_{t-1}^k α_t^k``, and with ``resampling="never"``
    ``log Ẑ = log (1/K) Σ_k Π_t α_t^k``, the IWAE bound on whole sequences.

    Args:
        model: the sequential model and its proposal (a layer-2 ``SequentialModel``).
        num_particles: K during training.
        resampling: ``"multinomial"`` (default, as FIVO), ``"stratified"``, ``"systematic"``
            or ``"never"`` (the IWAE bound).
        ess_threshold: resample when ESS < ess_threshold · K (0.5, as FIVO; <= 0 never, >= 1 always).
        **kwargs: estimator options of :class:`BoundEstimatorMixin` (lr, num_val_samples, ...).
    """

    def __init__(
        self,
        model: SequentialModel,
        num_particles: int = 4,
        resampling: Resampling = "multinomial",
        ess_threshold: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, SequentialModel):
            raise TypeError(f"FIVO needs a SequentialModel (e.g. LinearGaussianSSM, VRNN), got {type(model).__name__}")
        check_resampling(resampling, ess_threshold)
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.num_particles = check_positive_int("num_particles", num_particles)
        self.resampling = resampling
        self.ess_threshold = float(ess_threshold)
        self.val_exact = MeanMetric(nan_strategy="disable")
        self.test_exact = MeanMetric(nan_strategy="disable")

    @classmethod
    def linear_gaussian(
        cls, a: float, q: float, r: float, learn_proposal: bool = True, learn_model: bool = False, **kwargs
    ) -> FIVO:
        """FIVO for z_1 ~ N(0, q), z_t = a z_{t-1} + N(0, q), x_t = z_t + N(0, r) (variances).

        The model's a, q, r are fixed at the given values unless ``learn_model``; the proposal
        q(z_t | z_{t-1}, x_t) = N(w_z z_{t-1} + w_x x_t + c, σ²) starts at the bootstrap
        (prior transition) and is learnable unless ``learn_proposal=False``. ``kwargs`` go to
        :class:`FIVO` (num_particles, resampling, lr, ...).
        """
        return cls(LinearGaussianSSM(a, q, r, learn_model=learn_model, learn_proposal=learn_proposal), **kwargs)

    # -- the bound ------------------------------------------------------------------------------

    def log_marginal_bound(
        self,
        x: Tensor,
        num_particles: int | None = None,
        resampling: Resampling | None = None,
        ess_threshold: float | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """The per-sequence SMC bound log Ẑ ``[B]`` for ``x [B, T]`` or ``[B, T, obs_dim]``.

        Arguments left ``None`` take the module's training settings. ``generator`` or ``noise``
        (standard normal ``[T, K, B, latent_dim]``) fix the randomness; with ``resampling="never"``
        the result is the IWAE bound log (1/K) Σ_k Π_t α_t^k of the same particles.
        """
        return self.model.log_marginal_bound(
            x,
            self.num_particles if num_particles is None else num_particles,
            self.resampling if resampling is None else resampling,
            self.ess_threshold if ess_threshold is None else ess_threshold,
            generator=generator,
            noise=noise,
        )

    def training_bound(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.model.bound_and_diagnostics(
            self.unpack_batch(batch), self.num_particles, self.resampling, self.ess_threshold
        )

    def check_training_values(self, x: Tensor) -> None:
        check_finite(x, type(self.model).__name__)

    def evaluation_bound(self, batch, num_samples: int) -> Tensor:
        return self.log_marginal_bound(self.unpack_batch(batch), num_particles=num_samples)

    # -- Lightning hooks ------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Propagate ``validate_inputs`` and check the datamodule's observation size."""
        self.model.validate_args = self.validate_inputs
        trainer = getattr(self, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        shape = getattr(dm, "event_shape", None)
        if shape is not None and (len(shape) != 2 or shape[-1] != self.model.obs_dim):
            raise ValueError(
                f"{type(dm).__name__} yields sequences of shape [B, {', '.join(map(str, shape))}] but "
                f"{type(self.model).__name__} models observations of size {self.model.obs_dim} ([B, T, "
                f"{self.model.obs_dim}]); set the model's obs_dim to match the data"
            )

    def _log_exact(self, batch, metric: MeanMetric, stage: str) -> None:
        exact = getattr(self.model, "log_likelihood", None)
        if exact is None:
            return
        metric.update(exact(self.unpack_batch(batch)))
        self.log(f"{stage}/log_likelihood", metric, on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_exact(batch, self.val_exact, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_exact(batch, self.test_exact, "test")
