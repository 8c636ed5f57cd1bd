"""Shared oracle helpers for the statistical tests."""

import numpy as np
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
