r"""Layer 1: sequential Monte Carlo and the FIVO / VSMC / AESMC bound (ALGORITHMS.md section 4).

Model p(x_{1:T}, z_{1:T}), proposal q(z_t | z_{<t}, x), K particles per sequence. With
normalised weights W̄_0^k = 1/K and ancestors a_0^k = k, for t = 1..T::

    z_t^k ~ q(z_t | z_{<t}^{a_{t-1}^k}, x)                      (propagate the ancestor's path)
    α_t^k = p(x_t, z_t^k | z_{<t}^k) / q(z_t^k | z_{<t}^k, x)    (incremental weight)
    log Ẑ += log Σ_k W̄_{t-1}^k α_t^k
    W̄_t^k  = W̄_{t-1}^k α_t^k / Σ_j W̄_{t-1}^j α_t^j
    ESS_t  = 1 / Σ_k (W̄_t^k)^2                                  (in [1, K])
    if t < T and ESS_t < ε K:   a_t ~ R(W̄_t),  W̄_t^k = 1/K     (resample, per sequence)
    else:                        a_t^k = k

so W̄ are the normalised weights carried since the last resampling. The bound is
E[log Ẑ] <= log p(x_{1:T}) (Jensen), and exp(log Ẑ) is an *unbiased* estimate of p(x_{1:T}) for
every resampling scheme R with E[#offspring of k] = K W̄^k (multinomial, stratified,
systematic) and every adaptive rule that decides from the past only (Del Moral 2004;
Naesseth, Lindsten & Schön 2019, "Elements of SMC", section 2).

Special cases:

* never resampling (``resampling="never"`` or ``ess_threshold <= 0``) telescopes,
  log Ẑ = log (1/K) Σ_k Π_t α_t^k: the IWAE bound on the whole sequence;
* ``K = 1`` gives the ELBO Σ_t log α_t (resampling one particle is the identity);
* ``ess_threshold >= 1`` resamples after every step t < T (the bootstrap particle filter's rule).

Gradients (FIVO, Maddison et al. 2017): ancestors are integer indices computed from detached
weights and the resample/no-resample decision is a comparison, so autograd differentiates
log Ẑ *with the ancestors held fixed*: the pathwise (reparameterised) gradient through the
particles and the weights, with the resampling step's score-function term
Σ_t ∇ log P(a_t | W̄_t) · log Ẑ dropped. This is biased, low variance, and what FIVO does.

Resampling (inverse CDF of the normalised weights, ``c_j = Σ_{i<=j} W̄^i``, ancestor of
position u = min{j : c_j > u})::

    multinomial:  u^k iid U[0, 1)           (any order)
    stratified:   u^k = (k + v^k) / K,      v^k iid U[0, 1)
    systematic:   u^k = (k + v) / K,        one v ~ U[0, 1) per sequence

Systematic resampling gives particle j floor(K W̄^j) or ceil(K W̄^j) offspring.

Conventions: particle axis first (``[K, B, ...]``), per-sequence values ``[B]``. The uniforms
of every resampling step are either supplied by the caller or drawn from a passed
``torch.Generator`` (default: the global RNG), so runs are deterministic under
``torch.manual_seed``; the caller's ``step`` draws the proposal noise. The loop is vectorised
over particles and sequences (Python loop over t only) and makes no host syncs: every
sequence's resampling decision is applied with ``torch.where``. A sequence whose
particles all have weight 0 (all ``log α_t = -inf``) gets log Ẑ = -inf, not NaN, and does not
disturb the others; a NaN (or ``+inf``) log-weight makes its sequence's log Ẑ NaN (or ``+inf``),
never a finite number; log weights of any magnitude are handled in log space. Float16/bfloat16
log-weights are promoted to float32.

References: Maddison et al., "Filtering Variational Objectives" (NeurIPS 2017); Naesseth et
al., "Variational Sequential Monte Carlo" (AISTATS 2018); Le et al., "Auto-Encoding
Sequential Monte Carlo" (ICLR 2018); Douc, Cappé & Moulines, "Comparison of resampling
schemes for particle filtering" (2005).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from .ops import as_float32_or_wider, logsumexp, logsumexp_parts, safe_max

__all__ = [
    "Resampling",
    "StepFn",
    "SMCResult",
    "effective_sample_size",
    "normalized_log_weights",
    "multinomial_resample",
    "stratified_resample",
    "systematic_resample",
    "gather_particles",
    "smc",
    "smc_log_marginal",
]

Resampling = Literal["multinomial", "stratified", "systematic", "never"]

#: ``step(t, state) -> (new_state, log_alpha)``: for ``t = 0..T-1`` (0-based), sample
#: z_{t+1}^k from the proposal given the (already resampled) ``state`` and return the new
#: state and the incremental log-weights ``log α_{t+1}^k`` ``[K, B]``. At ``t = 0`` the state
#: is the ``init_state`` passed to :func:`smc` (e.g. ``None``).
StepFn = Callable[[int, Any], tuple[Any, Tensor]]


class SMCResult(NamedTuple):
    """Everything one SMC run produces (shapes for K particles, B sequences, T steps)."""

    log_marginal: Tensor
    """``[B]`` log Ẑ, the FIVO bound's integrand."""
    log_weights: Tensor
    """``[K, B]`` final normalised log-weights log W̄_T (no resampling after the last step)."""
    state: Any
    """The particles' state after step T (not resampled)."""
    log_increments: Tensor
    """``[T, B]`` the terms log Σ_k W̄_{t-1}^k α_t^k; they sum to ``log_marginal``."""
    ess: Tensor
    """``[T, B]`` ESS_t of W̄_t, after the weight update and before any resampling."""
    resampled: Tensor
    """``[T, B]`` bool, whether sequence b resampled after step t (the last row is False)."""
    ancestors: Tensor
    """``[T - 1, K, B]`` ancestor indices a_t used after step t (identity where not resampled)."""

    @property
    def num_resamples(self) -> Tensor:
        """``[B]`` number of resampling events per sequence."""
        return self.resampled.sum(0)


