r"""HIS: the density of Hamiltonian importance sampling (ALGORITHMS.md 2.3).

Sampler: ``x_0 ~ pi``, ``rho_0 ~ N(0, I)``; run T steps of the tempered leapfrog of
:mod:`eim_lightning.integrators` with potential ``E`` (low = probable; the opposite sign of
SNIS's log-weight), per-dimension step size ``eps = softplus(raw)`` (init 0.1) and tempering
``alpha_t = sigmoid(raw_t)`` (init 0.995), scaling ``rho_0`` by ``alpha_0 = 1/prod_t alpha_t``
first; return ``x_T``. The map has unit Jacobian.

Lower bound: sample ``rho_T ~ r(.|x_T)`` (a learned diagonal Gaussian: ``momentum_net(x_T)``
gives the mean and the pre-softplus scale, scale >= 1e-5; ``momentum_net=None`` means
``r = N(0, I)``), run the dynamics backwards exactly to ``(x_0, rho_0)`` and

    l = log pi(x_0) + log N(rho_0; 0, I) - log r(rho_T | x_T),

``rho_0`` being the momentum before the ``alpha_0`` scaling. ``exp(l)`` is unbiased for
``q_HIS(x_T)``; ``T = 0`` gives ``pi`` exactly when ``r = N(0, I)`` (and unbiasedly for any r).
Run forwards from the sampler's own ``(x_0, rho_0)``, the same expression upper-bounds
``log q_HIS(x_T)`` in expectation (:meth:`HIS.rsample_and_log_prob_upper_bound`).

The bound differentiates through grad E (``create_graph=True`` in training). Gradients of E are
computed inside ``torch.inference_mode(False)`` and ``torch.enable_grad()`` on a fresh tensor,
so evaluation works under Lightning's ``inference_mode`` validation and test loops.
Reference: Neal 2005 (annealed/Hamiltonian IS); Lawson et al., NeurIPS 2019.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

from ..integrators import LeapfrogTape, leapfrog_forward, leapfrog_reverse, leapfrog_reverse_vjp
from ..nn import MLP, SECOND_DERIVATIVES
from .base import (
    Density,
    check_positive_int,
    closed_form_applies,
    evaluate_net,
    normal_log_prob,
    positive_scale,
    standard_normal_log_prob,
)
from .normal import inverse_softplus

__all__ = ["HIS"]

MIN_MOMENTUM_SCALE = 1e-5

#: the shortest run HIS's training bound is compiled for by default (:attr:`HIS.compile_min_steps`):
#: as an MNIST VAE's prior its compilation paid for itself after about 5,000 steps (4,300-6,000)
#: (``bench/vae_compile.py``, docs/BENCHMARKS_IMAGES.md)
COMPILE_MIN_STEPS = 5000


class HIS(Density):
    """Hamiltonian importance sampling EIM over vectors ``[D]``.

    Args:
        proposal: density ``pi`` with ``rsample`` (reparameterised) over ``[D]``.
        potential: network ``[..., D] -> [...]`` or ``[..., 1]``, the potential ``E``.
        momentum_net: network ``[..., D] -> [..., 2D]`` (mean, pre-softplus scale of r), or
            ``None`` for ``r = N(0, I)``.
        T: number of leapfrog steps, ``T >= 0``.
        step_size_init: initial ``eps`` (every dimension).
        alpha_init: initial tempering factor ``alpha_t`` (every step), in (0, 1].
    """

    @property
    def compile_min_steps(self) -> int | None:  # type: ignore[override]
        """Compiled from :data:`COMPILE_MIN_STEPS` steps on. Hundreds of small leapfrog operations:
        1.5-3x faster per 2-D step compiled than through autograd in runs of
        ``bench/toy2d_steps.py`` (CPU; 3.53 against 5.27 ms in docs/BENCHMARKS_BREAKDOWN.md); the
        closed form (below) replayed from its trace was faster still there, so the step engine
        compiles HIS automatically only where that is not in use. Only with an MLP potential, whose
        ``grad E`` is in closed form (else None): any other potential's comes from ``autograd.grad``
        with a graph, and torch.compile cannot take its double backward (a jittered-MNIST HIS with a
        rescaled potential failed at its first step)."""
        return COMPILE_MIN_STEPS if isinstance(self.potential, MLP) and self.potential.has_input_gradient else None

    def __init__(
        self,
        proposal: Density,
        potential: nn.Module,
        momentum_net: nn.Module | None = None,
        T: int = 5,
        step_size_init: float = 0.1,
        alpha_init: float = 0.995,
        data_mean: Tensor | None = None,
        eval_chunk_size: int = 64,
    ) -> None:
        super().__init__(proposal.event_shape, eval_chunk_size)
        if self.event_ndim != 1:
            raise ValueError(f"HIS works on flat vectors [D]; the proposal's event shape is {list(self.event_shape)}")
        self.T = check_positive_int("T (leapfrog steps)", T, minimum=0)
        if step_size_init <= 0:
            raise ValueError(f"step_size_init must be > 0, got {step_size_init}")
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"alpha_init must be in (0, 1), got {alpha_init}")
        dim = self.event_shape[0]
        self.proposal = proposal
        self.potential = potential
        self.momentum_net = momentum_net
        self.raw_step_size = nn.Parameter(inverse_softplus(torch.full((dim,), float(step_size_init))))
        alpha_logit = math.log(alpha_init / (1.0 - alpha_init))
        self.raw_alphas = nn.Parameter(torch.full((T,), alpha_logit))
        self.register_data_mean(data_mean)

    @property
    def step_size(self) -> Tensor:
        return softplus(self.raw_step_size)

    @property
    def alphas(self) -> Tensor:
        return torch.sigmoid(self.raw_alphas)

    def energy(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Potential ``E(x)``: ``[*batch]``."""
        return evaluate_net(self.potential, x, 1, context, self.data_mean)

    def _grad_fn(self, context: Tensor | None, create_graph: bool):
        """``x -> grad_x E(x)``, differentiable (create_graph) only when the caller needs it:
        in closed form for an :class:`~eim_lightning.nn.MLP` potential (plain operations,
        differentiated once by the training backward), else by ``autograd.grad``."""
        if isinstance(self.potential, MLP) and self.potential.has_input_gradient:

            def closed_form(x: Tensor) -> Tensor:
                ctx = None if context is None else context.expand(*x.shape[:-2], *context.shape)
                g = self.potential.input_gradient(x - self.data_mean, ctx)
                return g if create_graph else g.detach()

            return closed_form

        def grad(x: Tensor) -> Tensor:
            with torch.inference_mode(False), torch.enable_grad():
                if create_graph and x.requires_grad:
                    x_in = x
                else:
                    x_in = x.detach().clone().requires_grad_(True)
                ctx = context.clone() if context is not None and context.is_inference() else context
                e = self.energy(x_in, ctx).sum()
                (g,) = torch.autograd.grad(e, x_in, create_graph=create_graph)
            return g

        return grad

    def _momentum_log_prob(self, rho: Tensor, x: Tensor, context: Tensor | None) -> Tensor:
        if self.momentum_net is None:
            return standard_normal_log_prob(rho)
        mean, scale = self._momentum_params(x, context)
        return normal_log_prob((rho - mean) / scale, scale)

    def _momentum_params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x - self.data_mean
        out = (
            self.momentum_net(h)
            if context is None
            else self.momentum_net(h, context.expand(*x.shape[:-2], *context.shape))
        )
        dim = self.event_shape[0]
        if out.shape != (*x.shape[:-1], 2 * dim):
            raise ValueError(
                f"momentum_net must map {list(x.shape)} to {[*x.shape[:-1], 2 * dim]}, got {list(out.shape)}"
            )
        mean, raw = out.split(dim, dim=-1)
        return mean, positive_scale(raw, MIN_MOMENTUM_SCALE)

    def _sample_momentum(self, x: Tensor, context: Tensor | None) -> Tensor:
        eps = torch.randn_like(x)
        if self.momentum_net is None:
            return eps
        mean, scale = self._momentum_params(x, context)
        return mean + scale * eps

    def _log_weight(self, x0: Tensor, rho0: Tensor, xT: Tensor, rhoT: Tensor, context: Tensor | None) -> Tensor:
        flat = x0.reshape(-1, *self.event_shape)
        log_pi = self.proposal.log_prob_replicas(flat, 1, self._flat_context(context, x0))[0].reshape(x0.shape[:-1])
        return log_pi + standard_normal_log_prob(rho0) - self._momentum_log_prob(rhoT, xT, context)

    @staticmethod
    def _flat_context(context: Tensor | None, x: Tensor) -> Tensor | None:
        if context is None:
            return None
        return context.expand(*x.shape[:-2], *context.shape).reshape(-1, *context.shape[1:])

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        """``[m, B]`` replicas of ``l`` with fresh ``rho_T ~ r(.|x)``."""
        check_positive_int("num_replicas", num_replicas)
        xT = x.expand(num_replicas, *x.shape)
        rhoT = self._sample_momentum(xT, context)
        grad = self._grad_fn(context, create_graph=torch.is_grad_enabled())
        x0, rho0 = leapfrog_reverse(xT, rhoT, grad, self.step_size, self.alphas)
        return self._log_weight(x0, rho0, xT, rhoT, context)

    def bound_and_diagnostics(self, x: Tensor, context: Tensor | None = None, diagnostics: bool = True):
        """Training bound ``[B]``; diagnostics: mean step size and the tempering product."""
        bound = self.log_prob_lower_bound(x, 1, context)
        return bound, self._diagnostics() if diagnostics else {}

    @torch.no_grad()
    def _diagnostics(self) -> dict[str, Tensor]:
        return {"step_size": self.step_size.mean(), "alpha_product": self.alphas.prod()}

    def offers_closed_form_training(self) -> bool:
        """``T >= 1``, an MLP potential whose activation has a known second derivative, an MLP
        momentum network (or none) and a proposal without parameters."""
        potential, momentum = self.potential, self.momentum_net
        return (
            self.T >= 1
            and closed_form_applies(self, potential)
            and potential.has_input_gradient
            and potential.activation in SECOND_DERIVATIVES
            and (momentum is None or closed_form_applies(self, momentum))
        )

    def closed_form_gradients(self, x: Tensor):
        """The training bound with its gradient in closed form (see :class:`Density`): the bound's
        forward pass as :meth:`log_prob_replicas` runs it (the same random draws, in the same
        order), recording the leapfrog (:class:`~eim_lightning.integrators.LeapfrogTape`) and each
        evaluation of ``grad E`` (:meth:`~eim_lightning.nn.MLP.input_gradient_cached`); then its
        reverse pass (:func:`~eim_lightning.integrators.leapfrog_reverse_vjp`, the potential's
        Hessian-vector products by :meth:`~eim_lightning.nn.MLP.input_gradient_vjp`). With
        ``c = -1/B`` (the loss is ``-mean_b l_b``): ``xbar_0 = c grad log pi(x_0)``,
        ``rhobar_0 = -c rho_0``; through ``rho_T = mu + sigma e`` and ``-log r = |e|^2/2 +
        sum log sigma + const``: ``mubar = rhobar_T`` and ``sigmabar = rhobar_T e + c/sigma``."""
        potential, momentum = self.potential, self.momentum_net
        eps = torch.randn_like(x)  # first, as _sample_momentum draws it
        centred = x - self.data_mean  # the dynamics run in the networks' centred coordinates
        log_r = standard_normal_log_prob(eps)  # (rho_T - mean) / scale = eps
        if momentum is None:
            rho_T = eps
        else:
            out, r_cache = momentum.forward_cached(centred)
            mean, raw = out.split(self.event_shape[0], dim=-1)
            unclamped = softplus(raw)
            scale = unclamped.clamp_min(MIN_MOMENTUM_SCALE)  # positive_scale, keeping its mask
            rho_T = torch.addcmul(mean, scale, eps)
            log_r = log_r - torch.log(scale).sum(-1)
        caches = []

        def grad_fn(y: Tensor) -> Tensor:
            g, cache = potential.input_gradient_cached(y)
            caches.append(cache)
            return g if g.shape == y.shape else g.expand_as(y)

        step_size, alphas, tape = self.step_size, self.alphas, LeapfrogTape()
        x_0, rho_0 = leapfrog_reverse(centred, rho_T, grad_fn, step_size, alphas, tape)
        x_0 = x_0 + self.data_mean
        log_pi, score = self.proposal.log_prob_and_score(x_0)
        bound = log_pi + standard_normal_log_prob(rho_0) - log_r

        c = -1.0 / len(x)  # a Python number under a trace too (x.shape[0] is a tensor there)
        terms = []

        def grad_vjp(k: int, g_bar: Tensor) -> Tensor:
            h_bar, evaluation = potential.input_gradient_vjp(caches[k], g_bar)
            terms.append(evaluation)
            return h_bar

        _, rho_T_bar, step_bar, alphas_bar = leapfrog_reverse_vjp(
            tape, c * score, -c * rho_0, grad_vjp, step_size, alphas
        )
        pairs = potential.input_gradient_parameter_gradients(terms)
        pairs += [
            (self.raw_step_size, step_bar * torch.sigmoid(self.raw_step_size)),
            (self.raw_alphas, alphas_bar * alphas * (1 - alphas)),
        ]
        if momentum is not None:
            scale_bar = torch.addcmul(c / scale, rho_T_bar, eps)
            raw_bar = scale_bar * torch.sigmoid(raw) * (unclamped >= MIN_MOMENTUM_SCALE)
            pairs += momentum.parameter_gradients(r_cache, torch.cat([rho_T_bar, raw_bar], -1))
        return bound, pairs, ()

    def closed_form_finish(self, saved: tuple, diagnostics: bool) -> dict[str, Tensor]:
        return self._diagnostics() if diagnostics else {}

    def _forward_run(self, n: int, context: Tensor | None):
        shape = self._sample_shape(n, context)
        x0 = self.proposal.rsample(n, context)
        rho0 = torch.randn(*shape, *self.event_shape, dtype=x0.dtype, device=x0.device)
        grad = self._grad_fn(context, create_graph=torch.is_grad_enabled())
        xT, rhoT = leapfrog_forward(x0, rho0, grad, self.step_size, self.alphas)
        return x0, rho0, xT, rhoT

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Reparameterised samples ``x_T`` ``[n, D]`` (``[n, B, D]`` with a context)."""
        return self._forward_run(n, context)[2]

    def rsample_and_log_prob_upper_bound(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Samples ``x_T`` and ``l`` at the sampler's own ``(x_0, rho_0)``: an upper bound on
        ``log q_HIS(x_T)`` in expectation (for ELBOs with HIS as the variational family)."""
        x0, rho0, xT, rhoT = self._forward_run(n, context)
        return xT, self._log_weight(x0, rho0, xT, rhoT, context)

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        """``-E(x)``: the paper's image e^{-E}."""
        return -self.energy(x)
