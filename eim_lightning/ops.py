"""Layer 1: numerically safe log-space primitives (pure torch, no state).

Every function here is deterministic and differentiable, and handles the special values
without host syncs (no branching on tensor values):

* ``logsumexp`` of an all ``-inf`` slice (or an empty one) is ``-inf``, never NaN, with gradient 0;
* a NaN anywhere in a slice makes its result NaN: never a finite number (a NaN energy must
  not turn into a finite, flattering bound); ``+inf`` gives ``+inf``;
* ``logsumexp_parts`` splits ``logsumexp(x) = shift + rest`` so that callers can form
  differences such as ``u - logsumexp(u)`` before the huge ``shift`` absorbs the small ``rest``;
* ``log_mean_exp(x) = logsumexp(x) - log n``;
* ``log1mexp(a) = log(1 - exp(a))`` for ``a <= 0`` (Maechler 2012), stable at both ends;
* ``log_sigmoid(x) = log(sigmoid(x))`` from the ``sigmoid`` and ``log`` kernels where torch's
  ``logsigmoid`` kernel is the slower one (CPUs where torch dispatches to AVX-512, or to no
  vector instructions, and on other devices), torch's ``logsigmoid`` where it is faster (AVX2);
* ``chunked_log_mean_exp`` combines ``n`` independent replicas of a per-example
  log-estimate, IWAE style, streaming over chunks with a running log-sum-exp so that peak
  memory depends on the chunk size only.

Low-precision inputs (float16/bfloat16, e.g. under ``torch.autocast``) are promoted to
float32 before any reduction: bounds are always accumulated in at least float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "as_float32_or_wider",
    "safe_max",
    "logsumexp",
    "logsumexp_parts",
    "log_mean_exp",
    "log1mexp",
    "log_sigmoid",
    "chunked_log_mean_exp",
]


def as_float32_or_wider(x: Tensor) -> Tensor:
    """Promote float16/bfloat16 to float32; leave float32/float64 alone."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def safe_max(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """The detached maximum along ``dim``, 0 where it is not finite (NaN, ``±inf``): a shift
    that brings log-weights near 0 before they are exponentiated or added to small numbers."""
    return torch.nan_to_num(x.detach().amax(dim=dim, keepdim=keepdim), nan=0.0, posinf=0.0, neginf=0.0)


def logsumexp_parts(x: Tensor, dim: int = 0, keepdim: bool = False) -> tuple[Tensor, Tensor]:
    """``logsumexp(x) = shift + rest`` along ``dim``, with ``shift`` the detached slice maximum
    (0 where that is not finite, and for empty slices) and ``rest = log sum exp(x - shift)``,
    which lies in ``[0, log n]`` for finite slices.

    ``rest`` is ``-inf`` for all ``-inf`` or empty slices (gradient 0, not NaN), NaN for slices
    containing a NaN and ``+inf`` for slices containing ``+inf`` (and no NaN). Subtracting
    other numbers from ``shift`` before adding ``rest`` keeps a huge ``shift`` from absorbing
    ``rest``: ``(u - shift) - rest`` depends on the differences of the inputs only.
    """
    x = as_float32_or_wider(x)
    if x.shape[dim] == 0:
        shape = list(x.shape)
        if keepdim:
            shape[dim] = 1
        else:
            del shape[dim]
        return x.new_zeros(shape), x.new_full(shape, -math.inf)
    m = safe_max(x, dim, keepdim=True)
    s = torch.exp(x - m).sum(dim=dim, keepdim=True)
    if torch.is_grad_enabled() and x.requires_grad:
        # all -inf slices (s = 0): value -inf, gradient 0 (instead of 0 * inf = NaN). A NaN
        # gives s = NaN, which is not 0, so it reaches the output.
        dead = s == 0
        rest = torch.where(dead, torch.full_like(s, -math.inf), torch.log(torch.where(dead, torch.ones_like(s), s)))
    else:  # no gradient: log 0 = -inf is already the value
        rest = torch.log(s)
    return (m, rest) if keepdim else (m.squeeze(dim), rest.squeeze(dim))


def logsumexp(x: Tensor, dim: int = 0, keepdim: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` along ``dim``; ``-inf`` (not NaN) for all ``-inf`` or empty slices,
    NaN for slices containing a NaN."""
    shift, rest = logsumexp_parts(x, dim, keepdim)
    return shift + rest


def log_mean_exp(x: Tensor, dim: int = 0, keepdim: bool = False) -> Tensor:
    """``log(mean(exp(x)))`` along ``dim``, with the special values of :func:`logsumexp`."""
    n = x.shape[dim]
    if n == 0:
        raise ValueError("log_mean_exp over an empty dimension is undefined")
    return logsumexp(x, dim=dim, keepdim=keepdim) - math.log(n)


