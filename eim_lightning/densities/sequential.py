r"""Layer 2: the contract of sequential latent-variable models with a learnable proposal.

A model here is a joint density over observations x_{1:T} (each ``[obs_dim]``) and latents
z_{1:T} (each ``[latent_dim]``) together with a filtering proposal, factorised step by step::

    p(x_{1:T}, z_{1:T}) = Π_t f(z_t | z_{<t}, x_{<t}) g(x_t | z_{<=t}, x_{<t})
    q(z_{1:T} | x_{1:T}) = Π_t q(z_t | z_{<t}, x_{<=t})

Each subclass only says how one particle moves: :meth:`SequentialModel.step` takes the
particles' state (whatever summarises z_{<t}, x_{<t}: the previous latent for a state-space
model, an RNN state for a VRNN; every tensor ``[K, B, ...]``), draws z_t by reparameterisation
``z_t = μ_q + σ_q ε_t`` from standard-normal noise ``ε_t [K, B, latent_dim]``, and returns the
new state with the incremental log-weights

    log α_t^k = log f(z_t^k | ·) + log g(x_t | z_t^k, ·) - log q(z_t^k | ·)      [K, B].

:meth:`SequentialModel.filter` runs these steps inside the layer-1 SMC recursion
(:func:`eim_lightning.smc.smc`, ALGORITHMS.md section 4), so every model gets the FIVO bound
``log Ẑ`` with adaptive multinomial / stratified / systematic resampling or none (IWAE), with
the resampling step's score-function gradient dropped.

Shapes: a batch of sequences is ``x [B, T, obs_dim]`` (``[B, T]`` is accepted when
``obs_dim = 1``); bounds are per sequence ``[B]``; the noise of a whole run is
``[T, K, B, latent_dim]``. Models never log; :meth:`bound_and_diagnostics` returns the bound and
a dict of diagnostics (mean number of resampling events per sequence, mean ESS / K).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..smc import Resampling, SMCResult, smc
from .base import check_positive_int, per_call_value_checks

__all__ = ["SequentialModel", "RESAMPLING_SCHEMES", "check_resampling"]

RESAMPLING_SCHEMES = ("multinomial", "stratified", "systematic", "never")


def check_resampling(resampling: str, ess_threshold: float) -> None:
    """Raise a clear ``ValueError`` for an unknown scheme or a threshold that is not a number."""
    if resampling not in RESAMPLING_SCHEMES:
        raise ValueError(f"resampling must be one of {list(RESAMPLING_SCHEMES)}, got {resampling!r}")
    if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float)) or math.isnan(ess_threshold):
        raise ValueError(
            f"ess_threshold must be a number (resample when ESS < ess_threshold * K), got {ess_threshold!r}"
        )


class SequentialModel(nn.Module):
    """Base class of sequential latent-variable models trained by SMC (see the module docstring).

    Subclasses implement :meth:`initial_state` and :meth:`step`, and may override
    :meth:`prepare` (per-sequence work shared by all particles, e.g. encoding x_{1:T} once),
    :meth:`compute_dtype` and :meth:`sample`.

    Args:
        obs_dim: dimension of each observation x_t.
        latent_dim: dimension of each latent z_t (the proposal noise per particle and step).
    """

    #: check shapes, dtypes and finiteness of inputs (one host sync per call)
    validate_args: bool = True

    def __init__(self, obs_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.obs_dim = check_positive_int("obs_dim", obs_dim)
        self.latent_dim = check_positive_int("latent_dim", latent_dim)

    # -- to implement ---------------------------------------------------------------------------

    def prepare(self, x: Tensor) -> Any:
        """Per-sequence inputs of :meth:`step`, computed once per run from ``x [B, T, D]``."""
        return x

    def initial_state(self, inputs: Any, batch_size: int, num_particles: int) -> Any:
        """The particles' state before step 1 (every tensor ``[K, B, ...]``)."""
        raise NotImplementedError

    def step(self, t: int, state: Any, inputs: Any, eps: Tensor) -> tuple[Any, Tensor]:
        """Propose z_{t+1} (0-based ``t``) from ``eps [K, B, latent_dim]``; return ``(state, log α [K, B])``."""
        raise NotImplementedError

    def sample(
        self, num_sequences: int, num_steps: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Exact samples ``(z [n, T, latent_dim], x [n, T, obs_dim])`` of the model, without gradient."""
        raise NotImplementedError(f"{type(self).__name__} has no sampler")

    def compute_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype a run on ``x`` is computed in; by default the parameters' (x must match)."""
        for p in self.parameters():
            return p.dtype
        return x.dtype

    # -- input checks ---------------------------------------------------------------------------

    def check_sequences(self, x: Tensor) -> Tensor:
        """``x`` as ``[B, T, obs_dim]``; clear errors for other shapes, dtypes and NaN/Inf."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{name} expected sequences as a torch.Tensor [B, T, {self.obs_dim}], got {type(x).__name__}"
            )
        if x.dim() == 2 and self.obs_dim == 1:
            x = x.unsqueeze(-1)
        if x.dim() != 3 or x.shape[-1] != self.obs_dim or x.shape[0] < 1 or x.shape[1] < 1:
            accepted = f"[B, T, {self.obs_dim}]" + (" or [B, T]" if self.obs_dim == 1 else "")
            raise ValueError(f"{name} expected sequences of shape {accepted} with B, T >= 1, got {list(x.shape)}")
        if not self.validate_args:
            return x
        if not x.is_floating_point():
            raise TypeError(f"{name} expected floating-point sequences, got dtype {x.dtype}")
        want = self.compute_dtype(x)
        if x.dtype != want:
            raise TypeError(
                f"{name} has {want} parameters but got sequences of dtype {x.dtype}; "
                f"convert the data (x.to({want})) or the model (model.to({x.dtype}))"
            )
        if per_call_value_checks() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} got sequences containing NaN or Inf")
        return x

    # -- SMC ------------------------------------------------------------------------------------

    def filter(
        self,
        x: Tensor,
        num_particles: int,
        resampling: Resampling = "multinomial",
        ess_threshold: float = 0.5,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        resampling_uniforms: Tensor | None = None,
    ) -> SMCResult:
        """Run SMC with ``num_particles`` particles per sequence on ``x [B, T, D]`` (or ``[B, T]``).

        Args:
            x: the sequences.
            num_particles: K >= 1.
            resampling: ``"multinomial"``, ``"stratified"``, ``"systematic"`` or ``"never"`` (IWAE).
            ess_threshold: resample sequence b after step t < T iff ESS_t < ess_threshold * K.
            generator: source of the proposal noise and resampling uniforms (default: global RNG).
            noise: the proposal noise instead, standard normal ``[T, K, B, latent_dim]``.
            resampling_uniforms: the resampling uniforms instead (see :func:`eim_lightning.smc.smc`).

        Returns:
            The :class:`~eim_lightning.smc.SMCResult`; ``.log_marginal [B]`` is log Ẑ.
        """
        check_positive_int("num_particles", num_particles)
        check_resampling(resampling, ess_threshold)
        x = self.check_sequences(x)
        b, t_len = x.shape[:2]
        dtype = self.compute_dtype(x)
        shape = (num_particles, b, self.latent_dim)
        if noise is not None and tuple(noise.shape) != (t_len, *shape):
            raise ValueError(f"noise must be [T, K, B, latent_dim] = {[t_len, *shape]}, got {list(noise.shape)}")
        inputs = self.prepare(x.to(dtype))

        def step(t: int, state: Any) -> tuple[Any, Tensor]:
            eps = (
                noise[t] if noise is not None else torch.randn(shape, generator=generator, dtype=dtype, device=x.device)
            )
            return self.step(t, state, inputs, eps.to(dtype))

        return smc(
            step,
            t_len,
            self.initial_state(inputs, b, num_particles),
            resampling=resampling,
            ess_threshold=ess_threshold,
            generator=generator,
            resampling_uniforms=resampling_uniforms,
        )

    def log_marginal_bound(
        self,
        x: Tensor,
        num_particles: int,
        resampling: Resampling = "multinomial",
        ess_threshold: float = 0.5,
        **options,
    ) -> Tensor:
        """The SMC (FIVO) bound's integrand log Ẑ ``[B]``: E[log Ẑ] <= log p(x_{1:T}), E[Ẑ] = p(x_{1:T}).

        ``options``: ``generator``, ``noise``, ``resampling_uniforms`` of :meth:`filter`.
        """
        return self.filter(x, num_particles, resampling, ess_threshold, **options).log_marginal

    def bound_and_diagnostics(
        self, x: Tensor, num_particles: int, resampling: Resampling = "multinomial", ess_threshold: float = 0.5
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """log Ẑ ``[B]`` and diagnostics ``[B]``: resampling events per sequence, mean ESS / K over t."""
        res = self.filter(x, num_particles, resampling, ess_threshold)
        return res.log_marginal, {
            "resampling_events": res.num_resamples.to(res.log_marginal.dtype),
            "ess_fraction": res.ess.mean(0) / num_particles,
        }
