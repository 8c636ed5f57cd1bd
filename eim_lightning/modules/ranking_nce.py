r"""LightningModule: ranking NCE (Jozefowicz et al. 2016; Ma & Collins 2018) is SNIS maximum likelihood.

An energy U is trained against a *fixed* noise distribution pi by K-way classification: which
of ``x_1 = x`` (the data point) and ``x_2..x_K ~ pi`` is the data? With logits ``U(x_1..K)``,

    log softmax_1(U(x_1), ..., U(x_K))  =  L_SNIS(x) - log pi(x) - log K,           (ALGORITHMS.md 4)

so the classification loss (cross-entropy) and the negative SNIS bound differ by the constant
``log pi(x) + log K``: the same gradient, and ranking NCE is maximum likelihood (of a lower bound)
for the SNIS model with the same K. The model it fits is that SNIS density, and SNIS with K
proposals is how to sample it: ``module.density`` is a :class:`eim_lightning.densities.SNIS`
with ``num_proposals = K`` (``module.density.sample(n)``).

The module trains on the cross-entropy (``F.cross_entropy`` over the K logits) and reports the
SNIS bound ``L_SNIS = log pi(x) + log K - CE`` as ``train/bound`` (its diagnostics: the loss
``train/nce_loss`` and the classifier's accuracy). The proposal's parameters are frozen.
Validation and test evaluate the SNIS bound like :class:`~eim_lightning.modules.SNIS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.functional import cross_entropy

from ..ops import as_float32_or_wider
from .snis import SNIS

__all__ = ["RankingNCE"]


class RankingNCE(SNIS):
    """K-way ranking NCE of an energy against fixed noise; the model is SNIS with the same K.

    Args:
        data_dim: dimension of the data (ignored when ``density`` is given).
        num_classes: K, the data point plus K - 1 noise samples.
        hidden_sizes: hidden layers of the default energy MLP.
        share_noise: share the K - 1 noise samples across the batch (as SNIS's negatives).
        proposal, energy, density: as for :class:`~eim_lightning.modules.SNIS`.
        **kwargs: estimator options of :class:`BoundEstimatorMixin`.
    """

    def __init__(
        self,
        data_dim: int = 2,
        num_classes: int = 64,
        hidden_sizes: Sequence[int] = (20, 20),
        share_noise: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            data_dim=data_dim,
            num_proposals=num_classes,
            hidden_sizes=hidden_sizes,
            share_proposal_samples=share_noise,
            **kwargs,
        )
        # the hyperparameters are this class's own (not SNIS's num_proposals), so that
        # RankingNCE(**module.hparams) and load_from_checkpoint rebuild it
        self.save_hyperparameters(ignore=["proposal", "energy", "density", "num_proposals", "share_proposal_samples"])
        for parameter in self.density.proposal.parameters():  # "a fixed noise distribution"
            parameter.requires_grad_(False)

    def noise_samples(self, batch: int) -> Tensor:
        """``K - 1`` noise samples, ``[K-1, 1, *event]`` when shared, else ``[K-1, B, *event]``:
        the SNIS density's negatives (:meth:`~eim_lightning.densities.SNIS.negative_samples`)."""
        with torch.no_grad():
            return self.density.negative_samples(1, batch)[:, 0]

    def classification_logits(self, x: Tensor, noise: Tensor) -> Tensor:
        """Logits ``[B, K]`` of the K-way classifier, the data point in class 0."""
        u_x = self.density.log_weight(x)  # [B]
        u_noise = self.density.log_weight(noise).expand(noise.shape[0], x.shape[0])  # [K-1, B]
        return torch.cat([u_x.unsqueeze(0), u_noise], dim=0).T

    def _classify(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.classification_logits(x, noise)
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return cross_entropy(as_float32_or_wider(logits), labels, reduction="none"), logits

    def nce_loss(self, x: Tensor, noise: Tensor) -> Tensor:
        """Per-example cross-entropy ``[B]`` of classifying the data point among the noise."""
        return self._classify(x, noise)[0]

    def training_bound(self, batch):
        x = self.unpack_batch(batch)
        self.density.check_input(x)
        loss, logits = self._classify(x, self.noise_samples(x.shape[0]))
        with torch.no_grad():
            log_pi = self.density.proposal.log_prob_replicas(x, 1)[0]
            accuracy = (logits.argmax(dim=1) == 0).float().mean()
        bound = log_pi + math.log(self.density.num_proposals) - loss
        return bound, {"nce_loss": loss.detach().mean(), "nce_accuracy": accuracy}
