r"""Property tier: randomised checks of the pure layer (ops, bounds, smc) and the simple densities
against references written here from the plain formulas, in extended precision.

Every test draws its cases from a seeded generator: a fast profile runs in the default tier, a
20 times longer one is marked ``slow``. Cases mix ordinary values with NaN, ``±inf``, huge
magnitudes and huge common offsets, every K/T >= 1 (1, 2, small, 1024), random batch sizes and
float32/float64/bfloat16 inputs. The references use numpy's ``longdouble`` (80-bit extended
precision on x86-64: 64-bit mantissa, exponent range to 1e4932) on the inputs *as rounded to the
tested dtype*, so they are exact to far below the tolerances.

The rules every comparison enforces (``assert_matches``): the result is NaN exactly where the
reference is, has the same infinities, and elsewhere differs by at most a few ulps of the output
dtype times the magnitude of the quantities the result depends on mathematically: its terms and
the *differences* of energies, never their common offset. So a NaN cannot become a finite
number, a finite number cannot become NaN, and a bound that loses ``log K`` to a huge shared
energy offset fails. Run ``pytest -s tests/test_properties.py`` to see how many cases were tried.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from eim_lightning.bounds import (
    first_accepted,
    lars_log_prob,
    snis_lower_bound,
    snis_particle_upper_bounds,
    trs_lower_bound,
    trs_posterior_stats,
)
from eim_lightning.densities import SNIS, TRS, VRNN, ConditionalNormal, LinearGaussianModel, Normal
from eim_lightning.ops import chunked_log_mean_exp, log1mexp, log_mean_exp, logsumexp, logsumexp_parts
from eim_lightning.smc import effective_sample_size, normalized_log_weights, smc

LD = np.longdouble
if np.finfo(LD).eps > 1e-18:
    pytest.skip("the references need numpy's 80-bit extended precision (x86-64)", allow_module_level=True)
CASES: Counter = Counter()
PROFILES = ["fast", pytest.param("slow", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", autouse=True)
def _report_case_counts():
    yield
    print(f"\nproperty cases tried: {dict(CASES)}")


def cases(profile: str, n_fast: int, seed: int):
    """``n_fast`` (fast profile) or ``20 n_fast`` (slow) seeded generators, one per case."""
    n = n_fast if profile == "fast" else 20 * n_fast
    root = np.random.SeedSequence([seed, profile == "slow"])
    for child in root.spawn(n):
        CASES[profile] += 1
        yield np.random.default_rng(child)


# -- inputs -------------------------------------------------------------------------------------

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def pick(rng: np.random.Generator, options, p=None):
    return options[rng.choice(len(options), p=p)]


def energies(rng: np.random.Generator, shape, offset: float | None = None) -> np.ndarray:
    """Log-weights: a common offset (0, moderate, or huge) plus a spread of any size."""
    if offset is None:
        offset = pick(rng, [0.0, 0.0, 30.0, -30.0, 1e4, -1e4, 1e7, -1e7, 1e30, -1e30])
    spread = pick(rng, [0.0, 1e-3, 1.0, 1.0, 10.0, 100.0])
    return offset + spread * rng.standard_normal(shape)


def sprinkle(rng: np.random.Generator, x: np.ndarray, p: float = 0.25) -> np.ndarray:
    """With probability ``p`` each: a NaN, some ``-inf`` (maybe all), a ``+inf``."""
    x = np.array(x, dtype=np.float64)
    if x.size == 0:
        return x
    flat = x.reshape(-1)
    if rng.random() < p:
        flat[rng.integers(flat.size)] = np.nan
    if rng.random() < p:
        flat[rng.random(flat.size) < pick(rng, [0.3, 0.8, 1.0])] = -np.inf
    if rng.random() < p / 2:
        flat[rng.integers(flat.size)] = np.inf
    return x


def tensor(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(dtype)


def ld(t: torch.Tensor) -> np.ndarray:
    """The tensor's values (as rounded to its dtype) in extended precision."""
    return t.detach().double().numpy().astype(LD)


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def assert_matches(got: torch.Tensor, ref: np.ndarray, scale, ulps: float = 8.0, atol: float = 0.0, what: str = ""):
    """NaN exactly where ``ref`` is NaN, the same infinities, and elsewhere
    ``|got - ref| <= ulps * eps * scale + atol`` (``eps`` of ``got``'s dtype)."""
    info = torch.finfo(got.dtype)
    eps = info.eps
    g = ld(got)
    ref = np.broadcast_to(np.asarray(ref, dtype=LD), g.shape)
    with np.errstate(invalid="ignore"):
        ref = np.where(np.abs(ref) > info.max, np.sign(ref) * np.inf, ref)  # overflow is correct rounding
    scale = np.broadcast_to(np.asarray(scale, dtype=LD), g.shape)
    with np.errstate(invalid="ignore"):
        nan_ref, nan_got = np.isnan(ref), np.isnan(g)
        bad = nan_ref != nan_got
        inf = np.isinf(ref) & ~nan_ref
        bad |= inf & (g != ref)
        fin = np.isfinite(ref)
        err = np.where(fin & ~nan_got, np.abs(g - np.where(fin, ref, 0)), 0)
        bad |= fin & ~nan_got & (err > ulps * eps * np.where(fin, scale, 0) + atol)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} wrong, first at {i}: got {g[i]!r}, expected {ref[i]!r} "
            f"(tolerance {ulps * eps * float(scale[i]) + atol:.3g}, dtype {got.dtype})"
        )


