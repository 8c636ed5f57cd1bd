r"""Layer 1: the tempered leapfrog integrator of Hamiltonian importance sampling (ALGORITHMS.md 2.3).

Forward map (x_0, rho_0) -> (x_T, rho_T) with potential E, per-dimension step size eps and
tempering factors alpha_1..alpha_T::

    rho <- alpha_0 rho,              alpha_0 = 1 / prod_{t=1}^T alpha_t
    for t = 1..T:
        rho <- rho - (eps/2) grad E(x)
        x   <- x + eps rho
        rho <- rho - (eps/2) grad E(x)
        rho <- alpha_t rho

Every leapfrog step is volume preserving and the scalings multiply volume by
``prod_{t=0}^T alpha_t^D = 1``, so the whole map has unit Jacobian determinant.
:func:`leapfrog_reverse` is its exact inverse (up to floating point). ``T = 0`` is the
identity. ``grad_potential`` is supplied by the caller (it owns create_graph and inference
mode handling), so these functions hold no state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["initial_scaling", "leapfrog_forward", "leapfrog_reverse"]

GradFn = Callable[[Tensor], Tensor]


def initial_scaling(alphas: Tensor) -> Tensor:
    """``alpha_0 = 1 / prod_t alpha_t`` (computed in log space); 1 for ``T = 0``."""
    return torch.exp(-torch.log(alphas).sum())


def leapfrog_forward(
    x: Tensor, rho: Tensor, grad_potential: GradFn, step_size: Tensor, alphas: Tensor
) -> tuple[Tensor, Tensor]:
    """Run the tempered leapfrog forward from ``(x_0, rho_0)`` (rho_0 *before* alpha_0)."""
    rho = rho * initial_scaling(alphas)
    if alphas.numel() == 0:
        return x, rho
    grad = grad_potential(x)  # reused across steps: T + 1 gradient evaluations in all
    for alpha in alphas.unbind(0):
        rho = rho - 0.5 * step_size * grad
        x = x + step_size * rho
        grad = grad_potential(x)
        rho = rho - 0.5 * step_size * grad
        rho = alpha * rho
    return x, rho


def leapfrog_reverse(
    x: Tensor, rho: Tensor, grad_potential: GradFn, step_size: Tensor, alphas: Tensor
) -> tuple[Tensor, Tensor]:
    """Invert :func:`leapfrog_forward`: from ``(x_T, rho_T)`` back to ``(x_0, rho_0)``."""
    if alphas.numel() > 0:
        grad = grad_potential(x)
        for alpha in reversed(alphas.unbind(0)):
            rho = rho / alpha
            rho = rho + 0.5 * step_size * grad
            x = x - step_size * rho
            grad = grad_potential(x)
            rho = rho + 0.5 * step_size * grad
    return x, rho / initial_scaling(alphas)
