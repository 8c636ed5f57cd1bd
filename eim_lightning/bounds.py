r"""Layer 1: the EIM bounds as pure functions of log-weights (ALGORITHMS.md sections 2.1-2.4).

Conventions: sample/particle axis first (``[K, B]``); every function returns per-example
values ``[B]`` (never a loss, never a batch mean); randomness is drawn by the caller.
Inputs in float16/bfloat16 are promoted to float32.

SNIS (self-normalised importance sampling), with ``x'_1..x'_{K-1} ~ pi``::

    L_SNIS(x) = log pi(x) + U(x) - log( (1/K) [ e^{U(x)} + sum_{j<K} e^{U(x'_j)} ] )

exp(L_SNIS) is unbiased for the SNIS model density q_SNIS(x); with the K-1 *losing* particles
of the sampler run that produced ``x`` in place of fresh ``x'`` the same expression is an upper
bound on log q_SNIS(x) in expectation. ``K = 1`` gives ``log pi(x)``.

TRS (truncated rejection sampling), with r(t|x) a truncated geometric over the number of
rejections t in {0..T-1} (Z_v = sigmoid(logit_Z)) and rejected samples i.i.d. pi::

    L_TRS(x) = log pi(x) + c(x) log a(x) + E_r[t] * E_pi[log(1 - a(x'))] + H[r(.|x)]

with ``c(x) = 1 - r(T-1|x)`` in the exact ELBO (default) and ``c(x) = 1`` in the authors'
code (``form="authors"``, looser, still valid). ``T = 1`` gives ``log pi(x)`` (exact form).

LARS (Bauer & Mnih 2019), the same truncated density with Z = E_pi[a] *given*::

    log q_T(x) = log pi(x) + log[ a(x) (1 - (1-Z)^{T-1}) / Z + (1-Z)^{T-1} ]

``T = 1`` gives ``log pi(x)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .ops import as_float32_or_wider, log1mexp, logsumexp, logsumexp_parts

__all__ = [
    "snis_lower_bound",
    "snis_log_ratio",
    "snis_bound_from_ratio",
    "snis_particle_upper_bounds",
    "trs_posterior_stats",
    "trs_lower_bound",
    "lars_log_prob",
    "lars_geometry",
    "first_accepted",
]


def snis_lower_bound(log_pi_x: Tensor, u_x: Tensor, u_neg: Tensor) -> Tensor:
    """SNIS lower bound ``[B]``.

    Args:
        log_pi_x: ``[B]`` log proposal density (or a lower bound on it) at the data.
        u_x: ``[B]`` energy (log-weight) at the data.
        u_neg: ``[K-1, B]`` energies of the K-1 other particles, or ``[K-1, 1]`` when the
            negatives are shared across the batch. ``K - 1 = 0`` is allowed (K = 1).

    Computed as ``log pi(x) + log K - log(1 + sum_j e^{U(x'_j) - U(x)})`` from energy
    differences, so adding a constant to all energies (of any size) changes nothing.
    """
    return snis_bound_from_ratio(log_pi_x, snis_log_ratio(u_x, u_neg), u_neg.shape[0] + 1)


def snis_log_ratio(u_x: Tensor, u_neg: Tensor) -> Tensor:
    """``r = log sum_j e^{U(x'_j) - U(x)}`` ``[B]``, from energy differences."""
    u_x, u_neg = as_float32_or_wider(u_x), as_float32_or_wider(u_neg)
    shift, rest = logsumexp_parts(u_neg, dim=0)
    return (shift - u_x) + rest


def snis_bound_from_ratio(log_pi_x: Tensor, log_ratio: Tensor, k: int) -> Tensor:
    """The SNIS bound ``log pi(x) + log K - log(1 + e^r)`` from ``r`` (:func:`snis_log_ratio`)."""
    return as_float32_or_wider(log_pi_x) + math.log(k) - torch.logaddexp(torch.zeros_like(log_ratio), log_ratio)


def snis_particle_upper_bounds(log_pi: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Selection log-probabilities and per-particle upper bounds of one SNIS run.

    For particles ``z_1..z_K ~ pi`` with energies ``u [K, B]`` the sampler returns ``z_k`` with
    probability ``s_k = softmax(u)_k``, and, with the other particles as the losing ones,
    ``log q(z_k) <= log pi(z_k) + log s_k + log K`` in expectation (ALGORITHMS.md 2.1, 4).

    Returns:
        ``(log_s, upper)``, both ``[K, B]``.
    """
    log_pi, u = as_float32_or_wider(log_pi), as_float32_or_wider(u)
    shift, rest = logsumexp_parts(u, dim=0, keepdim=True)
    log_s = (u - shift) - rest
    return log_s, log_pi + log_s + math.log(u.shape[0])


def trs_posterior_stats(logit_z: Tensor, log_a_x: Tensor, T: int) -> tuple[Tensor, Tensor, Tensor]:
    """Exact moments of the truncated-geometric r(t|x), t in {0..T-1}.

    ``r(t|x) ∝ (1-Z_v)^t a(x)`` for ``t <= T-2`` and ``r(T-1|x) ∝ (1-Z_v)^{T-1}``.
    Because the ``t``-dependence does not involve ``x``, r is the mixture
    ``(1-p) Geom_{T-1} + p delta_{T-1}`` with ``p = r(T-1|x)``, so

        E_r[t] = (1-p) m + p (T-1),      H[r] = h(p) + (1-p) H_geom,

    where ``m`` and ``H_geom`` are the mean and entropy of the geometric truncated to
    ``{0..T-2}`` (computed once, O(T)) and ``h`` the binary entropy. O(T + B) in all.

    Returns:
        ``(p_last, mean_t, entropy)``, each ``[B]``.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    logit_z = as_float32_or_wider(logit_z)
    log_a_x = as_float32_or_wider(log_a_x)
    log1m_zv = torch.nn.functional.logsigmoid(-logit_z)  # log(1 - Z_v)
    last = (T - 1) * log1m_zv
    if T == 1:
        p_last = torch.ones_like(log_a_x)
        zero = torch.zeros_like(log_a_x)
        return p_last, zero, zero
    t = torch.arange(T - 1, dtype=log_a_x.dtype, device=log_a_x.device)
    geo_logits = t * log1m_zv
    log_norm = logsumexp(geo_logits, dim=0)
    geo_logp = geo_logits - log_norm
    geo_p = geo_logp.exp()
    mean_geo = (geo_p * t).sum()
    ent_geo = -(geo_p * geo_logp).sum()
    # log r(T-1|x) and log(1 - r(T-1|x)) as differences of finite numbers (no 0 log 0)
    log_rest_w = log_a_x + log_norm
    lse = torch.logaddexp(log_rest_w, last)
    log_p_last, log_p_rest = last - lse, log_rest_w - lse
    p_last, p_rest = log_p_last.exp(), log_p_rest.exp()
    mean_t = p_rest * mean_geo + p_last * (T - 1)
    h = -(_times_log(p_last, log_p_last) + _times_log(p_rest, log_p_rest))
    entropy = h + p_rest * ent_geo
    return p_last, mean_t, entropy


def _times_log(p: Tensor, log_q: Tensor) -> Tensor:
    """``p log q`` with ``0 log 0 = 0`` (for ``a(x) = 0``: ``log_q = -inf``); NaN stays NaN."""
    return p * log_q.clamp_min(torch.finfo(log_q.dtype).min)


def trs_lower_bound(
    log_pi_x: Tensor,
    log_a_x: Tensor,
    mean_log1m_a_neg: Tensor,
    logit_z: Tensor,
    T: int,
    form: Literal["exact", "authors"] = "exact",
) -> Tensor:
    """TRS lower bound ``[B]`` (ALGORITHMS.md 2.2).

    Args:
        log_pi_x: ``[B]`` log proposal density at the data.
        log_a_x: ``[B]`` log acceptance probability ``log sigmoid(f(x))`` at the data.
        mean_log1m_a_neg: ``[]`` or ``[B]``, a Monte Carlo average of ``log(1 - a(x'))`` over
            proposal samples ``x' ~ pi`` (unbiased for ``E_pi[log(1 - a)]``).
        logit_z: scalar learned logit of the variational acceptance rate Z_v.
        T: truncation (maximum number of proposals), ``T >= 1``.
        form: ``"exact"`` (the ELBO for this r; default) or ``"authors"`` (log a(x) added
            unconditionally, as in the authors' code).
    """
    if form not in ("exact", "authors"):
        raise ValueError(f"form must be 'exact' or 'authors', got {form!r}")
    p_last, mean_t, entropy = trs_posterior_stats(logit_z, log_a_x, T)
    log_pi_x = as_float32_or_wider(log_pi_x)
    log_a_x = as_float32_or_wider(log_a_x)
    a_term = _times_log(1.0 - p_last, log_a_x) if form == "exact" else log_a_x
    return log_pi_x + a_term + mean_t * as_float32_or_wider(mean_log1m_a_neg) + entropy


def _log_s_series(s: Tensor, n: int) -> Tensor:
    """``log S`` near ``Z = 0`` by its series in ``s = log(1 - Z)`` (:func:`lars_log_prob`)."""
    return math.log(n) + s * ((n - 1) / 2) + s**2 * ((n**2 - 1) / 24) - s**4 * ((n**4 - 1) / 2880)


def lars_log_prob(log_pi_x: Tensor, log_a_x: Tensor, z: Tensor, T: int) -> Tensor:
    """Log-density ``[B]`` of truncated rejection sampling given its acceptance rate ``Z``.

    ``q_T(x) = pi(x) [ a(x) S + (1-Z)^{T-1} ]`` with ``S = sum_{t=0}^{T-2} (1-Z)^t``. Exact when
    ``Z`` is the true ``E_pi[a]``; an *estimate* (not a bound) when ``Z`` is estimated (LARS).

    With ``n = T - 1`` and ``s = log(1 - Z)``, ``log S = log(1 - e^{n s}) - log Z``, which is
    0/0 at ``Z = 0`` and cancels catastrophically (value and gradient) near it. There ``log S``
    is ``log n`` plus the cumulant generating function of ``t`` uniform on ``{0..n-1}``:

        log S = log n + s (n-1)/2 + s^2 (n^2-1)/24 - s^4 (n^4-1)/2880 + O((n s)^6 / 181440),

    used for ``|n s| < 10^-2`` (truncation error below 10^-17). At ``Z = 0`` this is the
    limit ``log q_T(x) = log pi(x) + log(1 + (T-1) a(x))``.

    ``Z >= 1`` (an overshooting estimate: LARS's reweighted posterior term can exceed 1) is
    evaluated at ``Z = 1``, ``log q_T(x) = log pi(x) + log a(x)`` for ``T >= 2``, with gradient
    0 with respect to ``Z`` (gradients with respect to ``log_pi_x`` and ``log_a_x`` are those
    at ``Z = 1``). A negative or NaN ``Z`` gives NaN. ``T = 1`` gives ``log pi(x)`` for any ``Z``.

    Args:
        z: acceptance rate in [0, 1], a scalar or broadcastable to ``[B]``.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    log_pi_x, log_a_x, z = map(as_float32_or_wider, (log_pi_x, log_a_x, z))
    if T == 1:
        return log_pi_x + torch.zeros_like(log_a_x + z)
    n = T - 1
    z = torch.where(z >= 1, torch.ones_like(z), z)
    s = torch.log1p(-z)
    last = n * s  # log (1-Z)^{T-1}
    near_zero = (z >= 0) & (last > -1e-2)
    # each branch on arguments safe for the other's entries, so neither makes NaN gradients
    s0 = torch.where(near_zero, s, torch.zeros_like(s))
    series = _log_s_series(s0, n)
    z1 = torch.where(near_zero, torch.full_like(z, 0.5), z)
    direct = log1mexp(n * torch.log1p(-z1)) - torch.log(z1)
    log_geo = torch.where(near_zero, series, direct)
    return log_pi_x + torch.logaddexp(log_a_x + log_geo, last)


def lars_geometry(z: Tensor, T: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``Z``-dependent parts of :func:`lars_log_prob` at a scalar ``Z`` (a 0-d tensor), in
    float64, with their derivatives: ``(log S, n log(1 - Z), d log S / dZ, d n log(1 - Z) / dZ)``,
    with ``n = T - 1`` and ``log q_T(x) = log pi(x) + logaddexp(log a(x) + log S, n log(1 - Z))``.

    The same regimes as :func:`lars_log_prob`: the series near ``Z = 0`` (``|n s| < 10^-2``,
    ``s = log(1 - Z)``), ``Z >= 1`` evaluated at 1 with zero derivatives, NaN for a negative or
    NaN ``Z``; chosen by ``torch.where`` (each branch on an argument safe for it), so there is no
    host synchronisation. Derivatives: ``ds/dZ = -1/(1 - Z)``; directly,
    ``d log S/dZ = n (1-Z)^{n-1} / (1 - (1-Z)^n) - 1/Z``; by the series,
    ``d log S/ds = (n-1)/2 + s (n^2-1)/12 - s^3 (n^4-1)/720``. ``T >= 2``.
    """
    n = T - 1
    z = z.to(torch.float64)
    inside = (z >= 0) & (z < 1)
    zero, half = torch.zeros_like(z), torch.full_like(z, 0.5)
    z0 = torch.where(inside, z, zero)
    s = torch.log1p(-z0)
    ds = -torch.reciprocal(1.0 - z0)
    last = n * s
    near = last > -1e-2
    series = _log_s_series(s, n)
    d_series = ds * ((n - 1) / 2 + s * ((n**2 - 1) / 12) - s**3 * ((n**4 - 1) / 720))
    z1 = torch.where(near, half, z0)  # the direct formulas away from 0
    last1 = n * torch.log1p(-z1)
    tail = torch.exp(last1)  # (1 - Z)^n
    direct = torch.log(-torch.expm1(last1)) - torch.log(z1)
    d_direct = n * tail / ((1.0 - tail) * (1.0 - z1)) - torch.reciprocal(z1)
    values = (torch.where(near, series, direct), last, torch.where(near, d_series, d_direct), n * ds)
    at_one = (zero, torch.full_like(z, -math.inf), zero, zero)
    nan = torch.full_like(z, math.nan)
    return tuple(torch.where(inside, v, torch.where(z >= 1, v1, nan)) for v, v1 in zip(values, at_one))  # type: ignore[return-value]


def first_accepted(accept: Tensor) -> Tensor:
    """Index of the first ``True`` along dim 0 of ``accept [T, n]``; ``T - 1`` if none.

    This is the truncated rejection sampler's choice: the T-th proposal is accepted whenever
    the first T-1 are rejected.
    """
    accept = accept.clone()
    accept[-1] = True
    return accept.to(torch.uint8).argmax(dim=0)
