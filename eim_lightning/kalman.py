r"""Layer 1: the 1-D linear-Gaussian state-space model and its exact Kalman-filter oracle.

The model (q, r are *variances*; z_0 := 0 so that the first step is the same formula)::

    z_1 ~ N(0, q),   z_t = a z_{t-1} + N(0, q),   x_t = z_t + N(0, r),   t = 1..T

Kalman filter (predict / update), with m_{1|0} = 0, P_{1|0} = q::

    S_t       = P_{t|t-1} + r                          (predictive variance of x_t)
    log p(x_t | x_{<t}) = log N(x_t; m_{t|t-1}, S_t)
    G_t       = P_{t|t-1} / S_t                         (gain)
    m_{t|t}   = m_{t|t-1} + G_t (x_t - m_{t|t-1}),   P_{t|t} = P_{t|t-1} r / S_t
    m_{t+1|t} = a m_{t|t},                           P_{t+1|t} = a^2 P_{t|t} + q

and log p(x_{1:T}) = Σ_t log p(x_t | x_{<t}) exactly. Equivalently x_{1:T} ~ N(0, Σ) with
Σ = q A Aᵀ + r I, A_{ts} = a^{t-s} for s <= t (the test oracle builds Σ this way).

For SMC (:mod:`.smc`), one step with an affine Gaussian proposal
q(z_t | z_{t-1}, x_t) = N(w_z z_{t-1} + w_x x_t + c, σ²) (:func:`lgssm_step`, the only
implementation, shared with :class:`eim_lightning.densities.LinearGaussianSSM`) draws
z_t = mean + σ ε and weighs it by

    α_t = N(z_t; a z_{t-1}, q) N(x_t; z_t, r) / N(z_t; w_z z_{t-1} + w_x x_t + c, σ²).

The two classic proposals (:func:`proposal_coefficients`) simplify it:

* bootstrap, q = p(z_t | z_{t-1}) = N(a z_{t-1}, q):  α_t = p(x_t | z_t) = N(x_t; z_t, r);
* locally optimal, q = p(z_t | z_{t-1}, x_t) = N(μ, v) with
  v = q r / (q + r), μ = (r a z_{t-1} + q x_t) / (q + r):
  α_t = p(x_t | z_{t-1}) = N(x_t; a z_{t-1}, q + r), independent of z_t.

With the locally optimal proposal the estimate is exact (zero variance) when T = 1 or a = 0,
for every K and resampling scheme: then α_t = p(x_t | z_{t-1}) = p(x_t | x_{<t}) for every
particle. In general it is not (α_t still depends on z_{t-1}).

Shapes: sequences ``x [B, T]``, per-sequence values ``[B]``; parameters are Python floats or
tensors broadcastable to ``[B]`` (differentiable). Everything is computed in the dtype of
``x`` (use float64 for oracles).

References: Kalman (1960); Doucet, Godsill & Andrieu (2000) for the locally optimal proposal;
Maddison et al. (2017) and Le et al. (2018) use this model to test FIVO/AESMC.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .ops import as_float32_or_wider

__all__ = [
    "KalmanResult",
    "normal_log_prob",
    "kalman_filter",
    "kalman_log_likelihood",
    "lgssm_covariance",
    "transition_log_prob",
    "emission_log_prob",
    "proposal_coefficients",
    "affine_proposal",
    "optimal_proposal",
    "predictive_log_prob",
    "sample_lgssm",
    "lgssm_step",
    "lgssm_smc_step",
]

_LOG_2PI = math.log(2.0 * math.pi)


class KalmanResult(NamedTuple):
    log_likelihood: Tensor
    """``[B]`` log p(x_{1:T})."""
    log_predictive: Tensor
    """``[B, T]`` log p(x_t | x_{<t})."""
    filtered_mean: Tensor
    """``[B, T]`` m_{t|t} = E[z_t | x_{1:t}]."""
    filtered_var: Tensor
    """``[B, T]`` P_{t|t} = Var[z_t | x_{1:t}]."""


def normal_log_prob(x: Tensor, mean: Tensor | float, var: Tensor | float) -> Tensor:
    """``log N(x; mean, var)`` elementwise (``var`` a variance)."""
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    return -0.5 * (_LOG_2PI + torch.log(var) + (x - mean) ** 2 / var)


def _params(x: Tensor, a, q, r) -> tuple[Tensor, Tensor, Tensor]:
    out = []
    for name, p in (("a", a), ("q", q), ("r", r)):
        p = torch.as_tensor(p, dtype=x.dtype, device=x.device)
        if name != "a" and bool((p <= 0).any()):
            raise ValueError(f"{name} must be a positive variance, got {p}")
        out.append(p)
    return out[0], out[1], out[2]


def _check_x(x: Tensor) -> Tensor:
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"x must be [B, T] with T >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    return as_float32_or_wider(x)


def kalman_filter(x: Tensor, a, q, r) -> KalmanResult:
    """Exact Kalman filter of the 1-D model for a batch of sequences ``x [B, T]``."""
    x = _check_x(x)
    a, q, r = _params(x, a, q, r)
    b, t_len = x.shape
    m = torch.zeros(b, dtype=x.dtype, device=x.device)
    p = q.expand(b)
    preds, means, vars_ = [], [], []
    for t in range(t_len):
        if t > 0:
            m = a * m
            p = a * a * p + q
        s = p + r
        xt = x[:, t]
        preds.append(normal_log_prob(xt, m, s))
        g = p / s
        m = m + g * (xt - m)
        p = p * r / s
        means.append(m)
        vars_.append(p.expand(b))
    log_pred = torch.stack(preds, dim=1)
    return KalmanResult(log_pred.sum(1), log_pred, torch.stack(means, 1), torch.stack(vars_, 1))


def kalman_log_likelihood(x: Tensor, a, q, r) -> Tensor:
    """``log p(x_{1:T})`` ``[B]`` of the 1-D linear-Gaussian model, by the Kalman filter."""
    return kalman_filter(x, a, q, r).log_likelihood


def lgssm_covariance(num_steps: int, a, q, r, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    """Joint covariances of z_{1:T} and x_{1:T}: ``(q A Aᵀ, q A Aᵀ + r I)``, each ``[T, T]``.

    ``A_{ts} = a^{t-s}`` for ``s <= t`` since z_t = Σ_{s<=t} a^{t-s} w_s, w_s ~ N(0, q).
    """
    a, q, r = (torch.as_tensor(v, dtype=dtype) for v in (a, q, r))
    idx = torch.arange(num_steps, dtype=dtype)
    lag = idx[:, None] - idx[None, :]
    lower = lag >= 0
    mat = torch.where(lower, a ** torch.where(lower, lag, torch.zeros_like(lag)), torch.zeros_like(lag))
    cov_z = q * mat @ mat.T
    return cov_z, cov_z + r * torch.eye(num_steps, dtype=dtype)


def transition_log_prob(z: Tensor, z_prev: Tensor | float, a, q) -> Tensor:
    """``log p(z_t | z_{t-1}) = log N(z_t; a z_{t-1}, q)`` (``z_prev = 0`` for t = 1)."""
    return normal_log_prob(z, a * z_prev, q)


def emission_log_prob(x_t: Tensor, z: Tensor, r) -> Tensor:
    """``log p(x_t | z_t) = log N(x_t; z_t, r)``."""
    return normal_log_prob(x_t, z, r)


def proposal_coefficients(proposal: Literal["bootstrap", "optimal"], a, q, r) -> tuple:
    """``(w_z, w_x, c, σ²)`` of the bootstrap proposal ``(a, 0, 0, q)`` or the locally optimal
    one ``(r a / (q + r), q / (q + r), 0, q r / (q + r))`` (floats or tensors, as given)."""
    if proposal == "bootstrap":
        return a, 0.0, 0.0, q
    if proposal == "optimal":
        return r * a / (q + r), q / (q + r), 0.0, q * r / (q + r)
    raise ValueError(f"proposal must be 'bootstrap' or 'optimal', got {proposal!r}")


def affine_proposal(z_prev: Tensor | float, x_t: Tensor, w_z, w_x, c, var) -> tuple[Tensor, Tensor]:
    """Mean ``w_z z_{t-1} + w_x x_t + c`` and variance ``σ² = var`` of the affine proposal (broadcast)."""
    mean = w_z * z_prev + w_x * x_t + c
    return mean, torch.as_tensor(var, dtype=mean.dtype, device=mean.device).expand_as(mean)


def optimal_proposal(z_prev: Tensor | float, x_t: Tensor, a, q, r) -> tuple[Tensor, Tensor]:
    """Mean and variance of p(z_t | z_{t-1}, x_t): ``((r a z_{t-1} + q x_t)/(q + r), q r/(q + r))``."""
    return affine_proposal(z_prev, x_t, *proposal_coefficients("optimal", a, q, r))


def predictive_log_prob(x_t: Tensor, z_prev: Tensor | float, a, q, r) -> Tensor:
    """``log p(x_t | z_{t-1}) = log N(x_t; a z_{t-1}, q + r)``."""
    return normal_log_prob(x_t, a * z_prev, q + r)


def sample_lgssm(
    num_sequences: int,
    num_steps: int,
    a,
    q,
    r,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact samples ``(z, x)``, each ``[B, T]``, of the model (noise from ``generator``)."""
    if num_sequences < 1 or num_steps < 1:
        raise ValueError(f"need num_sequences >= 1 and num_steps >= 1, got {num_sequences}, {num_steps}")
    w = torch.randn(num_sequences, num_steps, generator=generator, dtype=dtype, device=device)
    v = torch.randn(num_sequences, num_steps, generator=generator, dtype=dtype, device=device)
    a, q, r = _params(w, a, q, r)
    zs, z = [], torch.zeros(num_sequences, dtype=dtype, device=device)
    for t in range(num_steps):
        z = a * z + q.sqrt() * w[:, t]
        zs.append(z)
    z_all = torch.stack(zs, 1)
    return z_all, z_all + r.sqrt() * v


