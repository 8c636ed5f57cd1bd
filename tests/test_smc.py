"""Layer-1 SMC / FIVO math (eim_lightning.smc) and its Kalman oracle (eim_lightning.kalman).

Oracles: the joint Gaussian N(0, Σ) of x_{1:T} (Σ built here from the covariance recursion,
independently of the filter), a literal per-sequence, per-particle Python reference of the SMC
recursion on shared randomness, IWAE on the same particles, exact offspring-count properties of
the resampling schemes, and Monte Carlo checks with tolerances derived from the sample size.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from eim_lightning.kalman import (
    emission_log_prob,
    kalman_filter,
    kalman_log_likelihood,
    lgssm_covariance,
    lgssm_smc_step,
    normal_log_prob,
    optimal_proposal,
    predictive_log_prob,
    sample_lgssm,
    transition_log_prob,
)
from eim_lightning.ops import log_mean_exp
from eim_lightning.smc import (
    effective_sample_size,
    gather_particles,
    multinomial_resample,
    normalized_log_weights,
    smc,
    smc_log_marginal,
    stratified_resample,
    systematic_resample,
)

F64 = torch.float64
SCHEMES = ["multinomial", "stratified", "systematic"]


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Many small ops: intra-op threads only add barriers (40x slower on 2 shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def joint_covariance(num_steps: int, a: float, q: float, r: float) -> torch.Tensor:
    """Σ of x_{1:T} from Var z_t = a² Var z_{t-1} + q and Cov(z_t, z_s) = a^{t-s} Var z_s."""
    var = []
    v = 0.0
    for _ in range(num_steps):
        v = a * a * v + q
        var.append(v)
    cov = torch.zeros(num_steps, num_steps, dtype=F64)
    for t in range(num_steps):
        for s in range(t + 1):
            cov[t, s] = cov[s, t] = a ** (t - s) * var[s]
    return cov + r * torch.eye(num_steps, dtype=F64)


def mvn_log_prob(x: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    mvn = torch.distributions.MultivariateNormal(torch.zeros(cov.shape[0], dtype=F64), covariance_matrix=cov)
    return mvn.log_prob(x)


# --------------------------------------------------------------------------------------------
# Kalman oracle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 2, 7])
@pytest.mark.parametrize("a,q,r", [(0.9, 1.0, 0.5), (-1.3, 0.4, 2.0), (0.0, 2.0, 0.3)])
def test_kalman_log_likelihood_equals_joint_gaussian(num_steps, a, q, r):
    x = torch.randn(6, num_steps, dtype=F64) * 2
    cov = joint_covariance(num_steps, a, q, r)
    torch.testing.assert_close(lgssm_covariance(num_steps, a, q, r)[1], cov, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kalman_log_likelihood(x, a, q, r), mvn_log_prob(x, cov), rtol=1e-10, atol=1e-10)


def test_kalman_gradients_match_joint_gaussian():
    x = torch.randn(4, 5, dtype=F64)
    params = torch.tensor([0.7, 0.8, 0.6], dtype=F64, requires_grad=True)
    g_kf = torch.autograd.grad(kalman_log_likelihood(x, *params).sum(), params)[0]
    a, q, r = params
    idx = torch.arange(5, dtype=F64)
    lag = idx[:, None] - idx[None, :]
    mat = torch.where(lag >= 0, a ** lag.clamp(min=0), torch.zeros_like(lag))
    cov = q * mat @ mat.T + r * torch.eye(5, dtype=F64)
    g_mvn = torch.autograd.grad(mvn_log_prob(x, cov).sum(), params)[0]
    torch.testing.assert_close(g_kf, g_mvn, rtol=1e-9, atol=1e-10)


def test_kalman_accepts_per_sequence_parameters():
    x = torch.randn(3, 5, dtype=F64)
    a, q, r = torch.tensor([0.5, -0.9, 0.0], dtype=F64), torch.tensor([1.0, 0.3, 2.0], dtype=F64), 0.7
    batched = kalman_log_likelihood(x, a, q, r)
    single = torch.cat([kalman_log_likelihood(x[i : i + 1], float(a[i]), float(q[i]), r) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12)


def test_kalman_filtered_moments_equal_gaussian_conditioning():
    a, q, r, t_len = 0.8, 1.0, 0.5, 4
    x = torch.randn(3, t_len, dtype=F64)
    res = kalman_filter(x, a, q, r)
    cov_z, cov_x = lgssm_covariance(t_len, a, q, r)
    for t in range(t_len):
        # E[z_t | x_{1:t}] = Cov(z_t, x_{1:t}) Cov(x_{1:t})^{-1} x_{1:t}; Cov(z_t, x_s) = Cov(z_t, z_s)
        c = cov_z[t, : t + 1]
        sol = torch.linalg.solve(cov_x[: t + 1, : t + 1], x[:, : t + 1].T)
        torch.testing.assert_close(res.filtered_mean[:, t], c @ sol, rtol=1e-10, atol=1e-10)
        var = cov_z[t, t] - c @ torch.linalg.solve(cov_x[: t + 1, : t + 1], c)
        torch.testing.assert_close(res.filtered_var[:, t], var.expand(3), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(res.log_predictive.sum(1), res.log_likelihood)


def test_optimal_proposal_and_predictive_are_the_exact_factorisation():
    # p(z_t | z_{t-1}) p(x_t | z_t) = p(x_t | z_{t-1}) p(z_t | z_{t-1}, x_t), pointwise
    a, q, r = -0.7, 1.3, 0.4
    z_prev, z, x_t = (torch.randn(50, dtype=F64) * 3 for _ in range(3))
    lhs = transition_log_prob(z, z_prev, a, q) + emission_log_prob(x_t, z, r)
    mean, var = optimal_proposal(z_prev, x_t, a, q, r)
    rhs = predictive_log_prob(x_t, z_prev, a, q, r) + normal_log_prob(z, mean, var)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_sample_lgssm_has_the_model_covariance():
    a, q, r, t_len, n = 0.9, 1.0, 0.5, 4, 40000
    gen = torch.Generator().manual_seed(3)
    z, x = sample_lgssm(n, t_len, a, q, r, generator=gen)
    cov_z, cov_x = lgssm_covariance(t_len, a, q, r)
    for sample, cov in ((z, cov_z), (x, cov_x)):
        emp = sample.T @ sample / n  # mean is known to be 0
        se = ((cov.diag()[:, None] * cov.diag()[None, :] + cov**2) / n).sqrt()
        assert ((emp - cov).abs() < 5 * se).all(), (emp, cov)
    # same generator state -> same samples
    z2, _ = sample_lgssm(n, t_len, a, q, r, generator=torch.Generator().manual_seed(3))
    assert torch.equal(z, z2)


def test_kalman_rejects_bad_input():
    with pytest.raises(ValueError, match="positive variance"):
        kalman_log_likelihood(torch.zeros(2, 3, dtype=F64), 0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        kalman_log_likelihood(torch.zeros(3, dtype=F64), 0.5, 1.0, 1.0)


# --------------------------------------------------------------------------------------------
# ESS and resampling functions
# --------------------------------------------------------------------------------------------


def test_effective_sample_size_special_values_and_formula():
    k = 7
    assert torch.allclose(effective_sample_size(torch.zeros(k, 3, dtype=F64)), torch.full((3,), float(k), dtype=F64))
    one_hot = torch.full((k, 2), -math.inf, dtype=F64)
    one_hot[3] = 5.0
    torch.testing.assert_close(effective_sample_size(one_hot), torch.ones(2, dtype=F64))
    dead = torch.full((k, 2), -math.inf)
    assert torch.equal(effective_sample_size(dead), torch.zeros(2))
    lw = torch.randn(k, 5, dtype=F64) * 2
    w = lw.exp()
    direct = w.sum(0) ** 2 / (w**2).sum(0)
    torch.testing.assert_close(effective_sample_size(lw), direct, rtol=1e-12, atol=0)
    for shift in (1e4, -1e4):
        out = effective_sample_size(lw + shift)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, direct, rtol=1e-8, atol=0)
    # at 1e30 the float64 spacing (~1e14) swallows lw: all weights equal, ESS = K, no overflow
    torch.testing.assert_close(effective_sample_size(lw + 1e30), torch.full((5,), float(k), dtype=F64))
    # float32 with huge log weights: no overflow to NaN/inf
    huge = torch.tensor([[3e4], [3e4 - 1.0], [-3e4]], dtype=torch.float32)
    assert torch.isfinite(effective_sample_size(huge)).all()


def test_normalized_log_weights_is_nan_free():
    lw = torch.tensor([[0.0, -math.inf, 1e4], [-math.inf, -math.inf, 1e4 - 1]], requires_grad=True)
    out = normalized_log_weights(lw)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out[:, 1], torch.full((2,), -math.log(2)))  # all -inf -> uniform
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, -math.inf]))
    out[torch.isfinite(out)].sum().backward()
    assert torch.isfinite(lw.grad).all()


def test_nan_and_inf_log_weights_are_never_normalised_to_finite_numbers():
    # before: a NaN (or +inf) column became uniform weights with ESS 0
    lw = torch.tensor([[0.0, math.nan, math.inf, -math.inf], [1.0, 0.0, 0.0, -math.inf]], dtype=F64)
    out = normalized_log_weights(lw)
    torch.testing.assert_close(out[:, 0], torch.tensor([-math.log1p(math.e), 1 - math.log1p(math.e)], dtype=F64))
    assert torch.isnan(out[0, 1:3]).all() and torch.isnan(out[1, 1])  # nothing finite from NaN
    assert torch.equal(out[:, 3], torch.full((2,), -math.log(2), dtype=F64))  # all -inf: uniform
    ess = effective_sample_size(lw)
    assert torch.isnan(ess[1:3]).all() and ess[3] == 0
    torch.testing.assert_close(ess[0], torch.tensor((1 + math.e) ** 2 / (1 + math.e**2), dtype=F64))


@pytest.mark.parametrize("scheme", SCHEMES + ["never"])
def test_a_nan_weight_makes_its_sequence_nan_and_leaves_the_others_alone(scheme):
    t_len, k, b = 5, 4, 3
    _, x = sample_lgssm(b, t_len, 0.9, 1.0, 0.5)
    eps = torch.randn(t_len, k, b, dtype=F64)
    base = lgssm_smc_step(x, 0.9, 1.0, 0.5, k, noise=eps)

    def poisoned(t, z):
        z, la = base(t, z)
        if t == 1:
            la = la.clone()
            la[2, 1] = math.nan
        return z, la

    uniforms = torch.rand((t_len - 1, b) if scheme == "systematic" else (t_len - 1, k, b), dtype=F64)
    kw = dict(resampling=scheme, resampling_uniforms=None if scheme == "never" else uniforms, ess_threshold=1.0)
    ok, res = smc(base, t_len, **kw), smc(poisoned, t_len, **kw)
    assert torch.isnan(res.log_marginal[1]) and torch.isnan(res.log_increments[1, 1])
    assert torch.equal(res.log_marginal[[0, 2]], ok.log_marginal[[0, 2]])


@pytest.mark.parametrize("sort", [False, True])
def test_multinomial_ancestors_follow_the_weights(sort):
    w = torch.tensor([0.1, 0.0, 0.25, 0.4, 0.25, 0.0], dtype=F64)
    n = 200_000
    u = torch.rand(n, 1, dtype=F64)
    if sort:
        u = u.sort(0).values
    anc = multinomial_resample(w.log()[:, None], u)
    assert anc.shape == (n, 1) and anc.dtype == torch.long
    counts = torch.bincount(anc[:, 0], minlength=len(w)).to(F64)
    assert counts[w == 0].sum() == 0  # zero-weight particles (also the trailing one) never drawn
    pos = w > 0
    p = stats.chisquare(counts[pos].numpy(), (n * w[pos]).numpy()).pvalue
    assert p > 1e-3, (counts, p)
    if sort:
        assert (anc[1:] >= anc[:-1]).all()


def test_multinomial_chi_square_has_power():
    # the same check rejects a slightly wrong distribution: it is not vacuous
    w = torch.tensor([0.1, 0.25, 0.4, 0.25], dtype=F64)
    wrong = torch.tensor([0.11, 0.24, 0.4, 0.25], dtype=F64)
    n = 200_000
    counts = torch.bincount(multinomial_resample(wrong.log()[:, None], torch.rand(n, 1, dtype=F64))[:, 0]).to(F64)
    assert stats.chisquare(counts.numpy(), (n * w).numpy()).pvalue < 1e-3


@pytest.mark.parametrize("scheme", SCHEMES)
def test_positions_at_the_ends_of_unit_interval_never_pick_zero_weights(scheme):
    # leading and trailing zero weights; the float64 CDF of ten weights 0.1 ends at 1 - 2e-16,
    # so without renormalising the CDF a position just below 1 would select the trailing zero
    lw = torch.log(torch.tensor([0.0] + [0.1] * 10 + [0.0], dtype=F64))[:, None].expand(12, 2).contiguous()
    below_one = torch.nextafter(torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64))
    if scheme == "systematic":
        anc = systematic_resample(lw, torch.stack([torch.tensor(0.0, dtype=F64), below_one]))
    else:
        u = torch.zeros(12, 2, dtype=F64)
        u[:, 1] = below_one
        anc = (multinomial_resample if scheme == "multinomial" else stratified_resample)(lw, u)
    assert ((anc >= 1) & (anc <= 10)).all(), anc.T
    if scheme == "multinomial":
        assert (anc[:, 0] == 1).all() and (anc[:, 1] == 10).all()


def _random_log_weights(k: int, b: int) -> torch.Tensor:
    lw = torch.randn(k, b, dtype=F64) * 2
    lw[0, : b // 4] = -math.inf  # some zero weights
    lw[-1, b // 4 : b // 2] = -math.inf  # trailing zero weights
    lw[2, b // 2 : b // 2 + 10] += 50  # near one-hot columns
    lw[:, -1] = 0.0  # exactly uniform: K W = 1 for every particle
    lw[:, -2] = torch.tensor([0.0, math.log(3.0)] + [-math.inf] * (k - 2))  # K W = K/4, 3K/4
    return lw


@pytest.mark.parametrize("k", [1, 4, 7])
def test_systematic_offspring_counts_are_floor_or_ceil(k):
    b = 400
    lw = _random_log_weights(k, b) if k > 1 else torch.zeros(1, b, dtype=F64)
    anc = systematic_resample(lw, torch.rand(b, dtype=F64))
    assert anc.shape == (k, b) and (anc[1:] >= anc[:-1]).all()
    counts = torch.zeros(k, b, dtype=F64).scatter_add_(0, anc, torch.ones(k, b, dtype=F64))
    expected = k * normalized_log_weights(lw).exp()
    tol = 1e-9
    assert ((counts >= torch.floor(expected - tol)) & (counts <= torch.ceil(expected + tol))).all()
    # unbiased: averaging over a fine grid of u recovers K W exactly up to the grid step
    m = 2000
    grid = (torch.arange(m, dtype=F64) + 0.5) / m
    lw_rep = lw[:, :20].repeat_interleave(m, dim=1)
    anc = systematic_resample(lw_rep, grid.repeat(20))
    counts = torch.zeros_like(lw_rep).scatter_add_(0, anc, torch.ones_like(lw_rep))
    mean_counts = counts.view(k, 20, m).mean(-1)
    torch.testing.assert_close(mean_counts, expected[:, :20], atol=2.0 / m, rtol=0)


def test_stratified_offspring_counts_are_within_one_of_k_w():
    k, b = 6, 400
    lw = _random_log_weights(k, b)
    anc = stratified_resample(lw, torch.rand(k, b, dtype=F64))
    assert (anc[1:] >= anc[:-1]).all()
    counts = torch.zeros(k, b, dtype=F64).scatter_add_(0, anc, torch.ones(k, b, dtype=F64))
    expected = k * normalized_log_weights(lw).exp()
    assert ((counts - expected).abs() < 2).all()
    assert counts[expected == 0].sum() == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_resampling_is_nan_free_for_degenerate_weights(scheme):
    k = 5
    lw = torch.tensor(
        [
            [-math.inf, 1e30, 3e4, 0.0],
            [-math.inf, 0.0, 3e4 + 2, -1e30],
            [-math.inf, -1e30, -3e4, 0.0],
            [-math.inf, 0.0, 0.0, 0.0],
            [-math.inf, 0.0, 3e4, 0.0],
        ],
        dtype=torch.float32,
    )
    b = lw.shape[1]
    if scheme == "systematic":
        anc = systematic_resample(lw, torch.rand(b))
    elif scheme == "stratified":
        anc = stratified_resample(lw, torch.rand(k, b))
    else:
        anc = multinomial_resample(lw, torch.rand(k, b))
    assert ((anc >= 0) & (anc < k)).all()
    assert (anc[:, 1] == 1 - 1).all()  # 1e30 dominates: every ancestor is particle 0
    assert set(anc[:, 2].tolist()) <= {0, 1, 4}  # the others have relative weight exp(-3e4) = 0
    assert (anc[:, 3] != 1).all()  # weight exp(-1e30) = 0


def test_gather_particles_trees_and_shapes():
    anc = torch.tensor([[2, 0], [2, 1], [0, 1]])
    x = torch.arange(6.0).view(3, 2)
    y = torch.arange(12.0).view(3, 2, 2)
    out = gather_particles({"x": x, "pair": (y, None)}, anc)
    assert torch.equal(out["x"], torch.tensor([[4.0, 1.0], [4.0, 3.0], [0.0, 3.0]]))
    assert torch.equal(out["pair"][0][:, 1], y[anc[:, 1], 1]) and out["pair"][1] is None
    with pytest.raises(ValueError, match=r"\[K, B, \.\.\.\]"):
        gather_particles(torch.zeros(2, 2), anc)


# --------------------------------------------------------------------------------------------
# The SMC recursion
# --------------------------------------------------------------------------------------------


def reference_smc(x, eps, uniforms, scheme, threshold, a, q, r):
    """A literal per-sequence, per-particle transcription of the recursion (Python floats)."""
    t_len, k, b = eps.shape
    out = []
    for j in range(b):
        z = [0.0] * k
        log_w = [-math.log(k)] * k
        log_z, ess_l, res_l, anc_l = 0.0, [], [], []
        for t in range(t_len):
            z = [a * z[i] + math.sqrt(q) * float(eps[t, i, j]) for i in range(k)]
            la = [-0.5 * (math.log(2 * math.pi * r) + (float(x[j, t]) - z[i]) ** 2 / r) for i in range(k)]
            terms = [log_w[i] + la[i] for i in range(k)]
            m = max(terms)
            inc = m + math.log(sum(math.exp(v - m) for v in terms))
            log_z += inc
            w = [math.exp(v - inc) for v in terms]
            log_w = [v - inc for v in terms]
            ess = 1.0 / sum(v * v for v in w)
            ess_l.append(ess)
            if t == t_len - 1:
                res_l.append(False)
                break
            do = threshold >= 1 or ess < threshold * k
            res_l.append(do)
            if not do:
                anc_l.append(list(range(k)))
                continue
            if scheme == "multinomial":
                pos = [float(uniforms[t, i, j]) for i in range(k)]
            elif scheme == "stratified":
                pos = [(i + float(uniforms[t, i, j])) / k for i in range(k)]
            else:
                pos = [(i + float(uniforms[t, j])) / k for i in range(k)]
            cdf, acc = [], 0.0
            for v in w:
                acc += v
                cdf.append(acc)
            anc = [min(i for i in range(k) if cdf[i] / cdf[-1] > u) for u in pos]
            anc_l.append(anc)
            z = [z[i] for i in anc]
            log_w = [-math.log(k)] * k
        out.append((log_z, ess_l, res_l, anc_l))
    return out


@pytest.mark.parametrize("threshold", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_smc_matches_literal_reference(scheme, threshold):
    a, q, r, t_len, k, b = 0.9, 1.0, 0.5, 6, 5, 8
    _, x = sample_lgssm(b, t_len, a, q, r)
    eps = torch.randn(t_len, k, b, dtype=F64)
    shape = (t_len - 1, k, b) if scheme != "systematic" else (t_len - 1, b)
    uniforms = torch.rand(shape, dtype=F64)
    step = lgssm_smc_step(x, a, q, r, k, "bootstrap", noise=eps)
    res = smc(step, t_len, resampling=scheme, ess_threshold=threshold, resampling_uniforms=uniforms)
    ref = reference_smc(x, eps, uniforms, scheme, threshold, a, q, r)
    torch.testing.assert_close(res.log_marginal, torch.tensor([o[0] for o in ref], dtype=F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.ess, torch.tensor([o[1] for o in ref], dtype=F64).T, rtol=1e-10, atol=1e-10)
    assert res.resampled.T.tolist() == [o[2] for o in ref]
    assert res.ancestors.permute(2, 0, 1).tolist() == [o[3] for o in ref]
    assert res.log_increments.sum(0).allclose(res.log_marginal)
    assert not res.resampled[-1].any()
    if threshold < 1:  # the adaptive case must exercise both branches, per sequence
        assert res.resampled.any() and not res.resampled[:-1].all()
    else:
        assert res.resampled[:-1].all()


@pytest.mark.parametrize("how", ["never", "threshold0"])
def test_never_resampling_equals_iwae_on_the_same_particles(how):
    a, q, r, t_len, k, b = 0.9, 1.0, 0.5, 7, 16, 5
    _, x = sample_lgssm(b, t_len, a, q, r)
    eps = torch.randn(t_len, k, b, dtype=F64)
    inner = lgssm_smc_step(x, a, q, r, k, "bootstrap", noise=eps)
    seen = []

    def step(t, z):
        z, la = inner(t, z)
        seen.append(la)
        return z, la

    kw = {"resampling": "never"} if how == "never" else {"resampling": "multinomial", "ess_threshold": 0.0}
    res = smc(step, t_len, **kw)
    iwae = log_mean_exp(torch.stack(seen).sum(0), dim=0)
    torch.testing.assert_close(res.log_marginal, iwae, rtol=1e-12, atol=1e-12)
    assert res.num_resamples.sum() == 0
    # the particles are the unresampled paths: z_T = sum_t a^{T-t} sqrt(q) eps_t
    direct = sum(a ** (t_len - 1 - t) * math.sqrt(q) * eps[t] for t in range(t_len))
    torch.testing.assert_close(res.state, direct)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_particle_gives_the_elbo_for_every_scheme(scheme):
    a, q, r, t_len, b = 0.9, 1.0, 0.5, 5, 4
    _, x = sample_lgssm(b, t_len, a, q, r)
    eps = torch.randn(t_len, 1, b, dtype=F64)
    res = smc(lgssm_smc_step(x, a, q, r, 1, "bootstrap", noise=eps), t_len, resampling=scheme, ess_threshold=1.0)
    elbo = smc(lgssm_smc_step(x, a, q, r, 1, "bootstrap", noise=eps), t_len, resampling="never")
    torch.testing.assert_close(res.log_marginal, elbo.log_marginal, rtol=1e-12, atol=1e-12)
    assert res.resampled[:-1].all()


@pytest.mark.parametrize("scheme", SCHEMES + ["never"])
@pytest.mark.parametrize("a,t_len", [(0.0, 6), (0.9, 1)])
def test_optimal_proposal_is_exact_when_a_is_zero_or_t_is_one(scheme, a, t_len):
    # alpha_t = p(x_t | z_{t-1}) = p(x_t | x_{<t}) for every particle when a = 0 (or t = 1)
    q, r, k, b = 1.2, 0.4, 8, 6
    _, x = sample_lgssm(b, t_len, a, q, r)
    log_z = smc_log_marginal(lgssm_smc_step(x, a, q, r, k, "optimal"), t_len, resampling=scheme, ess_threshold=1.0)
    torch.testing.assert_close(log_z, kalman_log_likelihood(x, a, q, r), rtol=1e-12, atol=1e-12)
    # ... but not in general (the claim is specific): a != 0, T > 1 has variance
    if t_len > 1:
        log_z = smc_log_marginal(lgssm_smc_step(x, 0.9, q, r, k, "optimal"), t_len, resampling=scheme)
        assert not torch.allclose(log_z, kalman_log_likelihood(x, 0.9, q, r), rtol=0, atol=1e-6)


UNBIASED_CASES = [
    ("never", 0.5),
    ("multinomial", 0.5),
    ("multinomial", 1.0),
    ("stratified", 0.5),
    ("systematic", 0.5),
    ("systematic", 1.0),
]


@pytest.mark.parametrize("proposal", ["bootstrap", "optimal"])
@pytest.mark.parametrize("scheme,threshold", UNBIASED_CASES)
def test_smc_estimate_is_unbiased_for_the_kalman_likelihood(proposal, scheme, threshold):
    """mean over R replicas of Ẑ / p(x) is 1 within 4 standard errors, for 2 fixed sequences.

    Power: forgetting W̄ in the increments (log mean α instead of log Σ W̄ α) fails every
    adaptive and never-resampling case here (checked by mutation); the SE bound below keeps the
    check from being vacuous.
    """
    a, q, r, t_len, k, reps = 0.9, 1.0, 1.0, 6, 4, 10_000
    _, x = sample_lgssm(2, t_len, a, q, r, generator=torch.Generator().manual_seed(11))
    log_p = kalman_log_likelihood(x, a, q, r)
    x_rep = x.repeat(reps, 1)  # [R * 2, T], replicas of the two sequences
    res = smc(lgssm_smc_step(x_rep, a, q, r, k, proposal), t_len, resampling=scheme, ess_threshold=threshold)
    ratio = (res.log_marginal - log_p.repeat(reps)).exp().view(reps, 2)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(reps)
    assert (se < 0.05).all(), se
    assert ((mean - 1).abs() < 4 * se).all(), (mean, se)
    if scheme != "never":
        assert res.num_resamples.sum() > 0


def test_bound_is_below_the_likelihood_and_tightens_with_k():
    a, q, r, t_len, reps = 0.9, 1.0, 0.5, 8, 1000
    _, x = sample_lgssm(1, t_len, a, q, r, generator=torch.Generator().manual_seed(5))
    log_p = kalman_log_likelihood(x, a, q, r)[0]
    means, ses = [], []
    ks = [1, 4, 16, 64, 256]
    for k in ks:
        log_z = smc_log_marginal(lgssm_smc_step(x.expand(reps, t_len), a, q, r, k, "bootstrap"), t_len)
        means.append(log_z.mean())
        ses.append(log_z.std() / math.sqrt(reps))
    gaps = [float(log_p - m) for m in means]
    for m, s in zip(means, ses):
        assert m < log_p + 4 * s  # E log Ẑ <= log p
    for i in range(len(ks) - 1):
        assert means[i + 1] > means[i] - 4 * math.hypot(ses[i], ses[i + 1]), gaps
    assert gaps[0] > 1.0 and gaps[-1] < 0.05, gaps  # loose at K = 1, tight at K = 256
    assert gaps[-1] < gaps[0] / 20


# --------------------------------------------------------------------------------------------
# Gradients, NaN-safety, determinism, API
# --------------------------------------------------------------------------------------------


def learned_step(x, params, eps, a=0.9, q=1.0, r=0.5):
    """Proposal N(a z_{t-1} + c + d x_t, exp(2 s)) with params = (c, d, s); pathwise sample."""
    c, d, s = params

    def step(t, z_prev):
        zp = torch.zeros_like(eps[t]) if z_prev is None else z_prev
        mean = a * zp + c + d * x[:, t]
        z = mean + torch.exp(s) * eps[t]
        log_alpha = (
            transition_log_prob(z, zp, a, q)
            + emission_log_prob(x[:, t], z, r)
            - normal_log_prob(z, mean, torch.exp(2 * s))
        )
        return z, log_alpha

    return step


GRAD_CASES = [("never", 0.5), ("multinomial", 0.5), ("systematic", 1.0), ("stratified", 0.8)]


@pytest.mark.parametrize("scheme,threshold", GRAD_CASES)
def test_pathwise_gradient_with_ancestors_held_fixed(scheme, threshold):
    # With the noise and resampling uniforms fixed, log Ẑ is a piecewise-smooth function of the
    # proposal parameters; autograd's gradient is its derivative with ancestors held fixed
    # (the FIVO estimator: no score-function term for the resampling step).
    t_len, k, b = 5, 4, 3
    _, x = sample_lgssm(b, t_len, 0.9, 1.0, 0.5)
    eps = torch.randn(t_len, k, b, dtype=F64)
    shape = (t_len - 1, k, b) if scheme != "systematic" else (t_len - 1, b)
    uniforms = torch.rand(shape, dtype=F64)

    def run(params):
        return smc(
            learned_step(x, params, eps),
            t_len,
            resampling=scheme,
            ess_threshold=threshold,
            resampling_uniforms=uniforms if scheme != "never" else None,
        )

    def f(params):
        return run(params).log_marginal

    params = torch.tensor([0.3, 0.2, -0.4], dtype=F64, requires_grad=True)
    if scheme != "never":  # the gradient really passes through resampled paths
        assert run(params).num_resamples.sum() > 0
    assert torch.autograd.gradcheck(f, (params,), eps=1e-6, atol=1e-6, rtol=1e-5)
    (g,) = torch.autograd.grad(f(params).sum(), params)
    assert torch.isfinite(g).all() and (g.abs() > 1e-6).all()


def test_gradient_flows_in_float32_with_global_rng():
    t_len, k, b = 10, 8, 16
    _, x = sample_lgssm(b, t_len, 0.9, 1.0, 0.5, dtype=torch.float32)
    params = torch.tensor([0.0, 0.1, 0.0], requires_grad=True)
    eps = torch.randn(t_len, k, b)
    res = smc(learned_step(x, params, eps), t_len)
    assert res.log_marginal.dtype == torch.float32 and res.log_marginal.shape == (b,)
    res.log_marginal.mean().backward()
    assert torch.isfinite(params.grad).all() and (params.grad != 0).all()


@pytest.mark.parametrize("scheme", SCHEMES + ["never"])
def test_dead_sequence_is_neg_inf_and_does_not_disturb_the_others(scheme):
    t_len, k, b = 6, 4, 5
    _, x = sample_lgssm(b, t_len, 0.9, 1.0, 0.5)
    eps = torch.randn(t_len, k, b, dtype=F64)
    shape = (t_len - 1, k, b) if scheme != "systematic" else (t_len - 1, b)
    uniforms = torch.rand(shape, dtype=F64) if scheme != "never" else None
    params = torch.tensor([0.3, 0.2, -0.4], dtype=F64, requires_grad=True)
    base = learned_step(x, params, eps)

    def killed(t, z):
        z, la = base(t, z)
        if t == 2:  # every particle of sequence 1 gets weight 0; one particle of sequence 3
            la = la.clone()
            la[:, 1] = -math.inf
            la[0, 3] = -math.inf
        return z, la

    kw = dict(resampling=scheme, resampling_uniforms=uniforms)
    ok = smc(base, t_len, **kw)
    res = smc(killed, t_len, **kw)
    assert res.log_marginal[1] == -math.inf
    assert not torch.isnan(res.log_marginal).any() and not torch.isnan(res.ess).any()
    others = [0, 2, 4]
    torch.testing.assert_close(res.log_marginal[others], ok.log_marginal[others], rtol=0, atol=0)
    assert torch.isfinite(res.log_marginal[3])
    res.log_marginal[torch.isfinite(res.log_marginal)].sum().backward()
    assert torch.isfinite(params.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_huge_log_weights_shift_log_z_exactly(dtype):
    # adding c_t to every particle's log alpha_t adds Σ c_t to log Ẑ and changes no decision
    t_len, k, b = 5, 6, 4
    _, x = sample_lgssm(b, t_len, 0.9, 1.0, 0.3, dtype=dtype)
    eps = torch.randn(t_len, k, b, dtype=dtype)
    uniforms = torch.rand(t_len - 1, k, b, dtype=dtype)
    shifts = [3e4, -3e4, 1e4, 0.0, 2e4]
    step = lgssm_smc_step(x, 0.9, 1.0, 0.3, k, "bootstrap", noise=eps)

    def shifted(t, z):
        z, la = step(t, z)
        return z, la + shifts[t]

    base = smc(step, t_len, resampling_uniforms=uniforms, ess_threshold=0.8)
    big = smc(shifted, t_len, resampling_uniforms=uniforms, ess_threshold=0.8)
    assert torch.isfinite(big.log_marginal).all()
    tol = 1e-10 if dtype == F64 else 1e-2  # float32 spacing at 3e4 is 2e-3
    torch.testing.assert_close(big.log_marginal - sum(shifts), base.log_marginal, rtol=0, atol=tol)
    assert torch.equal(big.resampled, base.resampled) and torch.equal(big.ancestors, base.ancestors)


def test_threshold_semantics_and_diagnostics():
    t_len, k, b = 6, 8, 10
    _, x = sample_lgssm(b, t_len, 0.9, 1.0, 0.1)
    step = lgssm_smc_step(x, 0.9, 1.0, 0.1, k, "bootstrap")
    always = smc(step, t_len, ess_threshold=1.0)
    assert always.resampled[:-1].all() and not always.resampled[-1].any()
    assert torch.equal(always.num_resamples, torch.full((b,), t_len - 1))
    assert always.ess.shape == (t_len, b) and ((always.ess >= 1 - 1e-9) & (always.ess <= k + 1e-9)).all()
    assert always.ancestors.shape == (t_len - 1, k, b) and always.log_weights.shape == (k, b)
    torch.testing.assert_close(always.log_weights.exp().sum(0), torch.ones(b, dtype=F64))
    for kw in ({"ess_threshold": 0.0}, {"resampling": "never", "ess_threshold": 1.0}):
        res = smc(step, t_len, **kw)
        assert res.num_resamples.sum() == 0
        assert torch.equal(res.ancestors, torch.arange(k)[None, :, None].expand(t_len - 1, k, b))
    # adaptive: resample exactly where ESS_t < threshold * K (t < T)
    res = smc(step, t_len, ess_threshold=0.5)
    assert torch.equal(res.resampled[:-1], res.ess[:-1] < 0.5 * k)


def test_determinism_under_seed_and_generator():
    t_len, k, b = 6, 8, 4
    _, x = sample_lgssm(b, t_len, 0.9, 1.0, 0.2)

    def run(seed, gen_seed=None):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(gen_seed) if gen_seed is not None else None
        return smc(lgssm_smc_step(x, 0.9, 1.0, 0.2, k), t_len, ess_threshold=1.0, generator=gen)

    assert torch.equal(run(1).log_marginal, run(1).log_marginal)
    assert not torch.equal(run(1).log_marginal, run(2).log_marginal)
    # the resampling generator is the only source of the ancestors' randomness
    r1, r2 = run(1, gen_seed=7), run(1, gen_seed=8)
    assert torch.equal(run(1, gen_seed=7).ancestors, r1.ancestors)
    assert not torch.equal(r1.ancestors, r2.ancestors)


def test_smc_rejects_bad_arguments():
    x = torch.zeros(2, 3, dtype=F64)
    step = lgssm_smc_step(x, 0.9, 1.0, 1.0, 4)
    with pytest.raises(ValueError, match="resampling must be"):
        smc(step, 3, resampling="residual")
    with pytest.raises(ValueError, match="num_steps"):
        smc(step, 0)
    with pytest.raises(ValueError, match="resampling_uniforms must be"):
        smc(step, 3, resampling="systematic", resampling_uniforms=torch.rand(2, 4, 2))
    with pytest.raises(ValueError, match=r"log_alpha of shape \[K, B\]"):
        smc(lambda t, s: (s, torch.zeros(4)), 3)
    with pytest.raises(ValueError, match="changed shape"):
        smc(lambda t, s: (s, torch.zeros(4 + t, 2)), 3)
    with pytest.raises(ValueError, match=r"u must be \[B\]"):
        systematic_resample(torch.zeros(4, 2), torch.rand(4, 2))