def log1mexp(a: Tensor) -> Tensor:
    """``log(1 - exp(a))`` for ``a <= 0``, accurate for ``a`` near 0 and very negative ``a``.

    ``log1mexp(0) = -inf``; ``log1mexp(-inf) = 0``.
    """
    a = as_float32_or_wider(a)
    cut = -math.log(2.0)
    # Evaluate both branches on safe arguments so that neither produces NaN gradients.
    a_hi = torch.where(a > cut, a, torch.full_like(a, cut))
    a_lo = torch.where(a > cut, torch.full_like(a, cut), a)
    return torch.where(a > cut, torch.log(-torch.expm1(a_hi)), torch.log1p(-torch.exp(a_lo)))


class _LogSigmoid(torch.autograd.Function):
    """``log sigmoid`` with its derivative written as ``sigmoid(-x)``: twice differentiable in float32.

    Left to autograd, ``log(sigmoid(x))`` differentiates as ``sigmoid'(x) / sigmoid(x)``, whose own
    derivative divides by ``sigmoid(x)^2``: beyond float32's range for ``x < -44``, so a second
    derivative (HIS's leapfrog differentiates the Bernoulli likelihood's input gradient) turned
    into ``inf * 0 = NaN`` there (a Hamiltonian VAE on static MNIST diverged this way at step
    12,347). Written as ``g * sigmoid(-x)``, the backward's own derivative is
    ``-g sigmoid(x) sigmoid(-x)``: bounded."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.where(x < -80, x, torch.log(torch.sigmoid(x.clamp_min(-85))))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(-x)


#: whether :func:`log_sigmoid` on a CPU tensor is torch's ``logsigmoid``: where torch dispatches its
#: CPU kernels to AVX2, whose ``logsigmoid`` is vectorised
TORCH_LOGSIGMOID_ON_CPU = torch.backends.cpu.get_cpu_capability() == "AVX2"


def log_sigmoid(x: Tensor) -> Tensor:
    """``log sigmoid(x)`` elementwise, with a gradient and second derivative finite everywhere.

    The composite (:class:`_LogSigmoid`) is ``log(sigmoid(x))`` for ``x >= -80`` and ``x`` below.
    Above -80 ``sigmoid`` neither underflows (float32 or wider) nor loses relative precision,
    so the absolute error is a few ``eps``; below, ``log sigmoid(x) = x - log(1 + e^x)`` is ``x``
    to within ``e^-80``. The gradient is ``sigmoid(-x) = 1 - sigmoid(x)`` and the second derivative
    ``-sigmoid(x) sigmoid(-x)``, both finite everywhere in float32.

    Which one runs is a matter of speed alone: both meet the same accuracy tests (a few ``eps``
    against ``scipy.special.log_expit``; exact first and second derivatives). On a CPU where torch
    dispatches to AVX2 (``torch.backends.cpu.get_cpu_capability()``, :data:`TORCH_LOGSIGMOID_ON_CPU`)
    torch's vectorised ``logsigmoid`` kernel is used: there it took about 0.8 of the composite's
    time forward and 0.6 forward+backward, at a VAE's Bernoulli logits (128 x 784, one thread, an
    AVX2 EPYC; ``bench/activation_speed.py``). Where torch dispatches to AVX-512 its kernel was
    7-10x slower than the composite (an AVX-512 EPYC), and where it uses no vector instructions
    (``ATEN_CPU_CAPABILITY=default``) about 2x slower, so there and on other devices it is the
    composite. float16/bfloat16 inputs are computed in float32.
    """
    x = as_float32_or_wider(x)
    if TORCH_LOGSIGMOID_ON_CPU and x.device.type == "cpu":
        return torch.nn.functional.logsigmoid(x)
    return _LogSigmoid.apply(x)


def chunked_log_mean_exp(replicas: Callable[[int], Tensor], num_samples: int, chunk_size: int) -> Tensor:
    """``log (1/n) sum_s exp(l_s)`` over ``n = num_samples`` replicas, streamed in chunks.

    ``replicas(m)`` must return ``m`` independent replicas ``[m, B]`` of a per-example
    log-estimate. Chunks of at most ``chunk_size`` replicas are drawn one after another and
    folded into a running log-sum-exp, so peak memory is that of one chunk. With
    ``num_samples <= chunk_size`` this is exactly ``log_mean_exp(replicas(n), 0)``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    running: Tensor | None = None
    done = 0
    while done < num_samples:
        m = min(chunk_size, num_samples - done)
        part = logsumexp(replicas(m), dim=0)
        running = part if running is None else logsumexp(torch.stack([running, part]), dim=0)
        done += m
    assert running is not None
    return running - math.log(num_samples)