def lgssm_step(z_prev: Tensor, x_t: Tensor, eps: Tensor, a, q, r, proposal: tuple) -> tuple[Tensor, Tensor]:
    """One SMC step: ``z_t = mean + σ eps`` from the affine proposal ``(w_z, w_x, c, σ²)`` and
    ``log α_t = log N(z_t; a z_{t-1}, q) + log N(x_t; z_t, r) - log N(z_t; mean, σ²)``.

    Shapes broadcast: particles ``z_prev``, ``eps`` ``[K, B]``, observations ``x_t [B]``; the
    parameters may require grad (pathwise gradients through z_t).
    """
    mean, var = affine_proposal(z_prev, x_t, *proposal)
    z = mean + var.sqrt() * eps
    log_alpha = transition_log_prob(z, z_prev, a, q) + emission_log_prob(x_t, z, r) - normal_log_prob(z, mean, var)
    return z, log_alpha


def lgssm_smc_step(
    x: Tensor,
    a,
    q,
    r,
    num_particles: int,
    proposal: Literal["bootstrap", "optimal"] = "bootstrap",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
):
    """A ``step(t, z_prev) -> (z_t, log α_t)`` for :func:`eim_lightning.smc.smc` on this model.

    State: the particles ``z_{t-1} [K, B]`` (``None`` at t = 0, meaning z_0 = 0). The proposal
    noise is ``noise[t]`` (``[T, K, B]``, standard normal) if given, else drawn from
    ``generator``. Parameters may require grad (pathwise gradients through the particles).
    """
    x = _check_x(x)
    b, t_len = x.shape
    if noise is not None and tuple(noise.shape) != (t_len, num_particles, b):
        raise ValueError(f"noise must be [T, K, B] = {[t_len, num_particles, b]}, got {list(noise.shape)}")
    a_, q_, r_ = _params(x, a, q, r)  # validated once, outside the per-step hot path
    coefficients = proposal_coefficients(proposal, a_, q_, r_)

    def step(t: int, z_prev):
        zp = torch.zeros(num_particles, b, dtype=x.dtype, device=x.device) if z_prev is None else z_prev
        eps = (
            noise[t]
            if noise is not None
            else torch.randn(num_particles, b, generator=generator, dtype=x.dtype, device=x.device)
        )
        return lgssm_step(zp, x[:, t], eps, a_, q_, r_, coefficients)

    return step