# -- references (extended precision) ---------------------------------------------------------------


def softplus_ld(r: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.logaddexp(LD(0), np.asarray(r, dtype=LD))


def ref_lse_parts(x: np.ndarray, axis: int, keepdims: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``log sum exp = m + rest``: m the slice max (0 unless finite), ``rest = log sum e^{x-m}``;
    ``rest`` is NaN for a slice with a NaN, ``+inf`` with a ``+inf``, ``-inf`` for all ``-inf``
    or empty slices (the specification of :func:`eim_lightning.ops.logsumexp`)."""
    x = np.asarray(x, dtype=LD)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        any_nan = np.isnan(x).any(axis, keepdims=True)
        any_pinf = (x == np.inf).any(axis, keepdims=True)
        finite = np.isfinite(x)
        m = np.max(np.where(finite, x, -np.inf), axis=axis, keepdims=True, initial=-np.inf)
        m = np.where(np.isfinite(m) & ~any_nan & ~any_pinf, m, LD(0))
        total = np.sum(np.where(finite, np.exp(np.where(finite, x, 0) - m), 0), axis=axis, keepdims=True)
        rest = np.where(any_nan, np.nan, np.where(any_pinf, np.inf, np.log(total)))  # log 0 = -inf
    if not keepdims:
        m, rest = np.squeeze(m, axis), np.squeeze(rest, axis)
    return m.astype(LD), rest.astype(LD)


def ref_lse(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    m, rest = ref_lse_parts(x, axis, keepdims)
    return m + rest


def ref_snis(log_pi, u_x, u_neg):
    """``log pi + log K - log(1 + sum_j e^{u_j - u_x})`` from ``u_neg [K-1, ...]``, and the size of
    the terms it depends on (``log pi``, the energy differences, ``log K``) for the tolerance."""
    m, rest = ref_lse_parts(u_neg, 0)
    k = u_neg.shape[0] + 1
    with np.errstate(invalid="ignore"):
        log_ratio = (m - u_x) + rest
        bound = log_pi + np.log(LD(k)) - np.logaddexp(LD(0), log_ratio)
        size = sum(np.abs(np.where(np.isfinite(v), v, 0)) for v in (log_pi, log_ratio, m - u_x)) + math.log(k) + 1
    return bound, size


def ref_trs(log_pi, log_a, e_log1m_a, logit_z, T: int, form: str):
    """ELBO, r(T-1|x), E_r[t] and H[r] by enumeration of t = 0..T-1 (``[B]`` each), with
    ``0 log 0 = 0``, ``0 * log a(x) = 0`` for the forced last draw (NaN stays NaN) and
    ``(1 - Z_v)^0 = 1`` (so Z_v does not enter when T = 1)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        l1m = -np.logaddexp(LD(0), LD(logit_z))  # log(1 - Z_v)
        t = np.arange(T, dtype=LD)[:, None]
        not_last = t < T - 1
        t_l1m = np.where(t == 0, 0, t * l1m)
        logits = np.where(not_last, t_l1m + log_a, t_l1m)
        log_r = logits - ref_lse(logits, 0, keepdims=True)
        r = np.exp(log_r)
        forced_last = np.where(np.isnan(log_a), np.nan, 0)
        a_term = np.where(not_last, log_a, forced_last) if form == "exact" else log_a
        # no rejected samples at t = 0 (but a NaN input stays NaN)
        rejections = np.where((t == 0) & ~np.isnan(e_log1m_a), 0, t * e_log1m_a)
        terms = log_pi + a_term + rejections - log_r
        elbo = np.sum(np.where(r == 0, 0, r * terms), 0)
        entropy = -np.sum(np.where(r == 0, 0, r * log_r), 0)
        return elbo, r[-1], np.sum(r * t, 0), entropy


# -- ops -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_logsumexp_family_matches_the_reference(profile):
    for rng in cases(profile, 150, seed=2):
        dtype = pick(rng, DTYPES)
        shape = list(rng.integers(1, 5, rng.integers(1, 4)))
        dim = int(rng.integers(len(shape)))
        n = int(pick(rng, [0, 1, 2, rng.integers(3, 40), 1100], p=[0.05, 0.15, 0.15, 0.55, 0.1]))
        shape[dim] = n
        keepdim = bool(rng.random() < 0.5)
        x = tensor(sprinkle(rng, energies(rng, shape)), dtype)
        xl = ld(x)
        m, rest = ref_lse_parts(xl, dim, keepdims=True)
        ref = m + rest
        size = np.abs(np.where(np.isfinite(ref), ref, 0)) + math.log(n + 1) + 1
        squeeze = (lambda a: a) if keepdim else (lambda a, dim=dim: np.squeeze(a, dim))

        out = logsumexp(x, dim, keepdim)
        assert out.dtype == out_dtype(dtype) and out.shape == squeeze(ref).shape
        assert_matches(out, squeeze(ref), squeeze(size), what="logsumexp")
        shift, rest_got = logsumexp_parts(x, dim, keepdim=True)
        assert torch.isfinite(shift).all()
        with np.errstate(invalid="ignore"):
            centred_ref = (xl - m) - rest  # = x - logsumexp(x), from the differences
        assert_matches(
            (x.to(shift.dtype) - shift) - rest_got,
            centred_ref,
            np.abs(np.where(np.isfinite(centred_ref), centred_ref, 0)) + math.log(n + 1) + 1,
            what="x - logsumexp(x) from the parts",
        )
        if n == 0:
            with pytest.raises(ValueError):
                log_mean_exp(x, dim, keepdim)
            continue
        assert_matches(log_mean_exp(x, dim, keepdim), squeeze(ref) - np.log(LD(n)), squeeze(size), what="log_mean_exp")
        if dtype == torch.bfloat16:
            continue
        # gradient: the softmax where the slice is finite, exactly 0 where it is all -inf
        leaf = x.clone().requires_grad_(True)
        logsumexp(leaf, dim, keepdim=True).backward(torch.ones(ref.shape, dtype=dtype))
        with np.errstate(invalid="ignore", over="ignore"):
            soft = np.exp(centred_ref)
        finite_slice = np.broadcast_to(np.isfinite(ref), xl.shape)
        dead = np.broadcast_to(ref == -np.inf, xl.shape)
        g = ld(leaf.grad)
        eps = torch.finfo(dtype).eps
        assert np.all(g[dead] == 0), "gradient of an all -inf slice"
        err = np.abs(g - soft)[finite_slice]
        with np.errstate(invalid="ignore"):
            rel = np.where(soft > 0, soft * (np.abs(centred_ref) + 1), 0)
        tol = (8 * eps * rel + 8 * eps * math.log(n + 1) / n + torch.finfo(dtype).tiny)[finite_slice]
        assert np.all(err <= tol), (err - tol).max()


@pytest.mark.parametrize("profile", PROFILES)
def test_log1mexp_matches_the_reference(profile):
    for rng in cases(profile, 100, seed=3):
        dtype = pick(rng, DTYPES)
        n = int(rng.integers(1, 40))
        a = -(10.0 ** rng.uniform(-30, 3, n))
        a[rng.random(n) < 0.1] = 0.0
        a[rng.random(n) < 0.1] = -np.inf
        a[rng.random(n) < 0.05] = np.nan
        a[rng.random(n) < 0.1] = 10.0 ** rng.uniform(-5, 2)  # outside the domain: NaN
        x = tensor(a, dtype)
        xl = ld(x)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            ref = np.where(xl > 0, np.nan, np.where(xl > -math.log(2), np.log(-np.expm1(xl)), np.log1p(-np.exp(xl))))
        out = log1mexp(x)
        assert out.dtype == out_dtype(dtype)
        assert_matches(
            out,
            ref,
            np.abs(np.where(np.isfinite(ref), ref, 0)),
            ulps=4,
            atol=torch.finfo(out.dtype).tiny,
            what="log1mexp",
        )


@pytest.mark.parametrize("profile", PROFILES)
def test_chunked_log_mean_exp_matches_the_reference(profile):
    for rng in cases(profile, 60, seed=4):
        dtype = pick(rng, DTYPES)
        n, b = int(rng.integers(1, 200)), int(rng.integers(1, 4))
        chunk = int(rng.integers(1, n + 5))
        table = tensor(sprinkle(rng, energies(rng, (n, b)), p=0.15), dtype)
        served = []

        def replicas(m, table=table, served=served, chunk=chunk):
            assert 1 <= m <= chunk
            start = sum(served)
            served.append(m)
            return table[start : start + m]

        out = chunked_log_mean_exp(replicas, n, chunk)
        assert sum(served) == n
        ref = ref_lse(ld(table), 0) - np.log(LD(n))
        assert_matches(out, ref, np.abs(np.where(np.isfinite(ref), ref, 0)) + math.log(n) + 2, what="chunked")


# -- bounds ----------------------------------------------------------------------------------------


def _num_particles(rng: np.random.Generator) -> int:
    return int(pick(rng, [1, 2, rng.integers(3, 30), 1024], p=[0.2, 0.2, 0.45, 0.15]))


@pytest.mark.parametrize("profile", PROFILES)
def test_snis_bounds_match_the_reference(profile):
    for rng in cases(profile, 150, seed=5):
        dtype = pick(rng, DTYPES)
        b, k = int(rng.integers(1, 6)), _num_particles(rng)
        shared = bool(rng.random() < 0.5)
        offset = pick(rng, [0.0, 30.0, -1e4, 1e7, -1e30])
        u_x = tensor(sprinkle(rng, energies(rng, b, offset), p=0.15), dtype)
        u_neg = tensor(sprinkle(rng, energies(rng, (k - 1, 1 if shared else b), offset)), dtype)
        log_pi = tensor(sprinkle(rng, 3 * rng.standard_normal(b), p=0.1), dtype)
        ref, size = ref_snis(ld(log_pi), ld(u_x), ld(u_neg))
        out = snis_lower_bound(log_pi, u_x, u_neg)
        assert out.dtype == out_dtype(dtype) and out.shape == (b,)
        assert_matches(out, ref, size, what=f"snis_lower_bound K={k} shared={shared}")

        # the particle upper bounds of one run: [K, B] energies, log s = u - logsumexp(u)
        u = tensor(sprinkle(rng, energies(rng, (k, b), offset)), dtype)
        lp = tensor(3 * rng.standard_normal((k, b)), dtype)
        m, rest = ref_lse_parts(ld(u), 0, keepdims=True)
        with np.errstate(invalid="ignore"):
            log_s = (ld(u) - m) - rest
        log_s_got, upper = snis_particle_upper_bounds(lp, u)
        scale = np.abs(np.where(np.isfinite(log_s), log_s, 0)) + math.log(k) + 1
        assert_matches(log_s_got, log_s, scale, what="log s")
        assert_matches(upper, ld(lp) + log_s + np.log(LD(k)), scale + np.abs(ld(lp)), what="upper bounds")


@pytest.mark.parametrize("profile", PROFILES)
def test_snis_bound_gradient_matches_the_reference(profile):
    for rng in cases(profile, 50, seed=6):
        dtype = pick(rng, (torch.float32, torch.float64))
        b, k = int(rng.integers(1, 5)), int(pick(rng, [2, rng.integers(3, 30), 1024]))
        offset = pick(rng, [0.0, -1e4, 1e7])
        u_x = tensor(energies(rng, b, offset), dtype).requires_grad_(True)
        u_neg = tensor(energies(rng, (k - 1, b), offset), dtype).requires_grad_(True)
        snis_lower_bound(torch.zeros(b, dtype=dtype), u_x, u_neg).sum().backward()
        # dL/du_x = 1 - s_x, dL/du_j = -s_j with s the softmax of (u_x, u_neg)
        u = np.concatenate([ld(u_x)[None], ld(u_neg)])
        m, rest = ref_lse_parts(u, 0)
        s = np.exp((u - m) - rest)
        eps = torch.finfo(dtype).eps
        tol = 16 * eps * (np.abs(u - m) + math.log(k) + 1)
        tiny = torch.finfo(dtype).tiny  # smaller gradients may underflow to 0
        assert np.all(np.abs(ld(u_x.grad) - (1 - s[0])) <= tol[0] * np.maximum(1 - s[0], s[0]) + tiny)
        assert np.all(np.abs(ld(u_neg.grad) + s[1:]) <= tol[1:] * s[1:] + 16 * eps * s[0] + tiny)


@pytest.mark.parametrize("profile", PROFILES)
def test_trs_bound_matches_enumeration(profile):
    for rng in cases(profile, 100, seed=7):
        dtype = pick(rng, DTYPES)
        b, T = int(rng.integers(1, 6)), _num_particles(rng)
        form = pick(rng, ["exact", "authors"])
        logit_z = tensor(pick(rng, [rng.uniform(-8, 8), rng.uniform(-30, 30), np.nan], p=[0.8, 0.15, 0.05]), dtype)
        log_a = -(10.0 ** rng.uniform(-9, 1.5, b))
        log_a[rng.random(b) < 0.15] = -np.inf  # a(x) = 0
        log_a[rng.random(b) < 0.1] = 0.0  # a(x) = 1
        log_a[rng.random(b) < 0.05] = np.nan
        log_a = tensor(log_a, dtype)
        e_shape = () if rng.random() < 0.5 else (b,)
        e = tensor(-(10.0 ** rng.uniform(-6, 1.5, e_shape)), dtype)
        log_pi = tensor(3 * rng.standard_normal(b), dtype)
        elbo, p_last, mean_t, ent = ref_trs(ld(log_pi), ld(log_a), ld(e), ld(logit_z), T, form)
        with np.errstate(invalid="ignore"):
            size = (
                np.abs(ld(log_pi))
                + np.abs(np.where(np.isfinite(ld(log_a)), ld(log_a), 0))
                + (T - 1) * np.abs(ld(e))
                + math.log(T)
                + 1
            )
        what = f"T={T} logit_z={float(logit_z)} form={form}"
        got_p, got_mean, got_ent = trs_posterior_stats(logit_z, log_a, T)
        assert_matches(got_p, p_last, 1, ulps=16, what=f"r(T-1|x) {what}")
        assert_matches(got_mean, mean_t, T, ulps=16, what=f"E_r[t] {what}")
        assert_matches(got_ent, ent, math.log(T) + 1, ulps=16, what=f"H[r] {what}")
        out = trs_lower_bound(log_pi, log_a, e, logit_z, T, form)
        assert out.dtype == out_dtype(dtype) and out.shape == (b,)
        assert_matches(out, elbo, size, ulps=16, what=f"L_TRS {what}")


def ref_lars(log_pi, log_a, z, T: int):
    """``log pi + log[a S + (1-Z)^{T-1}]``, ``S = sum_{t<T-1} (1-Z)^t``, at Z := min(Z, 1);
    NaN for Z < 0. ``S = -expm1(n log1p(-Z)) / Z`` (``n`` at Z = 0) in extended precision."""
    n = T - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(z > 1, LD(1), z)
        z = np.where(z < 0, np.nan, z)
        last = n * np.log1p(-z)
        geo = np.where(z == 0, LD(n), -np.expm1(last) / np.where(z == 0, 1, z))
        if T == 1:  # q_1 = pi, whatever a and Z
            return log_pi + np.zeros_like(log_a), last
        return log_pi + np.logaddexp(log_a + np.log(geo), last), last


@pytest.mark.parametrize("profile", PROFILES)
def test_lars_log_prob_matches_the_reference(profile):
    for rng in cases(profile, 120, seed=8):
        dtype = pick(rng, DTYPES)
        b = int(rng.integers(1, 6))
        T = int(pick(rng, [1, 2, rng.integers(3, 100), 1024, 10**5]))
        tiny_exp = 300 if dtype == torch.float64 else 45
        z = pick(
            rng,
            [
                0.0,
                10 ** -rng.uniform(0, tiny_exp),
                rng.uniform(0, 1),
                1.0,
                1 + rng.uniform(0, 5),
                -rng.uniform(0, 1),
                np.nan,
            ],
            p=[0.1, 0.3, 0.3, 0.1, 0.1, 0.05, 0.05],
        )
        z = tensor(z if rng.random() < 0.7 else np.full(b, z), dtype)
        log_a = -(10.0 ** rng.uniform(-9, 2.5, b))
        log_a[rng.random(b) < 0.1] = -np.inf
        log_a[rng.random(b) < 0.1] = 0.0
        log_a = tensor(log_a, dtype)
        log_pi = tensor(3 * rng.standard_normal(b), dtype)
        ref, last = ref_lars(ld(log_pi), ld(log_a), ld(z), T)
        with np.errstate(invalid="ignore"):
            size = (
                np.abs(ld(log_pi))
                + np.abs(np.where(np.isfinite(ld(log_a)), ld(log_a), 0))
                + np.abs(np.where(np.isfinite(last), last, 0))
                + math.log(T)
                + 1
            )
        out = lars_log_prob(log_pi, log_a, z, T)
        assert out.dtype == out_dtype(dtype) and out.shape == (b,)
        assert_matches(out, ref, size, what=f"lars_log_prob T={T} Z={ld(z).ravel()[:1]}")


@pytest.mark.parametrize("profile", PROFILES)
def test_first_accepted_is_the_first_true_or_the_last(profile):
    for rng in cases(profile, 50, seed=9):
        T, n = int(rng.integers(1, 50)), int(rng.integers(1, 20))
        accept = rng.random((T, n)) < pick(rng, [0.0, 0.05, 0.5, 1.0])
        expected = [next((t for t in range(T) if accept[t, j]), T - 1) for j in range(n)]
        assert first_accepted(torch.from_numpy(accept)).tolist() == expected


# -- smc -------------------------------------------------------------------------------------------


def ref_normalized(lw: np.ndarray):
    """Normalised log-weights (uniform for all -inf columns) and the ESS of ``[K, B]``."""
    k = lw.shape[0]
    m, rest = ref_lse_parts(lw, 0, keepdims=True)
    dead = rest == -np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        normalized = np.where(dead, -np.log(LD(k)), (lw - m) - rest)
        w = np.exp(np.where(np.isnan(lw) | (lw == np.inf), np.nan, lw - np.where(dead, 0, m + rest)))
        ess = np.where(dead[0], 0, np.sum(w, 0) ** 2 / np.sum(w**2, 0))
    return normalized, ess


@pytest.mark.parametrize("profile", PROFILES)
def test_normalized_weights_and_ess_match_the_reference(profile):
    for rng in cases(profile, 100, seed=10):
        dtype = pick(rng, DTYPES)
        k, b = _num_particles(rng), int(rng.integers(1, 6))
        lw = tensor(sprinkle(rng, energies(rng, (k, b))), dtype)
        normalized, ess = ref_normalized(ld(lw))
        scale = np.abs(np.where(np.isfinite(normalized), normalized, 0)) + math.log(k) + 1
        assert_matches(normalized_log_weights(lw), normalized, scale, what=f"normalized K={k}")
        assert_matches(
            effective_sample_size(lw), ess, np.abs(np.nan_to_num(ess)) * (math.log(k) + 1), what=f"ESS K={k}"
        )


@pytest.mark.parametrize("profile", PROFILES)
def test_smc_with_state_free_weights_matches_the_recursion(profile):
    """With log α_t independent of the particles, every scheme gives the same weights: log Ẑ,
    the increments, ESS_t and the resampling decisions follow a plain recursion on the weights,
    and the final state is the composition of the ancestors."""
    for rng in cases(profile, 80, seed=11):
        dtype = pick(rng, (torch.float32, torch.float64))
        k, b, t_len = _num_particles(rng), int(rng.integers(1, 5)), int(rng.integers(1, 7))
        scheme = pick(rng, ["multinomial", "stratified", "systematic", "never"])
        threshold = float(pick(rng, [0.0, rng.uniform(0.05, 0.95), 1.0]))
        log_alpha = np.stack([energies(rng, (k, b)) for _ in range(t_len)])
        if rng.random() < 0.4:
            log_alpha[rng.integers(t_len), :, rng.integers(b)] = -np.inf  # a dead sequence
        if rng.random() < 0.2:
            log_alpha[rng.integers(t_len), rng.integers(k), rng.integers(b)] = np.nan
        if rng.random() < 0.4:
            log_alpha[log_alpha.shape[0] - 1, rng.integers(k), :] = -np.inf  # one particle dies
        la = tensor(log_alpha, dtype)

        # the recursion, in extended precision (decisions: resample iff ESS < threshold K)
        log_w, log_z = np.full((k, b), -np.log(LD(k))), np.zeros(b, dtype=LD)
        incs, esss, decisions = [], [], []
        for t in range(t_len):
            shift, _ = ref_lse_parts(ld(la[t]), 0)  # W̄_t ∝ W̄_{t-1} α_t / max α_t
            unnorm = log_w + (ld(la[t]) - shift)
            inc = shift + ref_lse(unnorm, 0)
            log_z = log_z + inc
            log_w, _ = ref_normalized(unnorm)
            _, ess = ref_normalized(log_w)  # the ESS of W̄_t (uniform for a dead sequence)
            do = np.zeros(b, dtype=bool)
            if t < t_len - 1 and scheme != "never":
                with np.errstate(invalid="ignore"):
                    do = np.ones(b, dtype=bool) if threshold >= 1 else ess < threshold * k
                log_w = np.where(do, -np.log(LD(k)), log_w)
            incs.append(inc), esss.append(ess), decisions.append(do)
        with np.errstate(invalid="ignore"):
            margin = np.abs(np.stack(esss)[:-1] - threshold * k)
        if 0 < threshold < 1 and np.nanmin(margin, initial=np.inf) < 1e-3 * k:
            continue  # a decision within rounding of the threshold: either is right

        def step(t, state, la=la):
            return state, la[t]

        ids = torch.arange(k).unsqueeze(1).expand(k, b)
        res = smc(step, t_len, ids, resampling=scheme, ess_threshold=threshold)
        what = f"{scheme} threshold={threshold} K={k} T={t_len}"
        incs = np.stack(incs)
        scale = np.abs(np.where(np.isfinite(incs), incs, 0)) + math.log(k) + 1
        assert_matches(res.log_increments, incs, scale, what=f"increments {what}")
        assert_matches(res.log_marginal, log_z, scale.sum(0), what=f"log Z {what}")
        assert_matches(
            res.ess, np.stack(esss), np.abs(np.nan_to_num(np.stack(esss))) * (math.log(k) + 1), what=f"ESS {what}"
        )
        assert res.resampled.tolist() == np.stack(decisions).tolist(), what
        expected_state = torch.arange(k).unsqueeze(1).expand(k, b)
        for anc in res.ancestors:
            expected_state = torch.gather(expected_state, 0, anc)
        assert torch.equal(res.state, expected_state), what


# -- densities -------------------------------------------------------------------------------------


def ref_normal_log_prob(x, loc, scale):
    """``sum_d log N(x_d; loc_d, scale_d)`` over the last axis, extended precision."""
    z = (x - loc) / scale
    return -0.5 * np.sum(z**2 + np.log(2 * np.pi, dtype=LD), -1) - np.sum(np.log(scale), -1)


class Tiny(nn.Module):
    """A tiny energy / acceptance logit ``f(x, c) = offset + w . tanh(W x + V c + b)`` that is NaN
    where ``x_0 > nan_above``."""

    def __init__(self, rng: np.random.Generator, dim: int, ctx_dim: int, offset: float, nan_above: float) -> None:
        super().__init__()
        hidden = 3
        self.W = nn.Parameter(torch.from_numpy(rng.normal(0, 1, (dim, hidden))))
        self.V = nn.Parameter(torch.from_numpy(rng.normal(0, 1, (ctx_dim, hidden))))
        self.b = nn.Parameter(torch.from_numpy(rng.normal(0, 1, hidden)))
        self.w = nn.Parameter(torch.from_numpy(rng.normal(0, 3, hidden)))
        self.offset, self.nan_above = offset, nan_above

    def forward(self, x, context=None):
        h = x @ self.W + self.b
        if context is not None:
            h = h + context @ self.V
        out = self.offset + torch.tanh(h) @ self.w
        return torch.where(x[..., 0] > self.nan_above, torch.full_like(out, math.nan), out)


class Recording:
    """Keeps every batch of proposal samples it hands out (``drawn``), for the reference."""

    def rsample(self, n, context=None):
        out = super().rsample(n, context)
        self.drawn.append(out.detach())
        return out


class RecordingNormal(Recording, Normal):
    pass


class RecordingConditionalNormal(Recording, ConditionalNormal):
    pass


def _proposal(rng: np.random.Generator, dim: int, ctx_dim: int, conditional: bool, dtype: torch.dtype):
    """A recording proposal and its reference log-density ``(x [*S, B, d], c [B, C]) -> [*S, B]``."""
    if conditional:
        net = nn.Linear(ctx_dim, 2 * dim).to(torch.float64)
        proposal = RecordingConditionalNormal(net, dim, min_scale=1e-3).to(dtype)

        def ref_log_prob(x, c):
            out = c @ ld(net.weight).T + ld(net.bias)
            loc, raw = out[..., :dim], out[..., dim:]
            return ref_normal_log_prob(x, loc, np.maximum(softplus_ld(raw), LD(1e-3)))
    else:
        loc, scale = rng.normal(0, 1, dim), np.exp(rng.uniform(-1, 1, dim))
        proposal = RecordingNormal(
            dim, loc=torch.from_numpy(loc), scale=torch.from_numpy(scale), learnable=bool(rng.random() < 0.5)
        ).to(dtype)

        def ref_log_prob(x, c):
            return ref_normal_log_prob(x, ld(proposal.loc), ld(proposal.scale))

    proposal.drawn = []
    return proposal, ref_log_prob


def _density_case(rng: np.random.Generator):
    dtype = pick(rng, (torch.float32, torch.float64))
    dim, b, ctx_dim = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 3))
    context_mode = pick(rng, ["none", "energy", "both"])  # who sees a context
    offset = pick(rng, [0.0, 30.0, -30.0] + ([1e4, -1e4] if dtype == torch.float64 else []))
    nan_above = pick(rng, [np.inf, np.inf, 2.0])  # NaN energies for some proposal samples
    x = tensor(2 * rng.standard_normal((b, dim)), dtype)
    context = tensor(rng.standard_normal((b, ctx_dim)), dtype) if context_mode != "none" else None
    proposal, ref_log_pi = _proposal(rng, dim, ctx_dim, context_mode == "both", dtype)
    net = Tiny(rng, dim, ctx_dim, offset, nan_above).to(dtype)
    data_mean = tensor(rng.normal(0, 0.5, dim), dtype)
    return dtype, x, context, proposal, ref_log_pi, net, data_mean