def _check_log_weights(log_weights: Tensor, name: str = "log_weights") -> Tensor:
    if log_weights.dim() != 2:
        raise ValueError(f"{name} must be [K, B], got shape {tuple(log_weights.shape)}")
    if log_weights.shape[0] < 1:
        raise ValueError(f"{name} needs K >= 1 particles, got shape {tuple(log_weights.shape)}")
    if not log_weights.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {log_weights.dtype}")
    return as_float32_or_wider(log_weights)


def normalized_log_weights(log_weights: Tensor, dim: int = 0) -> Tensor:
    """``log W̄ = log_weights - logsumexp(log_weights)`` along ``dim``.

    A slice whose weights are all zero (all ``-inf``) has no normalisation; it is mapped to the
    uniform ``-log K`` instead of NaN (gradient 0). A slice with a NaN or a ``+inf`` log-weight
    is NaN where it cannot be normalised (never silently uniform).
    """
    log_weights = as_float32_or_wider(log_weights)
    shift, rest = logsumexp_parts(log_weights, dim=dim, keepdim=True)
    dead = rest == -math.inf
    safe = torch.where(dead, torch.zeros_like(rest), rest)
    uniform = torch.full_like(log_weights, -math.log(log_weights.shape[dim]))
    return torch.where(dead, uniform, (log_weights - shift) - safe)  # differences first


def effective_sample_size(log_weights: Tensor, dim: int = 0) -> Tensor:
    """ESS ``(Σ_k w_k)^2 / Σ_k w_k^2`` of the normalised weights, from log-weights ``[K, B]``.

    Invariant to adding a constant to the log-weights; K for equal weights, 1 for a single
    non-zero weight, 0 (not NaN) when all weights are zero (all ``-inf``), and NaN when a
    log-weight is NaN or ``+inf``. Computed as ``exp(2 logsumexp(c) - logsumexp(2 c))`` on the
    centred ``c = l - max l``, so any magnitude of log-weights is safe (centring first keeps
    ``log K`` from being absorbed by a huge max).
    """
    log_weights = as_float32_or_wider(log_weights)
    log_weights = log_weights - safe_max(log_weights, dim, keepdim=True)
    lse = logsumexp(log_weights, dim=dim)
    lse2 = logsumexp(2.0 * log_weights, dim=dim)
    dead = lse == -math.inf  # where-guards inside and out keep the gradient NaN-free there
    ess = torch.exp(torch.where(dead, torch.zeros_like(lse), 2.0 * lse - lse2))
    return torch.where(dead, torch.zeros_like(ess), ess)


