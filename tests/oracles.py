"""Shared oracle helpers for the statistical tests."""

import math

import numpy as np
import torch
from scipy import stats
from scipy.integrate import cumulative_trapezoid


def chisquare_pvalue(samples: np.ndarray, density: np.ndarray, grid: np.ndarray, bins: int = 40) -> float:
    """Pearson chi-square p-value of 1-D ``samples`` against ``density`` tabulated on ``grid``,
    with ``bins`` bins of equal probability under the density."""
    cdf = cumulative_trapezoid(density, grid, initial=0.0)
    cdf = cdf / cdf[-1]
    inner = np.interp(np.linspace(0.0, 1.0, bins + 1)[1:-1], cdf, grid)
    counts = np.bincount(np.searchsorted(inner, samples), minlength=bins)
    expected = np.diff(np.concatenate([[0.0], np.interp(inner, grid, cdf), [1.0]])) * len(samples)
    return float(stats.chisquare(counts, expected).pvalue)


class ConstantLogit(torch.nn.Module):
    """Acceptance logit with ``a = sigmoid(b) = a0`` everywhere (``[..., D] -> [...]``): then
    ``Z = E_pi[a] = a`` exactly (every Monte Carlo estimate included) and the TRS/LARS density
    ``q_T = pi [a sum_{t<T-1} (1-Z)^t + (1-Z)^{T-1}]`` is ``pi`` itself, for every T."""

    def __init__(self, a0: float = 0.1, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.tensor(math.log(a0 / (1 - a0)), dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b.expand(x.shape[:-1])


def same_draw_replicas(densities, x, num_replicas: int, seed: int, params=None) -> list:
    """Each density's ``log_prob_replicas(x, num_replicas)`` drawn from the same seed: a list of
    values, or of ``(value, gradient of its sum w.r.t. params)`` when ``params`` are given (for
    identities that must hold draw by draw, such as IWAE and the SNIS posterior with U = log w)."""
    results = []
    for density in densities:
        torch.manual_seed(seed)
        if params is None:
            with torch.no_grad():
                results.append(density.log_prob_replicas(x, num_replicas))
        else:
            value = density.log_prob_replicas(x, num_replicas)
            results.append((value, torch.autograd.grad(value.sum(), params)))
    return results
