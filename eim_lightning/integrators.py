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

:func:`leapfrog_reverse_vjp` is the reverse-mode derivative of :func:`leapfrog_reverse`, written
out for closed-form training steps (HIS's): from the adjoints of ``(x_0, rho_0)`` it walks the
recorded steps backwards, each ``rho <- rho + (eps/2) g`` giving ``gbar += (eps/2) rhobar`` and
``epsbar += g rhobar / 2``, each ``x <- x - eps rho`` giving ``rhobar -= eps xbar`` and
``epsbar -= rho xbar``, each ``rho <- rho / alpha`` giving ``alphabar -= rhobar rho / alpha^2``
and ``rhobar <- rhobar / alpha``, and each gradient evaluation ``g = grad E(x)`` handing its
complete adjoint ``gbar`` to the caller's vector-Jacobian product (``xbar += H gbar``; the
potential's own parameters are the caller's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["initial_scaling", "leapfrog_forward", "leapfrog_reverse", "leapfrog_reverse_vjp", "LeapfrogTape"]

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
    half_step = 0.5 * step_size
    for alpha in alphas.unbind(0):
        rho = torch.addcmul(rho, half_step, grad, value=-1)
        x = torch.addcmul(x, step_size, rho)
        grad = grad_potential(x)
        rho = torch.addcmul(rho, half_step, grad, value=-1)
        rho = alpha * rho
    return x, rho


@dataclass
class LeapfrogTape:
    """What :func:`leapfrog_reverse` records for :func:`leapfrog_reverse_vjp`: per step, in
    evaluation order, ``(rho_in, rho_mid, grad_before, grad_after)`` (the momentum before the
    ``1/alpha`` scaling, the momentum of the position update, and the potential's gradient
    before and after it), and the final momentum before the ``alpha_0`` scaling."""

    steps: list[tuple[Tensor, Tensor, Tensor, Tensor]] = field(default_factory=list)
    rho_end: Tensor | None = None


def leapfrog_reverse(
    x: Tensor,
    rho: Tensor,
    grad_potential: GradFn,
    step_size: Tensor,
    alphas: Tensor,
    tape: LeapfrogTape | None = None,
) -> tuple[Tensor, Tensor]:
    """Invert :func:`leapfrog_forward`: from ``(x_T, rho_T)`` back to ``(x_0, rho_0)``; records
    into ``tape`` when one is given."""
    if alphas.numel() > 0:
        grad = grad_potential(x)
        half_step = 0.5 * step_size
        for alpha in reversed(alphas.unbind(0)):
            rho_in = rho
            rho = torch.addcmul(rho / alpha, half_step, grad)
            x = torch.addcmul(x, step_size, rho, value=-1)
            grad_before, grad = grad, grad_potential(x)
            if tape is not None:
                tape.steps.append((rho_in, rho, grad_before, grad))
            rho = torch.addcmul(rho, half_step, grad)
    if tape is not None:
        tape.rho_end = rho
    return x, rho / initial_scaling(alphas)


def leapfrog_reverse_vjp(
    tape: LeapfrogTape,
    x_bar: Tensor,
    rho_bar: Tensor,
    grad_vjp: Callable[[int, Tensor], Tensor],
    step_size: Tensor,
    alphas: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reverse mode of :func:`leapfrog_reverse` (module doc). ``x_bar``, ``rho_bar``: adjoints of
    its outputs ``(x_0, rho_0)``; ``grad_vjp(k, gbar)``: ``d(gbar . grad E(x_k))/dx_k`` of its
    ``k``-th gradient evaluation (``k = 0..T``, in evaluation order; the caller accumulates the
    potential's parameter gradients there). Returns the adjoints of ``x_T``, ``rho_T``,
    ``step_size`` and ``alphas``."""

    scaling = initial_scaling(alphas)
    # rho_0 = rho_end / alpha_0 = rho_end prod_t alpha_t
    alphas_bar = (rho_bar * tape.rho_end).sum() / scaling / alphas
    rho_bar = rho_bar / scaling
    half_step = 0.5 * step_size
    step_terms = torch.zeros_like(rho_bar)  # summed over the leading dimensions at the end
    alpha_terms = []  # rhobar rho_in of each step: the i-th appended belongs to alphas[i]
    g_bar = torch.zeros_like(rho_bar)
    for k in reversed(range(len(tape.steps))):
        rho_in, rho_mid, grad_before, grad_after = tape.steps[k]
        g_bar = torch.addcmul(g_bar, half_step, rho_bar)  # rho_out = rho_mid + (eps/2) grad_after
        step_terms.addcmul_(grad_after, rho_bar, value=0.5)
        x_bar = x_bar + grad_vjp(k + 1, g_bar)  # grad_after = grad E(x_out): its adjoint is complete
        rho_bar = torch.addcmul(rho_bar, step_size, x_bar, value=-1)  # x_out = x_in - eps rho_mid
        step_terms.addcmul_(rho_mid, x_bar, value=-1)
        g_bar = half_step * rho_bar  # rho_mid = rho_in / alpha + (eps/2) grad_before
        step_terms.addcmul_(grad_before, rho_bar, value=0.5)
        alpha_terms.append(rho_bar * rho_in)
        rho_bar = rho_bar / alphas[len(tape.steps) - 1 - k]  # step k divided by alphas[T - 1 - k]
    if tape.steps:
        x_bar = x_bar + grad_vjp(0, g_bar)
        alphas_bar = alphas_bar - torch.stack(alpha_terms).flatten(1).sum(1) / alphas.square()
    return x_bar, rho_bar, step_terms.reshape(-1, step_terms.shape[-1]).sum(0), alphas_bar
