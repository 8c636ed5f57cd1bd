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
``Z_ema`` (init 0.5) is a buffer, so it is saved in checkpoints. The proposal samples of ``Z_curr``
are reparameterised (``rsample``: the gradient of Z reaches the proposal's parameters; Gumbel
straight-through for binary pixels); with ``reparameterize_z_samples=False`` they are plain samples
and that gradient reaches the acceptance network only, as in the authors' code for its
convolutional (ConvHVAE) proposal, whose Bernoulli samples carry no gradient.

Evaluation: every other use of the density, ``log_prob_lower_bound`` and ``log_prob_replicas``
in any mode (also as a VAE's prior outside its training objective), uses an *evaluation* Z
estimated from ``num_z_eval_samples`` proposal samples streamed in chunks of
``z_eval_chunk_size`` (memory flat; optionally antithetic pairs ``x, 2 mean - x``), never the
smoothed training Z. The estimate is cached in the ``z_eval`` buffer together with a copy of
the values it was computed for (the proposal's and acceptance network's parameters and buffers,
the data mean) and recomputed on first use after any of them changes, whatever the train/eval
mode (values, not version counters: PyTorch's fused Adam updates parameters without bumping
them). Each estimate's cost (samples, seconds) is logged at INFO. :meth:`LARS.set_evaluation_z`
sets the cache explicitly (e.g. to a Z averaged over processes, or an exact Z in a test); a
checkpoint saves ``z_eval`` only while it is current (else NaN) and loading one restores it as
current. The LARS paper used 1e10 samples; the defaults here are 1e8 (a 50-d latent takes
minutes on 2 CPU cores) and configs in pixel space use 1e6.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid

from ..bounds import lars_geometry, lars_log_prob
from ..ops import as_float32_or_wider
from .base import SAMPLE_CHUNK_SIZE, Density, check_positive_int, closed_form_applies, evaluate_net
from .trs import truncated_rejection_sample

__all__ = ["LARS"]

_log = logging.getLogger(__name__)


class LARS(Density):
    """LARS density (truncated rejection sampling with Z estimated).

    Args:
        proposal: any density ``pi`` (``reflect`` needed for ``antithetic=True``).
        accept_logit: network giving ``f``, ``a = sigmoid(f)``.
        T: truncation, ``T >= 1``.
        num_z_samples: proposal samples per training step for ``Z_curr``.
        num_z_val_samples: proposal samples for Z at validation (cheaper than at test).
        num_z_eval_samples: proposal samples for the evaluation estimate of Z (test, and any
            use of the density outside validation and its training objective).
        z_eval_chunk_size: samples per chunk of that estimate.
        antithetic: use antithetic pairs in the evaluation estimate.
        z_ema_rate: ``eps`` of the moving average.
        reparameterize_z_samples: draw ``Z_curr``'s proposal samples with ``rsample`` (True) or
            ``sample`` (False: no gradient of Z into the proposal).
    """

    def __init__(
        self,
        proposal: Density,
        accept_logit: nn.Module,
        T: int = 1024,
        num_z_samples: int = 1024,
        num_z_val_samples: int = 10**5,
        num_z_eval_samples: int = 10**8,
        z_eval_chunk_size: int = SAMPLE_CHUNK_SIZE,
        antithetic: bool = False,
        z_ema_rate: float = 0.01,
        reparameterize_z_samples: bool = True,
        data_mean: Tensor | None = None,
        eval_chunk_size: int = 64,
        sample_chunk_size: int = SAMPLE_CHUNK_SIZE,
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
        self.reparameterize_z_samples = reparameterize_z_samples
        self.proposal = proposal
        self.accept_logit = accept_logit
        self.register_data_mean(data_mean)
        self.register_buffer("z_ema", torch.tensor(0.5))
        self.register_buffer("z_eval", torch.tensor(math.nan))
        self._z_eval_inputs: list[Tensor] | None = None  # the values z_eval was estimated for
        self._pending_z_s: Tensor | None = None
        #: acceptance probabilities a(z) of the last training step's proposal samples (None before one)
        self.last_acceptance: Tensor | None = None
        self.register_load_state_dict_post_hook(LARS._restore_z_eval)

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
        draw = self.proposal.rsample if self.reparameterize_z_samples else self.proposal.sample
        xs = draw(self.num_z_samples)
        acceptance = torch.sigmoid(self.logit(xs))
        self.last_acceptance = acceptance.detach()  # for the saturation diagnostic
        z_curr = acceptance.mean()
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

    def after_optimizer_step(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """The moving-average Z follows every optimiser step (:meth:`update_z_ema`)."""
        self.update_z_ema(reduce)

    def before_evaluation(self, stage: str, reduce: Callable[[Tensor], Tensor]) -> None:
        """A fresh evaluation Z from ``num_z_val_samples`` (validation) or ``num_z_eval_samples``
        (test) proposal samples, averaged over processes."""
        z = self.estimate_z(self.num_z_val_samples if stage == "val" else self.num_z_eval_samples)
        self.set_evaluation_z(reduce(z.to(self.z_eval.dtype)))

    def _z_inputs(self) -> list[Tensor]:
        """Every tensor ``Z = E_pi[a]`` depends on."""
        nets = (self.proposal, self.accept_logit)
        return [*(t for net in nets for t in (*net.parameters(), *net.buffers())), self.data_mean]

    def _z_eval_is_current(self) -> bool:
        """Whether ``z_eval`` was estimated for the present values of :meth:`_z_inputs` (one
        host synchronisation)."""
        saved, now = self._z_eval_inputs, self._z_inputs()
        if saved is None or len(saved) != len(now):
            return False
        if any((a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device) for a, b in zip(saved, now)):
            return False
        return bool(torch.stack([(a == b).all() for a, b in zip(saved, now)]).all())

    @torch.no_grad()
    def set_evaluation_z(self, z: Tensor | float) -> None:
        """Make ``z`` the evaluation Z for the present parameters (until one of them changes)."""
        self.z_eval.copy_(torch.as_tensor(z, dtype=self.z_eval.dtype))
        self._z_eval_inputs = [t.detach().clone() for t in self._z_inputs()]

    @torch.no_grad()
    def estimate_z(
        self, num_samples: int | None = None, chunk_size: int | None = None, antithetic: bool | None = None
    ) -> Tensor:
        """Streamed Monte Carlo estimate of ``Z = E_pi[a]`` (float64 accumulation), made the
        evaluation Z (:meth:`set_evaluation_z`). Memory is that of one chunk. It draws on a
        forked random stream, so the caller's stream is where it was (and a checkpointed
        evaluation that triggers it recomputes on the same random numbers)."""
        n = check_positive_int("num_samples", num_samples or self.num_z_eval_samples)
        chunk = check_positive_int("chunk_size", chunk_size or self.z_eval_chunk_size)
        antithetic = self.antithetic if antithetic is None else antithetic
        if antithetic and not hasattr(self.proposal, "reflect"):
            raise ValueError(
                f"antithetic=True needs a proposal with reflect(); {type(self.proposal).__name__} has none"
            )
        device = self.z_ema.device
        start = time.perf_counter()
        total = torch.zeros((), dtype=torch.float64, device=device)
        done = 0
        with torch.random.fork_rng([device] if device.type == "cuda" else []):
            while done < n:
                m = min(chunk, n - done)
                if antithetic:
                    half = self.proposal.sample((m + 1) // 2)
                    xs = torch.cat([half, self.proposal.reflect(half)])[:m]
                else:
                    xs = self.proposal.sample(m)
                total += torch.sigmoid(self.logit(xs)).double().sum()
                done += m
        self.set_evaluation_z(total / n)
        if device.type != "meta":
            _log.info(
                f"LARS: evaluation Z = {self.z_eval.item():.6g} from {n} proposal samples in "
                f"{time.perf_counter() - start:.2f} s"
            )
        return self.z_eval.clone()

    def evaluation_z(self) -> Tensor:
        """The evaluation Z: the cached estimate while it is current, else a fresh one."""
        if not self._z_eval_is_current():
            self.estimate_z()
        return self.z_eval

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self._z_eval_is_current():  # an estimate for other parameters is no estimate
            destination[prefix + "z_eval"] = torch.full_like(self.z_eval, math.nan)

    def _restore_z_eval(self, incompatible_keys) -> None:
        """After ``load_state_dict``: a loaded finite ``z_eval`` is current for the loaded parameters."""
        loaded = not any(k.endswith("z_eval") for k in incompatible_keys.missing_keys)
        if loaded and bool(torch.isfinite(self.z_eval)):
            self.set_evaluation_z(self.z_eval.clone())
        else:
            self._z_eval_inputs = None

    # -- density ----------------------------------------------------------------------------------

    def log_prob_given_z(self, x: Tensor, z: Tensor, num_replicas: int = 1) -> Tensor:
        """``log q_T(x)`` for a given acceptance rate ``Z``: ``[m, B]`` (exact if Z is exact)."""
        log_pi = self.proposal.log_prob_replicas(x, num_replicas)
        return lars_log_prob(log_pi, logsigmoid(self.logit(x)), z, self.T)

    def log_prob_replicas(self, x: Tensor, num_replicas: int, context: Tensor | None = None) -> Tensor:
        """Log-density *estimate* with the evaluation Z (:meth:`evaluation_z`), in any mode."""
        if context is not None:
            raise ValueError("LARS is unconditional: its Z would depend on the context")
        return self.log_prob_given_z(x, self.evaluation_z().to(x.dtype), num_replicas)

    def bound_and_diagnostics(self, x: Tensor, context: Tensor | None = None, diagnostics: bool = True):
        """Training log-density *estimate* ``[B]`` with the smoothed training Z (in training
        mode; the evaluation Z otherwise); diagnostics: that Z, Z_ema and, in training,
        ``saturated``: the fraction of the step's proposal samples accepted with a > 0.99 (where
        LARS's only push-down term, the gradient of Z, vanishes; docs/LARS_SATURATION.md). None
        with ``diagnostics=False``."""
        self.check_input(x, context)
        if not self.training:
            estimate = self.log_prob_replicas(x, 1, context)[0]
            return estimate, {"z": self.z_eval, "z_ema": self.z_ema} if diagnostics else {}
        estimate = self.log_prob_given_z(x, self.training_z())[0]
        if not diagnostics:
            return estimate, {}
        saturated = (self.last_acceptance > 0.99).float().mean()
        return estimate, {"z": self._pending_z_s, "z_ema": self.z_ema, "saturated": saturated}

    def offers_closed_form_training(self) -> bool:
        """An MLP acceptance logit, ``T >= 2`` and a proposal without parameters."""
        return self.T >= 2 and closed_form_applies(self, self.accept_logit)

    def closed_form_training_bound(self, x: Tensor, diagnostics: bool = True):
        """See :class:`Density`: in training mode only (else None)."""
        return super().closed_form_training_bound(x, diagnostics) if self.training else None

    def closed_form_gradients(self, x: Tensor):
        """The training estimate with its gradient in closed form (see :class:`Density`), for an
        :class:`~eim_lightning.nn.MLP` acceptance logit ``f``, a proposal without parameters and
        ``T >= 2``, in training mode. One network pass over the batch and the ``S`` proposal
        samples of ``Z_curr``. With
        ``log q = log pi + logaddexp(log a + log S(Z), n log(1-Z))`` (:func:`~eim_lightning.bounds.lars_geometry`),
        ``w = sigmoid(log a + log S - n log(1-Z))`` and the loss ``-mean_b log q(x_b)``:
        ``dloss/df(x_b) = -w_b sigmoid(-f(x_b)) / B`` and, through ``Z_curr = mean_j a(z_j)``,
        ``dloss/df(z_j) = -[mean_b w_b dlogS/dZ + (1 - w_b) dn log(1-Z)/dZ] a(z_j)(1 - a(z_j)) / S``.
        Saved: the acceptances ``a(z_j)`` and the smoothed ``Z_s`` (:meth:`closed_form_finish`)."""
        net = self.accept_logit
        batch, num_z = len(x), self.num_z_samples  # Python numbers under a trace too
        xs = self.proposal.rsample(num_z)  # first, as training_z draws them
        f, cache = net.forward_cached(torch.cat([x, xs.to(x.dtype)]) - self.data_mean)
        f_x, f_z = f[:batch, 0], f[batch:, 0]
        acceptance = torch.sigmoid(f_z)
        z_s = (1.0 - self.z_ema_rate) * self.z_ema + self.z_ema_rate * acceptance.mean()
        log_geo, last, d_log_geo, d_last = lars_geometry(z_s, self.T)
        log_a = logsigmoid(f_x)
        log_pi = self.proposal.log_prob_replicas(x, 1)[0]
        estimate = log_pi + torch.logaddexp(log_a + log_geo, last.to(log_a.dtype))
        t = log_a + (log_geo - last)
        w = torch.sigmoid(t)
        d_z = -(d_log_geo * w.mean() + d_last * torch.sigmoid(-t).mean())  # 1 - w without cancellation
        delta = torch.cat([-w * torch.sigmoid(-f_x) / batch, acceptance * (1 - acceptance) * (d_z / num_z)])
        return estimate, net.parameter_gradients(cache, delta.unsqueeze(-1).to(f.dtype)), (acceptance, z_s)

    def closed_form_finish(self, saved: tuple, diagnostics: bool) -> dict[str, Tensor]:
        """Keeps the step's acceptances and its ``Z_s`` for :meth:`update_z_ema`."""
        self.last_acceptance, self._pending_z_s = saved
        if not diagnostics:
            return {}
        return {"z": self._pending_z_s, "z_ema": self.z_ema, "saturated": (self.last_acceptance > 0.99).float().mean()}

    def log_prob_for_elbo(self, z: Tensor, log_q: Tensor, objective: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """As a VAE's prior, ``[m, B]`` estimates of ``log q_T(z)`` at posterior samples ``z [m, B, L]``.

        In the training objective (in training mode) ``Z_curr`` also uses the reweighted
        posterior samples, ``(S Ẑ_S + stopgrad(pi(z)/q(z|x)) a(z)) / (S + 1)`` per example
        (Bauer & Mnih 2019), smoothed by the moving average; diagnostics: the mean smoothed Z.
        Otherwise each replica uses the evaluation Z.
        """
        if not (objective and self.training):
            return super().log_prob_for_elbo(z, log_q, objective)
        flat = z.reshape(-1, *self.event_shape)
        log_pi = self.proposal.log_prob_replicas(flat, 1)[0]
        log_a = logsigmoid(self.logit(flat))
        extra = torch.exp(log_pi - log_q.reshape(-1)).detach() * log_a.exp()
        estimate = lars_log_prob(log_pi, log_a, self.training_z(extra), self.T).reshape(z.shape[:2])
        return estimate, {"z": self._pending_z_s.mean()}

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Exact samples ``[n, *event]`` of the truncated rejection sampler."""
        return truncated_rejection_sample(self, self.logit, n, context)

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        """``log pi(x) + log a(x)``: the paper's image pi a."""
        return self.proposal.log_prob_replicas(x, 1)[0] + logsigmoid(self.logit(x))
