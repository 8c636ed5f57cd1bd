r"""LARS: learned accept/reject sampling with an estimated normaliser (Bauer & Mnih 2019; ALGORITHMS.md 2.4).

The model is the truncated rejection sampler of :mod:`.trs`, whose density

    q_T(x) = pi(x) [ a(x) sum_{t=0}^{T-2} (1-Z)^t + (1-Z)^{T-1} ],    Z = E_pi[a],

is evaluated with an *estimated* Z. **Its log-density is therefore an estimate, not a bound**:
``log_prob_lower_bound`` keeps the contract's name for composability, and the Lightning module
logs it as ``*/log_prob_estimate``. ``T = 1`` gives ``log pi(x)``.

Training (per step): ``Z_curr`` is the mean of ``a`` over ``num_z_samples`` fresh proposal
samples, ``Z_s = (1 - eps) Z_ema + eps Z_curr`` (``eps = z_ema_rate = 0.01``), and the forward
pass uses ``Z = Z_curr + stopgrad(Z_s - Z_curr)`` (value of the smoothed estimate, gradient of
the current batch). After the optimiser step the owner calls :meth:`LARS.update_z_ema`, which
sets ``Z_ema <- mean stopgrad(Z_s)`` (averaged across processes when given a reduction).
``Z_ema`` (init 0.5) is a buffer, so it is saved in checkpoints.

Evaluation (``eval()`` mode): Z is estimated once from ``num_z_eval_samples`` proposal samples
streamed in chunks of ``z_eval_chunk_size`` (memory flat; optionally antithetic pairs
``x, 2 mean - x``), cached in the ``z_eval`` buffer and cleared when the module returns to
training mode. The LARS paper used 1e10 samples; the defaults here are 1e8 (a 50-d latent takes
minutes on 2 CPU cores) and configs in pixel space use 1e6.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid

from ..bounds import lars_log_prob
from ..ops import as_float32_or_wider
from .base import Density, check_positive_int, evaluate_net
from .trs import truncated_rejection_sample

__all__ = ["LARS"]


class LARS(Density):
    """LARS density (truncated rejection sampling with Z estimated).

    Args:
        proposal: any density ``pi`` (``reflect`` needed for ``antithetic=True``).
        accept_logit: network giving ``f``, ``a = sigmoid(f)``.
        T: truncation, ``T >= 1``.
        num_z_samples: proposal samples per training step for ``Z_curr``.
        num_z_val_samples: proposal samples for Z at validation (cheaper than at test).
        num_z_eval_samples: proposal samples for the evaluation (test) estimate of Z.
        z_eval_chunk_size: samples per chunk of that estimate.
        antithetic: use antithetic pairs in the evaluation estimate.
        z_ema_rate: ``eps`` of the moving average.
    """

    def __init__(
        self,
        proposal: Density,
        accept_logit: nn.Module,
        T: int = 1024,
        num_z_samples: int = 1024,
        num_z_val_samples: int = 10**5,
        num_z_eval_samples: int = 10**8,
        z_eval_chunk_size: int = 2**16,
        antithetic: bool = False,
        z_ema_rate: float = 0.01,
        data_mean: Tensor | None = None,
        eval_chunk_size: int = 64,
        sample_chunk_size: int = 2**20,
    ) -> None:
        super().__init__(proposal.event_shape, eval_chunk_size)
        self.T = check_positive_int("T", T)
        self.num_z_samples = check_positive_int("num_z_samples", num_z_samples)
        self.num_z_val_samples = check_positive_int("num_z_val_samples", num_z_val_samples)
        self.num_z_eval_samples = check_positive_int("num_z_eval_samples", num_z_eval_samples)
        self.z_eval_chunk_size = check_positive_int("z_eval_chunk_size", z_eval_chunk_size)
        self.sample_chunk_size = check_positive_int("sample_chunk_size", sample_chunk_size)
        if not 0.0 < z_ema_rate <= 1.0:
            raise ValueError(f"z_ema_rate must be in (0, 1], got {z_ema_rate}")
        if antithetic and not hasattr(proposal, "reflect"):
            raise ValueError(f"antithetic=True needs a proposal with reflect(); {type(proposal).__name__} has none")
        self.antithetic = antithetic
        self.z_ema_rate = z_ema_rate
        self.proposal = proposal
        self.accept_logit = accept_logit
        self.register_data_mean(data_mean)
        self.register_buffer("z_ema", torch.tensor(0.5))
        self.register_buffer("z_eval", torch.tensor(math.nan))
        self._pending_z_s: Tensor | None = None

    def logit(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Acceptance logit ``f(x)``: ``[*batch]``."""
        if context is not None:
            raise ValueError("LARS is unconditional: its Z would depend on the context")
        return evaluate_net(self.accept_logit, x, self.event_ndim, None, self.data_mean)

    # -- Z ----------------------------------------------------------------------------------------

    def training_z(self, extra: Tensor | None = None) -> Tensor:
        """Smoothed Z for a training step (records ``Z_s`` for :meth:`update_z_ema`).

        Args:
            extra: optional ``[B]`` extra terms ``stopgrad(pi(z)/q(z|x)) a(z)`` from a VAE's
                posterior samples; then ``Z_curr = (S Ẑ_S + extra) / (S + 1)`` per example.
        """
        xs = self.proposal.rsample(self.num_z_samples)
        z_curr = torch.sigmoid(self.logit(xs)).mean()
        if extra is not None:
            s = self.num_z_samples
            z_curr = (s * z_curr + extra) / (s + 1)
        z_s = (1.0 - self.z_ema_rate) * self.z_ema + self.z_ema_rate * z_curr
        self._pending_z_s = z_s.detach()
        return z_curr + (z_s - z_curr).detach()

    @torch.no_grad()
    def update_z_ema(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """``Z_ema <- mean stopgrad(Z_s)`` after an optimiser step; ``reduce`` averages across
        processes so the buffer stays identical on every worker. No-op without a pending Z_s."""
        if self._pending_z_s is None:
            return
        value = as_float32_or_wider(self._pending_z_s).mean()  # float64 models keep full precision
        if reduce is not None:
            value = reduce(value)
        self.z_ema.copy_(value)
        self._pending_z_s = None

    @torch.no_grad()
    def estimate_z(
        self, num_samples: int | None = None, chunk_size: int | None = None, antithetic: bool | None = None
    ) -> Tensor:
        """Streamed Monte Carlo estimate of ``Z = E_pi[a]`` (float64 accumulation), cached in
        ``z_eval``. Memory is that of one chunk."""
        n = check_positive_int("num_samples", num_samples or self.num_z_eval_samples)
        chunk = check_positive_int("chunk_size", chunk_size or self.z_eval_chunk_size)
        antithetic = self.antithetic if antithetic is None else antithetic
        if antithetic and not hasattr(self.proposal, "reflect"):
            raise ValueError(f"antithetic=True needs a proposal with reflect(); {type(self.proposal).__name__} has none")
        total = torch.zeros((), dtype=torch.float64, device=self.z_ema.device)
        done = 0
        while done < n:
            m = min(chunk, n - done)
            if antithetic:
                half = self.proposal.sample((m + 1) // 2)
                xs = torch.cat([half, self.proposal.reflect(half)])[:m]
            else:
                xs = self.proposal.sample(m)
            total += torch.sigmoid(self.logit(xs)).double().sum()
            done += m
        self.z_eval.copy_(total / n)
        return self.z_eval.clone()

    def evaluation_z(self) -> Tensor:
        """The cached evaluation estimate of Z, computed on first use."""
        if not bool(torch.isfinite(self.z_eval)):
            self.estimate_z()
        return self.z_eval

    def train(self, mode: bool = True) -> "LARS":
        if mode:
            self.z_eval.fill_(math.nan)  # parameters will change: the estimate goes stale
        return super().train(mode)

    # -- density ----------------------------------------------------------------------------------

    def log_prob_given_z(self, x: Tensor, z: Tensor, num_replicas: int = 1) -> Tensor:
        """``log q_T(x)`` for a given acceptance rate ``Z``: ``[m, B]`` (exact if Z is exact)."""
        log_pi = self.proposal.log_prob_replicas(x, num_replicas)
        return lars_log_prob(log_pi, logsigmoid(self.logit(x)), z, self.T)

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        """Log-density *estimate* (training: smoothed Z of the step; eval: the cached estimate)."""
        if context is not None:
            raise ValueError("LARS is unconditional: its Z would depend on the context")
        z = self.training_z() if self.training else self.evaluation_z()
        return self.log_prob_given_z(x, z.to(x.dtype), num_replicas)

    def bound_and_diagnostics(self, x: Tensor, context: Tensor | None = None, diagnostics: bool = True):
        """Training log-density *estimate* ``[B]``; diagnostics: the smoothed Z and Z_ema."""
        self.check_input(x, context)
        estimate = self.log_prob_replicas(x, 1, context)[0]
        if not diagnostics:
            return estimate, {}
        diag = {"z": self._pending_z_s if self._pending_z_s is not None else self.z_eval, "z_ema": self.z_ema}
        return estimate, diag

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Exact samples ``[n, *event]`` of the truncated rejection sampler."""
        return truncated_rejection_sample(self, self.logit, n, context)

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        """``log pi(x) + log a(x)``: the paper's image pi a."""
        return self.proposal.log_prob_replicas(x, 1)[0] + logsigmoid(self.logit(x))