def _net_ref(net: Tiny, z: torch.Tensor, data_mean: torch.Tensor, context) -> np.ndarray:
    """The test network's outputs at ``z - data_mean`` (the inputs of the bound, not under test)."""
    with torch.no_grad():
        return ld(net(z - data_mean, context))


@pytest.mark.parametrize("profile", PROFILES)
def test_normal_log_prob_matches_the_formula(profile):
    for rng in cases(profile, 40, seed=12):
        dtype = pick(rng, (torch.float32, torch.float64))
        dim, b = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        loc, scale = rng.normal(0, 3, dim), np.exp(rng.uniform(-5, 5, dim))
        learnable = bool(rng.random() < 0.5)
        normal = Normal(dim, loc=torch.from_numpy(loc), scale=torch.from_numpy(scale), learnable=learnable).to(dtype)
        x = tensor(loc + scale * rng.standard_normal((b, dim)) * pick(rng, [1.0, 1e3, 1e15]), dtype)
        ref = ref_normal_log_prob(ld(x), ld(normal.loc), ld(normal.scale))
        z2 = np.sum(((ld(x) - ld(normal.loc)) / ld(normal.scale)) ** 2, -1)
        size = z2 + np.sum(np.abs(np.log(ld(normal.scale)))) + 2 * dim
        assert_matches(normal.log_prob(x), ref, size, what="Normal.log_prob")
        num_samples = int(rng.integers(1, 5))
        assert_matches(normal.log_prob_lower_bound(x, num_samples), ref, size, what="exact for every num_samples")
        bad = x.clone()
        bad[rng.integers(b), rng.integers(dim)] = pick(rng, [math.nan, math.inf, -math.inf])
        with pytest.raises(ValueError, match="non-finite"):
            normal.log_prob_lower_bound(bad)


