r"""SNIS: the density of self-normalised importance sampling (ALGORITHMS.md 2.1).

Sampler: draw ``x_1..x_K ~ pi``, pick ``i`` with probability ``softmax(U(x_1..K))_i``, return
``x_i``. ``K = 1`` gives ``pi``; ``K -> inf`` gives the energy-based model ``pi e^U / Z``.

Lower bound with fresh ``x'_1..x'_{K-1} ~ pi`` (shared across the batch by default, as in the
authors' code; each example still gets a valid bound)::

    L_SNIS(x) = log pi(x) + U(x) - log( (1/K) [ e^{U(x)} + sum_{j<K} e^{U(x'_j)} ] )

``exp(L_SNIS(x))`` is an unbiased estimate of ``q_SNIS(x)``. The energy sees mean-centred input,
``U(x) = energy(x - data_mean)``. When ``pi`` only has a lower bound (a VAE), that bound enters in
place of ``log pi(x)`` and the result is still a lower bound.

As a variational family (ALGORITHMS.md 4), :meth:`SNIS.rsample_particles` returns all K
reparameterised particles with their selection log-probabilities ``log s_k`` and per-particle
upper bounds ``log pi(z_k) + log s_k + log K`` on ``log q(z_k)``, so the selected index can be
summed analytically.

Shapes: ``x [B, *event]``; an optional ``context [B, ...]`` is passed to the energy (and the
proposal), making the model conditional, ``q(x | c)``.
Reference: Lawson, Tucker, Dai, Ranganath, "Energy-Inspired Models", NeurIPS 2019.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..bounds import snis_bound_from_ratio, snis_log_ratio, snis_lower_bound, snis_particle_upper_bounds
from ..smc import effective_sample_size
from .base import SAMPLE_CHUNK_SIZE, Density, check_positive_int, closed_form_applies, evaluate_net

__all__ = ["SNIS", "SNISParticles"]


class SNISParticles(NamedTuple):
    """One run of the SNIS sampler: ``z [K, *batch, *event]``, ``log_s`` and ``log_q_upper [K, *batch]``."""

    z: Tensor
    log_s: Tensor
    log_q_upper: Tensor


class SNIS(Density):
    """Self-normalised importance sampling EIM.

    Args:
        proposal: any density ``pi`` (``rsample`` and ``log_prob_replicas``).
        energy: network ``[..., *event] -> [...]`` or ``[..., 1]``, the log-weight U (high = probable).
        num_proposals: K >= 1.
        share_proposal_samples: share the K-1 negatives across the batch (unconditional only).
        reparameterize_proposal_samples: let the training gradient reach the proposal through its
            samples (``rsample``; for a VAE in pixel space, the Gumbel straight-through sampler), as
            the authors' default; ``False`` stops it there (their ``--reparameterize_proposal=false``),
            so a learnable proposal is trained by its data term ``log pi(x)`` alone.
        data_mean: centre subtracted from the energy's input (a buffer; default 0).
        eval_chunk_size: replicas evaluated at once by ``log_prob_lower_bound``.
        sample_chunk_size: bound on ``K * n`` particles held at once by ``sample`` (default
            ``SAMPLE_CHUNK_SIZE`` = 2^15: larger chunks ran several times slower on a CPU, their
            tensors freshly mapped on every operation).
    """

    def __init__(
        self,
        proposal: Density,
        energy: nn.Module,
        num_proposals: int = 1024,
        share_proposal_samples: bool = True,
        data_mean: Tensor | None = None,
        eval_chunk_size: int = 64,
        sample_chunk_size: int = SAMPLE_CHUNK_SIZE,
        reparameterize_proposal_samples: bool = True,
    ) -> None:
        super().__init__(proposal.event_shape, eval_chunk_size)
        self.num_proposals = check_positive_int("num_proposals (K)", num_proposals)
        self.sample_chunk_size = check_positive_int("sample_chunk_size", sample_chunk_size)
        self.proposal = proposal
        self.energy = energy
        self.share_proposal_samples = share_proposal_samples
        self.reparameterize_proposal_samples = reparameterize_proposal_samples
        self.register_data_mean(data_mean)

    def log_weight(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``U(x)`` for ``x [*batch, *event]``: ``[*batch]``."""
        return evaluate_net(self.energy, x, self.event_ndim, context, self.data_mean)

    def negative_samples(self, num_replicas: int, batch: int, context: Tensor | None = None) -> Tensor:
        """The K-1 proposal samples ``x'_j ~ pi`` of ``num_replicas`` replicas of the bound:
        ``[K-1, m, n, *event]`` with ``n = 1`` when shared across the batch, else ``n = B``."""
        k1 = self.num_proposals - 1
        n = 1 if context is None and self.share_proposal_samples else batch
        if k1 == 0:
            return self.data_mean.new_empty(0, num_replicas, n, *self.event_shape)
        draw = self.proposal.rsample if self.reparameterize_proposal_samples else self.proposal.sample
        if context is None:
            neg = draw(k1 * num_replicas * n)
        else:
            neg = draw(k1 * num_replicas, context)  # [k1*m, B, *event]
        return neg.reshape(k1, num_replicas, n, *self.event_shape)

    def _bound_terms(self, x: Tensor, num_replicas: int, context: Tensor | None):
        log_pi = self.proposal.log_prob_replicas(x, num_replicas, context)  # [m, B]
        k1 = self.num_proposals - 1
        if context is None and self.share_proposal_samples and k1 > 0:
            # one pass of the energy over the data and the shared negatives
            neg = self.negative_samples(num_replicas, x.shape[0]).reshape(-1, *self.event_shape)
            u = self.log_weight(torch.cat([x, neg.to(x.dtype)]))
            return log_pi, u[: x.shape[0]], u[x.shape[0] :].reshape(k1, num_replicas, 1)
        u_x = self.log_weight(x, context)  # [B]
        u_neg = self.log_weight(self.negative_samples(num_replicas, x.shape[0], context), context)  # [K-1, m, n]
        return log_pi, u_x, u_neg

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        log_pi, u_x, u_neg = self._bound_terms(x, num_replicas, context)
        return snis_lower_bound(log_pi, u_x, u_neg)

    def bound_and_diagnostics(self, x: Tensor, context: Tensor | None = None, diagnostics: bool = True):
        """Training bound ``[B]`` and the effective sample size of the K normalised weights
        (``diagnostics=False``: an empty dict, nothing computed)."""
        self.check_input(x, context)
        log_pi, u_x, u_neg = self._bound_terms(x, 1, context)
        bound = snis_lower_bound(log_pi, u_x, u_neg)[0]
        return bound, self._diagnostics(u_x, u_neg[:, 0]) if diagnostics else {}

    @staticmethod
    @torch.no_grad()
    def _diagnostics(u_x: Tensor, u_neg: Tensor) -> dict[str, Tensor]:
        # the ESS over the K particles of each example: the data point and its negatives
        return {"ess": effective_sample_size(torch.cat([u_x.unsqueeze(0), u_neg.expand(-1, u_x.shape[0])]))}

    def offers_closed_form_training(self) -> bool:
        """An MLP energy, shared negatives (K > 1) and a proposal without parameters."""
        return closed_form_applies(self, self.energy) and self.share_proposal_samples and self.num_proposals > 1

    def closed_form_gradients(self, x: Tensor):
        """The training bound with its gradient in closed form (see :class:`Density`), for an
        :class:`~eim_lightning.nn.MLP` energy, shared negatives and a proposal without
        parameters. With ``r_b = log sum_j e^{U(x'_j) - U(x_b)}`` the loss
        ``-(1/B) sum_b L_SNIS(x_b)`` has ``dloss/dU(x_b) = -sigmoid(r_b)/B`` and
        ``dloss/dU(x'_j) = softmax_j(U(x')) sum_b sigmoid(r_b)/B``, which the MLP's own backward
        (:meth:`~eim_lightning.nn.MLP.parameter_gradients`) carries to its weights; saved for the
        diagnostics: the energies of the data and of the negatives."""
        energy = self.energy
        batch = len(x)  # a Python number under a trace too (x.shape[0] is a tensor there)
        log_pi = self.proposal.log_prob_replicas(x, 1)[0]
        neg = self.negative_samples(1, batch).reshape(-1, *self.event_shape)
        u, cache = energy.forward_cached(torch.cat([x, neg.to(x.dtype)]) - self.data_mean)
        u_x, u_neg = u[:batch, 0], u[batch:]
        r = snis_log_ratio(u_x, u_neg)
        bound = snis_bound_from_ratio(log_pi, r, self.num_proposals)
        weight = torch.sigmoid(r) / batch
        delta = torch.cat([-weight, torch.softmax(u_neg[:, 0], 0) * weight.sum()]).unsqueeze(-1)
        return bound, energy.parameter_gradients(cache, delta.to(u.dtype)), (u_x, u_neg)

    def closed_form_finish(self, saved: tuple, diagnostics: bool) -> dict[str, Tensor]:
        return self._diagnostics(*saved) if diagnostics else {}

    def _particles(self, n: int, context: Tensor | None, reparameterized: bool):
        sample = self.proposal.rsample if reparameterized else self.proposal.sample
        z = sample(self.num_proposals * n, context)  # [K*n, (B), *event]
        z = z.reshape(self.num_proposals, n, *z.shape[1:])
        return z, self.log_weight(z, context)

    def rsample_particles(self, n: int, context: Tensor | None = None) -> SNISParticles:
        """All K particles of ``n`` sampler runs with selection log-probs and upper bounds.

        For each run, ``sum_k s_k f(z_k)`` is the expectation of ``f`` at the SNIS sample, and
        ``log_q_upper[k]`` upper-bounds ``log q_SNIS(z_k)`` in expectation (the other K-1
        particles being the selected sample's losing particles).
        """
        self._sample_shape(n, context)
        z, u = self._particles(n, context, reparameterized=True)
        flat_context = None
        if context is not None:  # a conditional proposal needs each particle's context
            flat_context = context.expand(*u.shape[:2], *context.shape).reshape(-1, *context.shape[1:])
        log_pi = self.proposal.log_prob_replicas(z.reshape(-1, *self.event_shape), 1, flat_context)[0]
        log_pi = log_pi.reshape(u.shape)
        log_s, upper = snis_particle_upper_bounds(log_pi, u)
        return SNISParticles(z, log_s, upper)

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Exact samples ``[n, *event]`` (``[n, B, *event]`` with a context), in chunks."""
        self._sample_shape(n, context)
        per_run = self.num_proposals * (1 if context is None else context.shape[0])
        chunk = max(1, self.sample_chunk_size // per_run)
        out = []
        with torch.no_grad():
            for start in range(0, n, chunk):
                z, u = self._particles(min(chunk, n - start), context, reparameterized=False)
                gumbel = -torch.log(-torch.log(torch.rand_like(u).clamp_min(1e-30)))
                idx = (u + gumbel).argmax(dim=0)  # Gumbel-max: i ~ softmax(u)
                idx = idx.reshape(1, *idx.shape, *([1] * self.event_ndim)).expand(1, *z.shape[1:])
                out.append(z.gather(0, idx)[0])
        return torch.cat(out, 0)

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        """``log pi(x) + U(x)``: the paper's image pi e^U."""
        return self.proposal.log_prob_replicas(x, 1)[0] + self.log_weight(x)
