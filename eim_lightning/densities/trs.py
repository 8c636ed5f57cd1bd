r"""TRS: the density of truncated rejection sampling (ALGORITHMS.md 2.2).

Sampler: for t = 1..T draw ``x_t ~ pi`` and accept it with probability
``a(x_t) = sigmoid(f(x_t))``; if the first T-1 are rejected, accept the T-th. Its density is

    q_T(x) = pi(x) [ a(x) sum_{t=0}^{T-2} (1-Z)^t + (1-Z)^{T-1} ],    Z = E_pi[a],

which needs Z. The EIM lower bound treats the number of rejections t and the rejected samples
as latents, with a truncated geometric r(t|x) ∝ (1-Z_v)^t a(x) (t <= T-2),
r(T-1|x) ∝ (1-Z_v)^{T-1}, a learned Z_v = sigmoid(logit_Z) (init 1/2), and rejected samples
i.i.d. pi::

    L_TRS(x) = log pi(x) + (1 - r(T-1|x)) log a(x) + E_r[t] Ê_pi[log(1 - a(x'))] + H[r(.|x)]

where Ê_pi averages over T fresh proposal samples shared across the batch. Unlike SNIS's,
``exp(L_TRS(x))`` is not unbiased: ``E[exp L_TRS(x)] <= q_T(x)`` (see :mod:`.base`). ``bound="authors"``
adds ``log a(x)`` unconditionally (the authors' code; looser, still valid). With ``T = 1`` the
exact form is ``log pi(x)``. The acceptance network sees mean-centred input.
Reference: Lawson et al., NeurIPS 2019; Bauer & Mnih, AISTATS 2019.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid

from ..bounds import first_accepted, trs_lower_bound
from .base import SAMPLE_CHUNK_SIZE, Density, check_positive_int, evaluate_net

__all__ = ["TRS", "truncated_rejection_sample"]


def truncated_rejection_sample(
    density: Density,
    accept_logit_fn,
    n: int,
    context: Tensor | None,
) -> Tensor:
    """``n`` samples of truncated rejection sampling with ``density.T`` proposals per run.

    Runs go in rounds: every run still going draws its next ``r`` proposals at once
    (``r = 1, 2, 4, ...``, at most the proposals it has left), accepts the first of them whose
    acceptance coin comes up (:func:`~eim_lightning.bounds.first_accepted`), and the T-th proposal
    when the first T-1 are rejected. Each run's proposals and coins are drawn one after another as
    in the sequential sampler, so the law is exactly ``q_T``, while a run that accepts early costs
    a few proposals instead of T. At most ``density.sample_chunk_size`` proposals are held at once.
    ``accept_logit_fn(x, context)`` maps ``x [r, m, (B), *event]`` to logits ``[r, m, (B)]``.
    Returns ``[n, (B), *event]``.
    """
    shape = density._sample_shape(n, context)
    width = shape[1] if context is not None else 1
    rows = max(1, density.sample_chunk_size // width)
    with torch.no_grad():
        return torch.cat(
            [_rejection_runs(density, accept_logit_fn, min(rows, n - s), context) for s in range(0, n, rows)]
        )


def _rejection_runs(density: Density, accept_logit_fn, m: int, context: Tensor | None) -> Tensor:
    """``m`` runs of the truncated rejection sampler, in rounds (see :func:`truncated_rejection_sample`)."""
    T, event_ndim = density.T, density.event_ndim
    width = context.shape[0] if context is not None else 1
    out = done = None
    rows = None  # indices of the runs still going (all of them at first)
    # on the meta device there are no values to decide on: one round of all T proposals
    reference = density._reference_tensor()
    on_meta = reference is not None and reference.is_meta
    used, r = 0, T if on_meta else 1
    while used < T:
        k = m if rows is None else len(rows)
        r = min(r, T - used, max(1, density.sample_chunk_size // (k * width)))
        x = density.proposal.sample(r * k, context)
        x = x.reshape(r, k, *x.shape[1:])
        logits = accept_logit_fn(x, context)
        accept = torch.rand_like(logits) < torch.sigmoid(logits)
        hit = accept.any(0) if used + r < T else torch.ones_like(accept[0])
        idx = first_accepted(accept)
        chosen = x.gather(0, idx.reshape(1, *idx.shape, *([1] * event_ndim)).expand(1, *x.shape[1:]))[0]
        if out is None:
            out, done = chosen, hit
        else:
            fresh = hit & ~done[rows]
            out[rows] = torch.where(fresh.reshape(*fresh.shape, *([1] * event_ndim)), chosen, out[rows])
            done[rows] |= hit
        used, r = used + r, 2 * r
        if used < T:
            going = ~done if context is None else ~done.all(-1)
            rows = going.nonzero().squeeze(-1)
            if len(rows) == 0:
                break
    return out


class TRS(Density):
    """Truncated rejection sampling EIM.

    Args:
        proposal: any density ``pi``.
        accept_logit: network ``[..., *event] -> [...]`` or ``[..., 1]``: ``f``, with ``a = sigmoid(f)``.
        T: truncation, ``T >= 1``.
        bound: ``"exact"`` (default) or ``"authors"``.
        data_mean: centre subtracted from the network's input (a buffer; default 0).
    """

    def __init__(
        self,
        proposal: Density,
        accept_logit: nn.Module,
        T: int = 1024,
        bound: Literal["exact", "authors"] = "exact",
        data_mean: Tensor | None = None,
        eval_chunk_size: int = 64,
        sample_chunk_size: int = SAMPLE_CHUNK_SIZE,
    ) -> None:
        super().__init__(proposal.event_shape, eval_chunk_size)
        self.T = check_positive_int("T", T)
        if bound not in ("exact", "authors"):
            raise ValueError(f"bound must be 'exact' or 'authors', got {bound!r}")
        self.bound = bound
        self.sample_chunk_size = check_positive_int("sample_chunk_size", sample_chunk_size)
        self.proposal = proposal
        self.accept_logit = accept_logit
        self.logit_z = nn.Parameter(torch.zeros(()))
        self.register_data_mean(data_mean)

    def logit(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Acceptance logit ``f(x)``: ``[*batch]``."""
        return evaluate_net(self.accept_logit, x, self.event_ndim, context, self.data_mean)

    @property
    def z_variational(self) -> Tensor:
        """``Z_v = sigmoid(logit_Z)``, the variational acceptance rate."""
        return torch.sigmoid(self.logit_z)

    def _terms(self, x: Tensor, m: int, context: Tensor | None):
        log_pi = self.proposal.log_prob_replicas(x, m, context)  # [m, B]
        if context is None:  # one pass of the network over the data and the proposal samples
            neg = self.proposal.rsample(self.T * m)
            logits = self.logit(torch.cat([x, neg.to(x.dtype)]))
            return log_pi, logsigmoid(logits[: x.shape[0]]), logits[x.shape[0] :].reshape(self.T, m, 1)
        log_a_x = logsigmoid(self.logit(x, context))  # [B]
        neg = self.proposal.rsample(self.T * m, context)
        neg_logits = self.logit(neg, context).reshape(self.T, m, x.shape[0])
        return log_pi, log_a_x, neg_logits

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        log_pi, log_a_x, neg_logits = self._terms(x, num_replicas, context)
        mean_log1m_a = logsigmoid(-neg_logits).mean(0)
        return trs_lower_bound(log_pi, log_a_x, mean_log1m_a, self.logit_z, self.T, self.bound)

    def bound_and_diagnostics(self, x: Tensor, context: Tensor | None = None, diagnostics: bool = True):
        """Training bound ``[B]``; diagnostics: expected trials 1/Z_v, Z_v and the acceptance
        rate of the proposal samples (a Monte Carlo estimate of Z); none with ``diagnostics=False``."""
        self.check_input(x, context)
        log_pi, log_a_x, neg_logits = self._terms(x, 1, context)
        mean_log1m_a = logsigmoid(-neg_logits).mean(0)
        bound = trs_lower_bound(log_pi, log_a_x, mean_log1m_a, self.logit_z, self.T, self.bound)[0]
        if not diagnostics:
            return bound, {}
        with torch.no_grad():
            zv = self.z_variational
            diag = {
                "expected_trials": 1.0 / zv,
                "z_variational": zv,
                "acceptance_rate": torch.sigmoid(neg_logits).mean(),
            }
        return bound, diag

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Exact samples ``[n, *event]`` (``[n, B, *event]`` with a context)."""
        return truncated_rejection_sample(self, self.logit, n, context)

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        """``log pi(x) + log a(x)``: the paper's image pi a."""
        return self.proposal.log_prob_replicas(x, 1)[0] + logsigmoid(self.logit(x))