def _inverse_cdf(log_weights: Tensor, positions: Tensor) -> Tensor:
    """Ancestors ``[K, B]``: for each position ``u [K, B]`` in [0, 1), min{j : c_j > u}.

    The CDF is divided by its last entry so that it ends at exactly 1, and positions are
    clamped below 1 (``(K - 1 + u) / K`` can round up to 1), so particles of weight 0 (also
    trailing ones) are never selected.
    """
    w = normalized_log_weights(log_weights.detach(), dim=0).exp()
    cdf = torch.cumsum(w, dim=0)
    cdf = cdf / cdf[-1:]
    below_one = 1.0 - torch.finfo(cdf.dtype).eps / 2  # the largest float < 1 (no host sync)
    positions = positions.to(cdf.dtype).clamp(min=0.0, max=below_one)
    idx = torch.searchsorted(
        cdf.transpose(0, 1).contiguous(),
        positions.transpose(0, 1).contiguous(),
        right=True,
    )
    return idx.clamp_(max=log_weights.shape[0] - 1).transpose(0, 1)


def multinomial_resample(log_weights: Tensor, uniforms: Tensor) -> Tensor:
    """Multinomial resampling: K i.i.d. draws from the normalised weights of each column.

    Args:
        log_weights: ``[K, B]`` (unnormalised) log-weights. A column of all ``-inf`` is
            treated as uniform.
        uniforms: ``[K', B]`` i.i.d. U[0, 1) (sorted or not; ``K' = K`` for resampling).

    Returns:
        ``[K', B]`` int64 ancestor indices in ``0..K-1``; row k is the inverse CDF at
        ``uniforms[k]`` (so sorted uniforms give sorted ancestors).
    """
    log_weights = _check_log_weights(log_weights)
    if uniforms.dim() != 2 or uniforms.shape[1] != log_weights.shape[1]:
        raise ValueError(f"uniforms must be [K, B] with B = {log_weights.shape[1]}, got {tuple(uniforms.shape)}")
    return _inverse_cdf(log_weights, uniforms)


def stratified_resample(log_weights: Tensor, uniforms: Tensor) -> Tensor:
    """Stratified resampling: one position ``(k + uniforms[k]) / K`` in each stratum.

    Args:
        log_weights: ``[K, B]`` log-weights.
        uniforms: ``[K, B]`` i.i.d. U[0, 1).

    Returns:
        ``[K, B]`` int64 ancestors, sorted along K.
    """
    log_weights = _check_log_weights(log_weights)
    if uniforms.shape != log_weights.shape:
        raise ValueError(f"uniforms must be [K, B] = {tuple(log_weights.shape)}, got {tuple(uniforms.shape)}")
    k = log_weights.shape[0]
    ar = torch.arange(k, device=log_weights.device, dtype=log_weights.dtype).unsqueeze(1)
    return _inverse_cdf(log_weights, (ar + uniforms.to(log_weights.dtype)) / k)


def systematic_resample(log_weights: Tensor, u: Tensor) -> Tensor:
    """Systematic resampling: positions ``(k + u) / K``, k = 0..K-1, one ``u`` per column.

    Particle j gets ``floor(K W̄^j)`` or ``ceil(K W̄^j)`` offspring.

    Args:
        log_weights: ``[K, B]`` log-weights.
        u: ``[B]`` U[0, 1) (one per sequence).

    Returns:
        ``[K, B]`` int64 ancestors, sorted along K.
    """
    log_weights = _check_log_weights(log_weights)
    if u.shape != log_weights.shape[1:]:
        raise ValueError(f"u must be [B] = [{log_weights.shape[1]}], got {tuple(u.shape)}")
    k = log_weights.shape[0]
    ar = torch.arange(k, device=log_weights.device, dtype=log_weights.dtype).unsqueeze(1)
    return _inverse_cdf(log_weights, (ar + u.to(log_weights.dtype).unsqueeze(0)) / k)