@pytest.mark.parametrize("profile", PROFILES)
def test_snis_density_matches_the_bound_on_its_own_draws(profile):
    """log_prob_replicas, log_prob_lower_bound (chunks of at most ``eval_chunk_size`` replicas, one
    after another) and the ESS diagnostic against the SNIS formula on the proposal samples the
    density drew: each call's K-1 negatives come as one ``[K-1, m, ...]`` block (``[K-1, m, 1]``
    shared, ``[K-1, m, B]`` per example or with a context)."""
    for rng in cases(profile, 50, seed=13):
        dtype, x, context, proposal, ref_log_pi, net, data_mean = _density_case(rng)
        b = x.shape[0]
        k = int(pick(rng, [1, 2, rng.integers(3, 20), 1024], p=[0.15, 0.2, 0.5, 0.15]))
        shared, chunk = bool(rng.random() < 0.5), int(rng.integers(1, 4))
        snis = SNIS(
            proposal, net, num_proposals=k, share_proposal_samples=shared, data_mean=data_mean, eval_chunk_size=chunk
        ).to(dtype)
        data_mean = snis.data_mean  # as stored (the density keeps it in its own precision)
        log_pi = ref_log_pi(ld(x), None if context is None else ld(context))
        u_x = _net_ref(net, x, data_mean, context)
        what = f"SNIS K={k} shared={shared} context={context is not None}"

        def negatives(
            sizes: list[int], k=k, net=net, data_mean=data_mean, context=context, proposal=proposal
        ) -> np.ndarray:
            """Energies ``[K-1, m, 1 or B]`` of the draws of calls with ``sizes`` replicas each."""
            if k == 1:
                return np.zeros((0, sum(sizes), 1), dtype=LD)
            blocks = [_net_ref(net, d, data_mean, context).reshape(k - 1, n, -1) for d, n in zip(proposal.drawn, sizes)]
            return np.concatenate(blocks, 1)

        with torch.no_grad():
            m = int(rng.integers(1, 4))
            proposal.drawn.clear()
            got = snis.log_prob_replicas(x, m, context)
            assert got.shape == (m, b)
            ref, size = ref_snis(log_pi, u_x, negatives([m]))
            assert_matches(got, ref, size, what=f"{what} replicas")

            num_samples = int(rng.integers(1, 7))
            proposal.drawn.clear()
            got = snis.log_prob_lower_bound(x, num_samples, context)
            ref, size = ref_snis(
                log_pi, u_x, negatives([min(chunk, num_samples - i) for i in range(0, num_samples, chunk)])
            )
            assert_matches(
                got,
                ref_lse(ref, 0) - np.log(LD(num_samples)),
                size.max(0) + math.log(num_samples),
                what=f"{what} log_prob_lower_bound S={num_samples}",
            )

            proposal.drawn.clear()
            _, diag = snis.bound_and_diagnostics(x, context)
            u = np.concatenate([u_x[None], np.broadcast_to(negatives([1])[:, 0], (k - 1, b))])
            _, ess = ref_normalized(u)
            assert_matches(diag["ess"], ess, np.abs(np.nan_to_num(ess)) * (math.log(k) + 1), what=f"{what} ESS")


