r"""LightningModule: CPC / InfoNCE (van den Oord et al. 2018) as a conditional SNIS model (ALGORITHMS.md 4).

For pairs (x_i, c_i) ~ p(x, c), the model q(x | c) is SNIS with the marginal p(x) as proposal
and the critic f(x, c) as energy; the other K - 1 data points of the batch are its proposal
samples ("in-batch negatives"). Its bound minus log p(x) is InfoNCE:

    I(X; C) >= E[ log q(x|c) - log p(x) ] >= E[ L_SNIS(x|c) - log p(x) ]
             = E[ log e^{f(x_i, c_i)} / ( (1/K) sum_{j=1}^K e^{f(x_j, c_i)} ) ]  =  InfoNCE,

a lower bound on the mutual information in expectation (Barber-Agakov), never above log K
(the positive is one of the K terms), approaching I when K >> e^I and f is near its optimum
``log p(c|x) - log p(c) + const``. ``log p(x)`` is never evaluated: it cancels.

Batches are pairs ``(x [B, x_dim], c [B, c_dim])``. Under multi-process training the x-side
(raw x, or its embedding g(x) for a :class:`SeparableCritic`) is all-gathered *with gradients*
(``self.all_gather(..., sync_grads=True)``: the backward pass returns each process the gradient
of every process's loss with respect to its embeddings), so K = B x world size and the bound is
the single-process bound on the concatenated batch. Every process must hold the same training
batch size. Validation and test use each evaluation batch alone (K = the evaluation batch size).
The per-example InfoNCE values are logged as ``*/mi_lower_bound`` (nats).

``module.density`` is the conditional SNIS model (proposal ``N(0, I)`` by default, standing in
for p(x): the correlated-Gaussian data's true marginal), so ``module.density.sample(n, context=c)``
draws from q(x | c). :meth:`CPC.mutual_information_lower_bound` is the InfoNCE estimate of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor, nn

from .. import densities
from ..densities.base import evaluate_net
from ..nn import MLP
from ..ops import logsumexp
from .mixin import BoundEstimatorMixin, default_proposal

__all__ = ["CPC", "SeparableCritic"]


class SeparableCritic(nn.Module):
    """``f(x, c) = g(x)^T h(c)`` with tanh MLPs g and h: all K x B scores in one product.

    Args:
        x_dim, c_dim: input dimensions.
        hidden_sizes: hidden layers of g and h.
        embedding_dim: dimension of g(x) and h(c).
    """

    def __init__(self, x_dim: int, c_dim: int, hidden_sizes: Sequence[int] = (64, 64), embedding_dim: int = 32) -> None:
        super().__init__()
        self.x_net = MLP(x_dim, list(hidden_sizes), embedding_dim)
        self.c_net = MLP(c_dim, list(hidden_sizes), embedding_dim)

    def embed_x(self, x: Tensor) -> Tensor:
        return self.x_net(x)

    def embed_c(self, c: Tensor) -> Tensor:
        return self.c_net(c)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """``f(x, c)`` ``[*batch]`` for ``x [*batch, x_dim]`` and ``context [*batch, c_dim]``."""
        return (self.embed_x(x) * self.embed_c(context)).sum(-1)


class CPC(BoundEstimatorMixin, L.LightningModule):
    """Contrastive predictive coding: InfoNCE training of a critic, read as a conditional SNIS model.

    Args:
        x_dim: dimension of x (the modelled variable).
        c_dim: dimension of c (the context).
        hidden_sizes: hidden layers of the default critic.
        embedding_dim: embedding size of the default :class:`SeparableCritic`.
        critic: network ``f(x, c)`` called as ``critic(x, c)``; with ``embed_x``/``embed_c``
            methods the scores are one matrix product (default :class:`SeparableCritic`).
        proposal: the SNIS model's proposal over x, used to sample q(x|c) (default N(0, I)).
        num_proposals: K of the SNIS model when sampling it (training uses the batch).
        gather_negatives: under multi-process training, use every process's x as negatives.
        **kwargs: estimator options of :class:`BoundEstimatorMixin` (lr, ...).
    """

    bound_name = "mi_lower_bound"

    def __init__(
        self,
        x_dim: int = 2,
        c_dim: int = 2,
        hidden_sizes: Sequence[int] = (64, 64),
        embedding_dim: int = 32,
        critic: nn.Module | None = None,
        proposal: densities.Density | None = None,
        num_proposals: int = 128,
        gather_negatives: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["critic", "proposal"])
        critic = critic if critic is not None else SeparableCritic(x_dim, c_dim, hidden_sizes, embedding_dim)
        self.density = densities.SNIS(
            default_proposal(x_dim, proposal, "x_dim"),
            critic,
            num_proposals=num_proposals,
            share_proposal_samples=False,
        )
        self.gather_negatives = gather_negatives

    @property
    def critic(self) -> nn.Module:
        return self.density.energy

    # -- InfoNCE ------------------------------------------------------------------------------

    def _gather(self, t: Tensor) -> tuple[Tensor, int]:
        """``t`` from every process, concatenated ``[world * B, ...]``, and this process's offset."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return t, 0
        gathered = self.all_gather(t, sync_grads=torch.is_grad_enabled())  # [world, B, ...]
        return gathered.reshape(-1, *t.shape[1:]), trainer.global_rank * t.shape[0]

    def scores(self, x: Tensor, c: Tensor, gather: bool = False) -> tuple[Tensor, Tensor]:
        """Critic values ``S [K, B]`` with ``S[j, i] = f(x_j, c_i)`` over the K negatives' x (the
        batch's, or every process's with ``gather``) and the index ``[B]`` of each positive."""
        critic, batch = self.critic, x.shape[0]
        h = x - self.density.data_mean
        separable = callable(getattr(critic, "embed_x", None)) and callable(getattr(critic, "embed_c", None))
        keys, offset = critic.embed_x(h) if separable else h, 0
        if gather:
            keys, offset = self._gather(keys)
        if separable:
            s = keys @ critic.embed_c(c).T
        else:
            k = keys.shape[0]
            s = evaluate_net(critic, keys.unsqueeze(1).expand(k, batch, *keys.shape[1:]), self.density.event_ndim, c)
        return s, offset + torch.arange(batch, device=x.device)

    def info_nce(self, x: Tensor, c: Tensor, gather: bool = False) -> Tensor:
        """Per-example InfoNCE ``[B]``: ``f(x_i, c_i) - log (1/K) sum_j e^{f(x_j, c_i)}`` (nats)."""
        s, positive = self.scores(x, c, gather)
        columns = torch.arange(x.shape[0], device=x.device)
        return s[positive, columns] - (logsumexp(s, dim=0) - math.log(s.shape[0]))

    def mutual_information_lower_bound(self, x: Tensor, c: Tensor) -> Tensor:
        """The InfoNCE estimate (nats, a scalar) of the pairs ``(x [K, x_dim], c [K, c_dim])``
        with the batch's other K - 1 points as negatives: below ``min(I(X; C), log K)`` in
        expectation, and always at most ``log K``."""
        self.density.check_input(x, c)
        return self.info_nce(x, c).mean()

    # -- the mixin's hooks --------------------------------------------------------------------

    def _pairs(self, batch) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"CPC trains on batches of pairs (x [B, x_dim], c [B, c_dim]), got {type(batch).__name__}")
        x, c = batch[0], batch[1]
        if self.validate_inputs:
            self.density.check_input(x, c)
        return x, c

    def training_bound(self, batch):
        x, c = self._pairs(batch)
        return self.info_nce(x, c, gather=self.gather_negatives), {}

    def evaluation_bound(self, batch, num_samples: int) -> Tensor:
        """InfoNCE of the evaluation batch with its own K - 1 negatives, on every process (never
        gathered: evaluation sets may split unevenly across processes, and a gather would then
        wait forever); ``num_samples`` is unused."""
        x, c = self._pairs(batch)
        return self.info_nce(x, c)