def gather_particles(state: Any, ancestors: Tensor) -> Any:
    """Select ``state[ancestors[k, b], b, ...]`` for every tensor leaf ``[K, B, ...]``.

    ``state`` may be a tensor, ``None``, or a (nested) tuple / list / dict of those. The
    gather is differentiable with respect to the state (the indices carry no gradient).
    """
    if state is None:
        return None
    if isinstance(state, Tensor):
        if state.dim() < 2 or state.shape[:2] != ancestors.shape:
            raise ValueError(
                f"every state tensor must be [K, B, ...] with [K, B] = {tuple(ancestors.shape)}, "
                f"got {tuple(state.shape)}"
            )
        idx = ancestors.reshape(ancestors.shape + (1,) * (state.dim() - 2)).expand_as(state)
        return torch.gather(state, 0, idx)
    if isinstance(state, dict):
        return type(state)((key, gather_particles(val, ancestors)) for key, val in state.items())
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(gather_particles(val, ancestors) for val in state))
    if isinstance(state, (tuple, list)):
        return type(state)(gather_particles(val, ancestors) for val in state)
    raise TypeError(f"state must be a tensor, None, or a tuple/list/dict of them; got {type(state).__name__}")


def _resample(scheme: str, log_w: Tensor, generator: torch.Generator | None, supplied: Tensor | None) -> Tensor:
    k, b = log_w.shape
    if scheme == "systematic":
        u = (
            supplied
            if supplied is not None
            else torch.rand(b, generator=generator, device=log_w.device, dtype=log_w.dtype)
        )
        return systematic_resample(log_w, u)
    u = (
        supplied
        if supplied is not None
        else torch.rand(k, b, generator=generator, device=log_w.device, dtype=log_w.dtype)
    )
    if scheme == "multinomial":
        return multinomial_resample(log_w, u)
    return stratified_resample(log_w, u)


