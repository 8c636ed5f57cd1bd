"""Layer 2: the density contract shared by proposals, EIMs and latent-variable models.

Every density is an ``nn.Module`` with::

    density.sample(n, context=None)                    # [n, *event_shape] (or [n, B, *event_shape])
    density.rsample(n, context=None)                   # reparameterised, where possible
    density.log_prob_lower_bound(x, num_samples=1)     # [B]
    density.log_prob(x)                                # only where exact
    density.event_shape
    density.rsample_particles(n, context=None)         # as a variational family q (ALGORITHMS.md 4)

Subclasses implement :meth:`Density.log_prob_replicas`, ``m`` independent replicas ``[m, B]``
of a one-sample log-estimate ``l`` with ``E[exp l] <= q(x)``, so that ``l`` and the
log-mean-exp of replicas are lower bounds on ``log q(x)`` in expectation (Jensen), or set
``exact_log_prob = True`` when ``log_prob`` is exact. The exponential is unbiased,
``E[exp l] = q(x)``, for SNIS, HIS and importance-weighted latent-variable models with such
priors, but not for TRS: ``L_TRS`` is an ELBO over the number of rejections t (not tight unless
r(t|x) is the true posterior) and weights the average of ``log(1 - a)`` over T proposal
samples by ``E_r[t] <= T - 1 < T``, so by Jensen (twice) ``E[exp L_TRS(x)] <= q_T(x)``, in
general strictly. (LARS returns an estimate, neither.) :meth:`log_prob_lower_bound` combines
``num_samples`` replicas IWAE-style with a streamed log-mean-exp, ``eval_chunk_size`` replicas
at a time, so the memory of the replicas' computation is that of one chunk: without autograd
each chunk is freed before the next; with autograd each chunk's graph is dropped and
recomputed, on the same random numbers, in the backward pass (gradient checkpointing), so only
the ``[num_samples, B]`` log-weights themselves are kept (4 bytes each in float32).

A density that serves as a latent-variable model's prior answers one hook,
:meth:`Density.log_prob_for_elbo`; the model never needs to know which prior it holds.

``context`` (optional, ``[B, ...]``) is passed to every network of a conditional density;
samples then have shape ``[n, B, *event_shape]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus
from torch.utils.checkpoint import checkpoint

from ..nn import DERIVATIVES, MLP
from ..ops import chunked_log_mean_exp

__all__ = [
    "Density",
    "Particles",
    "evaluate_net",
    "check_positive_int",
    "has_trainable_parameters",
    "closed_form_applies",
    "positive_scale",
    "values_prechecked",
    "check_finite",
    "standard_normal_log_prob",
    "normal_log_prob",
]

_values_prechecked = False


@contextmanager
def values_prechecked() -> Iterator[None]:
    """Inside, :meth:`Density.check_input` checks types and shapes but not values (nor does any
    other per-call value check, :meth:`Density.checks_values`): the caller has checked the values
    already (the step engine checks a whole block of steps' batches with one host sync, or the
    training data set once at the start of fit)."""
    global _values_prechecked
    outer, _values_prechecked = _values_prechecked, True
    try:
        yield
    finally:
        _values_prechecked = outer


def values_are_prechecked() -> bool:
    """Whether the code runs inside :func:`values_prechecked`."""
    return _values_prechecked


def per_call_value_checks() -> bool:
    """Whether a call checks its input's values now: not inside :func:`values_prechecked` (the
    caller checked them) nor while ``torch.compile`` traces (a check would break the graph)."""
    return not (_values_prechecked or torch.compiler.is_compiling())


def check_finite(x: Tensor, owner: str) -> None:
    """Raise a clear error, naming ``owner``, where ``x`` holds NaN or Inf (one host sync)."""
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{owner} got {bad} non-finite (NaN/Inf) values in its input of shape {list(x.shape)}")


class Particles(NamedTuple):
    """Weighted reparameterised samples of a variational family (see :meth:`Density.rsample_particles`):
    ``z [M, n, (B), *event]``, ``log_s`` and ``log_q_upper [M, n, (B)]``."""

    z: Tensor
    log_s: Tensor
    log_q_upper: Tensor


#: Default number of particles (or proposal samples) a sampler or Z estimate holds at once.
#: Measured on a 2-core CPU (2-D model, 20 hidden units; 50-d LARS prior, 100 hidden units):
#: 2^13-2^15 run alike, while 2^16 ran 1.3-4x slower, because its ~5 MB temporaries exceed
#: glibc's heap trim threshold and are returned to the kernel and faulted in again on every chunk.
SAMPLE_CHUNK_SIZE = 2**15


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Raise a clear ``ValueError`` unless ``value`` is an ``int >= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def positive_scale(raw: Tensor, min_scale: float) -> Tensor:
    """``max(softplus(raw), min_scale)``: the one convention for a learned scale (standard
    deviation) in every density, as the authors' ``tf.maximum(softplus(.), 1e-5)``. Its
    gradient is 0 where the floor is active."""
    return softplus(raw).clamp_min(min_scale)


def evaluate_net(
    net: nn.Module,
    x: Tensor,
    event_ndim: int,
    context: Tensor | None = None,
    data_mean: Tensor | None = None,
) -> Tensor:
    """Apply a scalar network to ``x [*batch, *event]`` and return ``[*batch]``.

    The input is centred by ``data_mean`` (the authors' convention U(x) = MLP(x - mean)); a
    context ``[B, ...]`` is broadcast over any leading sample dimensions of ``x`` and passed as
    ``net(x, context)``. The network may return ``[*batch]`` or ``[*batch, 1]``.
    """
    batch_shape = x.shape[: x.dim() - event_ndim]
    h = x - data_mean if data_mean is not None else x
    if context is None:
        out = net(h)
    else:
        ctx = context.expand(*batch_shape[: len(batch_shape) - 1], *context.shape)
        out = net(h, ctx)
    if out.shape == (*batch_shape, 1):
        out = out.squeeze(-1)
    if out.shape != batch_shape:
        raise ValueError(
            f"{type(net).__name__} must map inputs {list(x.shape)} to {list(batch_shape)} or "
            f"{[*batch_shape, 1]}, got {list(out.shape)}"
        )
    return out


def _first_tensor(module: nn.Module, kind: str) -> Tensor | None:
    """The first tensor of ``module``'s own ``kind`` (``"_parameters"``/``"_buffers"``), then its
    children's, depth first: the order of ``parameters()``/``buffers()``."""
    for t in getattr(module, kind).values():
        if t is not None:
            return t
    for child in module._modules.values():
        if child is not None and (t := _first_tensor(child, kind)) is not None:
            return t
    return None


def has_trainable_parameters(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` requires a gradient (without the generators of ``parameters()``)."""
    if any(p is not None and p.requires_grad for p in module._parameters.values()):
        return True
    return any(child is not None and has_trainable_parameters(child) for child in module._modules.values())


def closed_form_applies(density: Density, net: nn.Module) -> bool:
    """Whether a density's closed-form training step can carry its loss through ``net``: an
    unconditional :class:`~eim_lightning.nn.MLP` with a known activation derivative, a vector
    event and a proposal without trainable parameters (what SNIS's and LARS's closed forms share)."""
    return (
        isinstance(net, MLP)
        and net.context_dim == 0
        and net.activation in DERIVATIVES
        and density.event_ndim == 1
        and not has_trainable_parameters(density.proposal)
    )


class Density(nn.Module):
    """Base class of every layer-2 density (see the module docstring for the contract)."""

    #: check shapes, dtypes and finiteness of inputs (costs one host sync per call)
    validate_args: bool = True
    #: the shortest run (in optimiser steps) for which ``torch.compile`` of the training bound was
    #: measured to pay for its compilation time: the step engine compiles runs at least this long
    #: by default; None: never by default
    compile_min_steps: int | None = None

    def __init__(self, event_shape: tuple[int, ...] | torch.Size, eval_chunk_size: int = 64) -> None:
        super().__init__()
        self._event_shape = torch.Size(event_shape)
        self.eval_chunk_size = check_positive_int("eval_chunk_size", eval_chunk_size)

    @property
    def event_shape(self) -> torch.Size:
        return self._event_shape

    @property
    def event_ndim(self) -> int:
        return len(self._event_shape)

    def _reference_tensor(self) -> Tensor | None:
        """The first parameter (else buffer) in ``parameters()`` order, found without building
        the module walk's generators (this runs at every training step)."""
        first = _first_tensor(self, "_parameters")
        return first if first is not None else _first_tensor(self, "_buffers")

    def check_input(self, x: Tensor, context: Tensor | None = None) -> None:
        """Raise a clear error for inputs that are not ``[B, *event_shape]`` finite floats."""
        if not self.validate_args:
            return
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} expected a floating-point tensor, got dtype {x.dtype}")
        ref = self._reference_tensor()
        if ref is not None and ref.is_floating_point() and x.dtype != ref.dtype:
            raise TypeError(
                f"{name} has {ref.dtype} parameters but got input of dtype {x.dtype}; "
                f"convert the data (x.to({ref.dtype})) or the model (model.to({x.dtype}))"
            )
        if x.dim() != 1 + self.event_ndim or x.shape[1:] != self._event_shape:
            raise ValueError(
                f"{name} expected input of shape [B, {', '.join(map(str, self._event_shape))}] "
                f"(B any), got {list(x.shape)}"
            )
        if context is not None and (not isinstance(context, Tensor) or context.shape[0] != x.shape[0]):
            raise ValueError(
                f"{name}: context must be a tensor with the batch size of x ({x.shape[0]}) as its first "
                f"dimension, got {getattr(context, 'shape', type(context).__name__)}"
            )
        if self.checks_values():
            self.check_values(x)

    def checks_values(self) -> bool:
        """Whether a call checks its input's values now: ``validate_args`` is on and the values
        were not checked before the call (:func:`values_prechecked`, a compiled call)."""
        return self.validate_args and per_call_value_checks()

    def check_values(self, x: Tensor) -> None:
        """Raise a clear error for values of ``x`` (any shape) this density cannot score: NaN/Inf
        here; a subclass adds its own (a Bernoulli likelihood: binary pixels). An EIM's
        ``proposal`` models the same ``x``, so its checks apply too. The checks are elementwise:
        checking a tensor that holds every value a data set can yield checks every batch of it."""
        check_finite(x, type(self).__name__)
        proposal = getattr(self, "proposal", None)
        if isinstance(proposal, Density) and proposal.validate_args and proposal.event_shape == self.event_shape:
            proposal.check_values(x)

    # -- the contract -------------------------------------------------------------------------

    #: the log-density is exact: :meth:`log_prob_replicas` and :meth:`log_prob_lower_bound` return
    #: ``log_prob(x)`` (``log_prob(x, context)`` when conditional) for every number of samples
    exact_log_prob: bool = False

    def _exact_log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.log_prob(x) if context is None else self.log_prob(x, context)

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        """``[m, B]`` independent one-sample log-estimates ``l`` with ``E[exp l] <= q(x)``."""
        if self.exact_log_prob:
            check_positive_int("num_replicas", num_replicas)
            return self._exact_log_prob(x, context).expand(num_replicas, x.shape[0])
        raise NotImplementedError

    def log_prob_lower_bound(self, x: Tensor, num_samples: int = 1, context: Tensor | None = None) -> Tensor:
        """``log (1/S) sum_s exp(l_s)`` over ``S = num_samples`` replicas: ``[B]``.

        A lower bound on ``log q(x)`` in expectation, tighter as ``S`` grows; streamed in
        chunks of ``eval_chunk_size`` replicas. Under autograd with more than one chunk, each
        chunk is checkpointed (its graph recomputed in the backward pass), so with or without
        gradients memory holds one chunk's computation (plus, with gradients, the ``[S, B]``
        log-weights). ``x`` is checked once (:meth:`check_input`, with every value check of the
        density and its proposal), not again by each replica.
        """
        self.check_input(x, context)
        check_positive_int("num_samples", num_samples)
        if self.exact_log_prob:
            return self._exact_log_prob(x, context)
        replicas = partial(self.log_prob_replicas, x, context=context)
        if torch.is_grad_enabled() and num_samples > self.eval_chunk_size:
            # x is a positional input so that checkpoint restores the random state of its device
            replicas = partial(checkpoint, self.log_prob_replicas, x, context=context, use_reentrant=False)
        with values_prechecked():
            return chunked_log_mean_exp(replicas, num_samples, self.eval_chunk_size)

    def bound_and_diagnostics(
        self, x: Tensor, context: Tensor | None = None, diagnostics: bool = True
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The one-sample training bound ``[B]`` and a dict of diagnostic tensors (empty, and
        not computed, with ``diagnostics=False``: training asks for them only on logging steps)."""
        return self.log_prob_lower_bound(x, 1, context), {}

    def log_prob_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One replica of the bound at an unconditional batch ``x [B, *event]`` (``[B]``, no graph)
        and its gradient with respect to ``x``, by autograd (an exact density overrides this in
        closed form); for closed-form training steps, e.g. HIS's ``d log pi(x_0) / dx_0``."""
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            value = self.log_prob_replicas(x_in, 1)[0]
            (score,) = torch.autograd.grad(value.sum(), x_in)
        return value.detach(), score

    def offers_closed_form_training(self) -> bool:
        """Whether :meth:`closed_form_training_bound` covers this density's present parts (its
        networks, proposal and settings); False by default."""
        return False

    @torch.no_grad()
    def closed_form_training_bound(
        self, x: Tensor, diagnostics: bool = True
    ) -> tuple[Tensor, dict[str, Tensor]] | None:
        """:meth:`bound_and_diagnostics` of an unconditional batch without autograd: the bound
        ``[B]`` (no graph) and diagnostics, with the gradient of the loss ``-bound.mean()`` with
        respect to every parameter already added to its ``.grad``, in closed form. None (the
        default) where a density has no closed form for its present parts
        (:meth:`offers_closed_form_training`) or its present state; the caller then
        differentiates :meth:`bound_and_diagnostics` with autograd. For small networks on the CPU
        this is several times faster than the autograd engine, whose cost per operation
        dominates there (the step engine uses it on the CPU; docs/BENCHMARKS.md).

        By default: the input checks, then :meth:`closed_form_gradients`, whose gradients are
        added here, and :meth:`closed_form_finish` of what it saved."""
        if not self.offers_closed_form_training():
            return None
        self.check_input(x)
        bound, pairs, saved = self.closed_form_gradients(x)
        self.add_gradients(pairs)
        return bound, self.closed_form_finish(saved, diagnostics)

    def closed_form_gradients(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]], tuple] | None:
        """The pure part of :meth:`closed_form_training_bound`, for a density that
        :meth:`offers_closed_form_training` (the caller checks that first): the bound
        ``[B]``, ``(parameter, gradient)`` pairs and a tuple of tensors saved for
        :meth:`closed_form_finish`, from tensor operations alone: no input checks, host
        synchronisations or changes of state, random draws from the default generator. That
        makes it traceable: the step engine runs it through ``torch.jit.trace``
        (:mod:`eim_lightning.modules.traced`). None by default (no closed form)."""
        return None

    def closed_form_finish(self, saved: tuple, diagnostics: bool) -> dict[str, Tensor]:
        """After a closed-form step, from what :meth:`closed_form_gradients` saved: keep the state
        the density carries to the next step (LARS: its pending Z) and return the step's
        training diagnostics (an empty dict when ``diagnostics`` is False; none by default)."""
        return {}

    @staticmethod
    def add_gradients(pairs) -> None:
        """``p.grad += g`` for each ``(p, g)`` (``p.grad = g`` where it is None, made contiguous:
        torch 2.14's fused Adam silently misreads a transposed gradient), as backward
        accumulates; parameters that do not require a gradient are left alone."""
        for p, g in pairs:
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = g.contiguous()
            else:
                p.grad.add_(g)

    def log_prob_for_elbo(self, z: Tensor, log_q: Tensor, objective: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """This density as the prior of a latent-variable model: ``[m, B]`` one-sample estimates
        of ``log p(z)`` at posterior samples ``z [m, B, *event]``, and diagnostics to report.

        ``log_q [m, B]`` is ``log q(z | x)`` of those samples and ``objective`` says whether the
        value enters the training objective (the model's ``bound_and_diagnostics``) rather
        than an evaluation; priors whose estimate uses either override this (LARS). The
        default draws fresh auxiliaries for each replica, shared across the batch as the EIMs
        share their proposal samples.
        """
        return torch.stack([self.log_prob_replicas(zi, 1)[0] for zi in z.unbind(0)]), {}

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """``n`` exact samples, without gradient."""
        with torch.no_grad():
            return self.rsample(n, context)

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no reparameterised sampler")

    # -- as a variational family (ALGORITHMS.md 4) ----------------------------------------------

    def rsample_and_log_prob_upper_bound(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterised samples ``z [n, (B), *event]`` and ``[n, (B)]`` upper bounds (in
        expectation over the sampler's auxiliaries) on ``log q(z)``; exact densities return
        ``log q(z)`` itself. Densities that can serve as a variational family implement it."""
        raise NotImplementedError(f"{type(self).__name__} offers no upper bound on its log-density")

    def rsample_particles(self, n: int, context: Tensor | None = None) -> Particles:
        """What an ELBO with this density as ``q`` needs: ``M`` weighted particles per sample,
        ``Particles(z [M, n, (B), *event], log_s [M, n, (B)], log_q_upper [M, n, (B)])`` with
        ``sum_m s_m = 1``, such that for any ``f``

            E_q[f(z)] = E[ sum_m s_m f(z_m) ]   and   log q(z_m) <= log_q_upper_m (in expectation).

        The default has ``M = 1`` (``s = 1``), from :meth:`rsample_and_log_prob_upper_bound`;
        SNIS returns all K particles with their selection probabilities (the selected index
        summed analytically)."""
        z, upper = self.rsample_and_log_prob_upper_bound(n, context)
        return Particles(z.unsqueeze(0), torch.zeros_like(upper).unsqueeze(0), upper.unsqueeze(0))

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        """The log of the density image the paper plots (``[B]``), up to a constant."""
        raise NotImplementedError

    # -- hooks the training modules call ------------------------------------------------------

    def after_optimizer_step(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Run by the training step after every optimiser step, for state that follows the
        weights (LARS's moving-average Z). ``reduce`` averages a tensor over processes. Default:
        nothing."""

    def before_evaluation(self, stage: str, reduce: Callable[[Tensor], Tensor]) -> None:
        """Run at the start of validation (``stage="val"``) and test (``"test"``), e.g. to
        re-estimate a normalising constant (LARS's Z), averaged with ``reduce`` so that every
        process holds the same value. Default: nothing."""

    # -- helpers for subclasses ---------------------------------------------------------------

    def register_data_mean(self, data_mean: Tensor | None) -> None:
        """The ``data_mean`` buffer (default 0) that networks' inputs are centred on; the
        Lightning modules copy a datamodule's ``data_mean`` into it."""
        mean = (
            torch.zeros(self._event_shape)
            if data_mean is None
            else torch.as_tensor(data_mean, dtype=torch.get_default_dtype())
        )
        self.register_buffer("data_mean", mean.expand(self._event_shape).clone())

    def _sample_shape(self, n: int, context: Tensor | None) -> tuple[int, ...]:
        check_positive_int("n", n)
        return (n,) if context is None else (n, context.shape[0])


LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """``log N(x; 0, I)`` summed over the last dimension."""
    return -0.5 * (x.square() + LOG_2PI).sum(-1)


def normal_log_prob(eps: Tensor, scale: Tensor) -> Tensor:
    """``log N(loc + scale * eps; loc, scale)`` summed over the last dimension."""
    return standard_normal_log_prob(eps) - torch.log(scale).sum(-1)