@pytest.mark.parametrize("profile", PROFILES)
def test_trs_density_matches_the_bound_on_its_own_draws(profile):
    """log_prob_replicas against enumeration over t on the T proposal samples the density drew
    (one ``[T, m, ...]`` block, shared across the batch without a context)."""
    for rng in cases(profile, 50, seed=14):
        dtype, x, context, proposal, ref_log_pi, net, data_mean = _density_case(rng)
        b = x.shape[0]
        T = int(pick(rng, [1, 2, rng.integers(3, 20), 1024], p=[0.15, 0.2, 0.5, 0.15]))
        form = pick(rng, ["exact", "authors"])
        trs = TRS(proposal, net, T=T, bound=form, data_mean=data_mean).to(dtype)
        with torch.no_grad():
            trs.logit_z.fill_(float(rng.uniform(-6, 6)))
            m = int(rng.integers(1, 4))
            got = trs.log_prob_replicas(x, m, context)
        assert got.shape == (m, b)
        c = None if context is None else ld(context)
        log_pi = ref_log_pi(ld(x), c)
        data_mean = trs.data_mean  # as stored (the density keeps it in its own precision)
        f_x = _net_ref(net, x, data_mean, context)
        log_a = -softplus_ld(-f_x)
        f_neg = _net_ref(net, proposal.drawn[0], data_mean, context).reshape(T, m, -1)
        e = np.mean(-softplus_ld(f_neg), 0)  # [m, 1 or B]: mean log(1 - a(x')) over the T draws
        ref = np.stack([ref_trs(log_pi, log_a, e[r], ld(trs.logit_z), T, form)[0] for r in range(m)])
        with np.errstate(invalid="ignore"):
            size = np.abs(log_pi) + np.abs(np.nan_to_num(log_a)) + (T - 1) * np.abs(np.nan_to_num(e)) + math.log(T) + 1
        assert_matches(got, ref, size, ulps=32, what=f"TRS replicas T={T} form={form} context={context is not None}")