def smc(
    step: StepFn,
    num_steps: int,
    init_state: Any = None,
    *,
    resampling: Resampling = "multinomial",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
    resampling_uniforms: Tensor | None = None,
) -> SMCResult:
    """Run SMC with adaptive resampling and return log Ẑ ``[B]`` with diagnostics.

    Args:
        step: ``step(t, state) -> (new_state, log_alpha [K, B])`` for ``t = 0..T-1``; see
            :data:`StepFn`. Every tensor leaf of the state must be ``[K, B, ...]``; shared
            per-sequence inputs (observations, context) belong in the closure.
        num_steps: T >= 1.
        init_state: the state passed to the first call (default ``None``).
        resampling: ``"multinomial"`` (default, as FIVO), ``"stratified"``, ``"systematic"``
            or ``"never"`` (IWAE).
        ess_threshold: ε; sequence b resamples after step t < T iff ESS_t < ε K. ``ε <= 0``:
            never; ``ε >= 1``: after every step. Default 0.5 (FIVO).
        generator: source of the resampling uniforms (default: the global RNG).
        resampling_uniforms: the uniforms instead, ``[T - 1, K, B]`` for multinomial and
            stratified, ``[T - 1, B]`` for systematic; row t is used after step t (drawn
            whether or not a sequence resamples, so runs are reproducible row by row).
    """
    if resampling not in ("multinomial", "stratified", "systematic", "never"):
        raise ValueError(f"resampling must be 'multinomial', 'stratified', 'systematic' or 'never', got {resampling!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps (T) must be an int >= 1, got {num_steps!r}")
    ess_threshold = float(ess_threshold)
    if math.isnan(ess_threshold):
        raise ValueError("ess_threshold must be a number, got NaN")
    never = resampling == "never" or ess_threshold <= 0.0
    always = not never and ess_threshold >= 1.0

    state = init_state
    log_w: Tensor | None = None  # log W̄_{t-1}, [K, B]
    log_z: Tensor | None = None
    increments: list[Tensor] = []
    ess_list: list[Tensor] = []
    resampled_list: list[Tensor] = []
    ancestors_list: list[Tensor] = []
    shape: torch.Size | None = None
    for t in range(num_steps):
        state, log_alpha = step(t, state)
        if not isinstance(log_alpha, Tensor) or log_alpha.dim() != 2:
            got = tuple(log_alpha.shape) if isinstance(log_alpha, Tensor) else type(log_alpha).__name__
            raise ValueError(f"step must return log_alpha of shape [K, B], got {got} at t = {t}")
        log_alpha = _check_log_weights(log_alpha, "log_alpha")
        if shape is None:
            shape = log_alpha.shape
            k = shape[0]
            log_w = torch.full_like(log_alpha, -math.log(k))
            log_z = torch.zeros_like(log_alpha[0])
            if resampling_uniforms is not None and not never:
                want = (num_steps - 1, k, shape[1]) if resampling != "systematic" else (num_steps - 1, shape[1])
                if tuple(resampling_uniforms.shape) != want:
                    raise ValueError(
                        f"resampling_uniforms must be {list(want)} for {resampling} resampling, "
                        f"got {list(resampling_uniforms.shape)}"
                    )
            identity = torch.arange(k, device=log_alpha.device).unsqueeze(1).expand(shape)
        elif log_alpha.shape != shape:
            raise ValueError(f"log_alpha changed shape from {list(shape)} to {list(log_alpha.shape)} at t = {t}")
        assert log_w is not None and log_z is not None
        log_w = log_w.to(log_alpha.dtype)
        log_z = log_z.to(log_alpha.dtype)

        # log Σ_k W̄_{t-1}^k α_t^k, and W̄_t (NaN-free: an all -inf column gives -inf and W̄ := 1/K).
        # log α_t is shifted by its per-sequence max first, so that a huge common offset cannot
        # absorb log W̄_{t-1}: W̄_t depends on the differences of log α_t only.
        shift = safe_max(log_alpha, 0)
        unnorm = log_w + (log_alpha - shift)
        inc = shift + logsumexp(unnorm, dim=0)
        log_z = log_z + inc
        increments.append(inc)
        log_w = normalized_log_weights(unnorm, dim=0)
        ess = effective_sample_size(log_w.detach(), dim=0)
        ess_list.append(ess)

        if t == num_steps - 1:
            resampled_list.append(torch.zeros_like(ess, dtype=torch.bool))
            break
        if never:
            resampled_list.append(torch.zeros_like(ess, dtype=torch.bool))
            ancestors_list.append(identity)
            continue
        do = torch.ones_like(ess, dtype=torch.bool) if always else ess < ess_threshold * k
        supplied = resampling_uniforms[t] if resampling_uniforms is not None else None
        anc = _resample(resampling, log_w, generator, supplied)
        anc = torch.where(do.unsqueeze(0), anc, identity)
        state = gather_particles(state, anc)
        log_w = torch.where(do.unsqueeze(0), torch.full_like(log_w, -math.log(k)), log_w)
        resampled_list.append(do)
        ancestors_list.append(anc)

    assert log_w is not None and log_z is not None and shape is not None
    ancestors = (
        torch.stack(ancestors_list)
        if ancestors_list
        else torch.empty((0, *shape), dtype=torch.long, device=log_w.device)
    )
    return SMCResult(
        log_marginal=log_z,
        log_weights=log_w,
        state=state,
        log_increments=torch.stack(increments),
        ess=torch.stack(ess_list),
        resampled=torch.stack(resampled_list),
        ancestors=ancestors,
    )


def smc_log_marginal(
    step: StepFn,
    num_steps: int,
    init_state: Any = None,
    *,
    resampling: Resampling = "multinomial",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
    resampling_uniforms: Tensor | None = None,
) -> Tensor:
    """The FIVO bound's integrand log Ẑ ``[B]``; :func:`smc` with the diagnostics dropped."""
    return smc(
        step,
        num_steps,
        init_state,
        resampling=resampling,
        ess_threshold=ess_threshold,
        generator=generator,
        resampling_uniforms=resampling_uniforms,
    ).log_marginal