# -- the scale convention of every density --------------------------------------------------------


def _raw_values(rng: np.random.Generator, min_scale: float, n: int) -> np.ndarray:
    """Pre-softplus values around the floor (softplus(r) in [min/10, 10 min]) and far from it."""
    near = np.log(np.expm1(min_scale * np.exp(rng.uniform(-math.log(10), math.log(10), n))))
    far = rng.uniform(-40.0, 8.0, n)
    return np.concatenate([near, far])


def _expected_scale(raw: np.ndarray, min_scale: float) -> np.ndarray:
    return np.maximum(softplus_ld(raw), LD(min_scale)).astype(np.float64)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_learned_scale_is_softplus_then_floor(profile):
    """sigma = max(softplus(raw), min_scale) for Normal, ConditionalNormal, LinearGaussianModel."""
    for rng in cases(profile, 8, seed=1):
        min_scale = float(10 ** rng.uniform(-6, -1))
        raw = torch.from_numpy(_raw_values(rng, min_scale, 8))
        expected = torch.from_numpy(_expected_scale(raw.numpy(), min_scale))

        normal = Normal(raw.numel(), learnable=True, min_scale=min_scale).double()
        with torch.no_grad():
            normal.raw_scale.copy_(raw)
        torch.testing.assert_close(normal.scale, expected, rtol=1e-14, atol=0)

        lg = LinearGaussianModel(
            raw.numel(), 1, min_scale=min_scale, weight=torch.zeros(raw.numel(), 1, dtype=torch.float64)
        )
        with torch.no_grad():
            lg.raw_noise_scale.copy_(raw)
        torch.testing.assert_close(lg.noise_scale, expected, rtol=1e-14, atol=0)

        # a network that passes its context through: context = [mean, raw]
        cond = ConditionalNormal(nn.Identity(), raw.numel(), min_scale=min_scale)
        context = torch.cat([torch.zeros_like(raw), raw]).unsqueeze(0)
        loc, scale = cond.params(context)
        torch.testing.assert_close(scale[0], expected, rtol=1e-14, atol=0)


def test_vrnn_proposal_scale_has_the_floor_too():
    # the proposal is a residual on the prior's pre-softplus scale: driving it to -1e3 gives the
    # floor min_scale (before: sigma_p e^{-1e3} = 0 and a NaN/inf weight)
    model = VRNN(obs_dim=1, latent_dim=2, hidden_size=4, feature_size=3, min_scale=1e-3).double()
    last = model.proposal_net.net[-1]
    with torch.no_grad():
        last.bias[2:].fill_(-1e3)
    x = torch.randn(3, 4, 1, dtype=torch.float64)
    log_z = model.log_marginal_bound(x, 5)
    assert torch.isfinite(log_z).all()
