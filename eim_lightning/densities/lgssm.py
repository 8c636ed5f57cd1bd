r"""Layer 2: the 1-D linear-Gaussian state-space model with a learnable Gaussian proposal.

Model (q, r are *variances*; z_0 := 0)::

    z_1 ~ N(0, q),   z_t = a z_{t-1} + N(0, q),   x_t = z_t + N(0, r)

Proposal, affine in (z_{t-1}, x_t)::

    q(z_t | z_{t-1}, x_t) = N(w_z z_{t-1} + w_x x_t + c,  σ²)

so that each SMC step (:mod:`.sequential`, ALGORITHMS.md section 4; computed by
:func:`eim_lightning.kalman.lgssm_step`, which the layer-1 oracle steps share) has the incremental weight

    α_t = N(z_t; a z_{t-1}, q) N(x_t; z_t, r) / N(z_t; w_z z_{t-1} + w_x x_t + c, σ²).

The family contains

* the bootstrap proposal p(z_t | z_{t-1}): w_z = a, w_x = 0, c = 0, σ² = q (the default
  initialisation, ``proposal_init="bootstrap"``): α_t = N(x_t; z_t, r);
* the locally optimal proposal p(z_t | z_{t-1}, x_t): w_z = r a / (q + r), w_x = q / (q + r),
  c = 0, σ² = q r / (q + r) (``proposal_init="optimal"``): α_t = N(x_t; a z_{t-1}, q + r), and
  the SMC estimate is *exact* when a = 0 or T = 1.

The exact log-likelihood log p(x_{1:T}) is the Kalman filter's (:meth:`log_likelihood`), the
oracle every FIVO test compares with.

Parameters. The proposal (w_z, w_x, c, log σ) is learnable unless ``learn_proposal=False``.
The model's (a, log q, log r) are *fixed by default* (buffers): then the FIVO bound is bounded
above by the Kalman log-likelihood of the true parameters, and training the proposal can only
close the gap, which is what the tests and the benchmark show. With ``learn_model=True`` they are
parameters too, and FIVO does approximate maximum likelihood (the bound is then below the Kalman
log-likelihood *of the current parameters*).

Dtype: every run is computed in the dtype of ``x`` (float16/bfloat16 promoted to float32); the
seven scalars are cast, differentiably, so float64 oracle tests need no ``model.double()``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..kalman import affine_proposal, kalman_log_likelihood, lgssm_step, proposal_coefficients, sample_lgssm
from ..ops import as_float32_or_wider
from .sequential import SequentialModel

__all__ = ["LinearGaussianSSM"]


class LinearGaussianSSM(SequentialModel):
    """1-D linear-Gaussian state-space model with an affine Gaussian proposal.

    Args:
        a: transition coefficient.
        q: transition (and initial) variance, > 0.
        r: emission variance, > 0.
        learn_model: make a, log q, log r learnable (default: fixed at the given values).
        learn_proposal: make the proposal's w_z, w_x, c, log σ learnable (default).
        proposal_init: ``"bootstrap"`` (the prior transition, default) or ``"optimal"``
            (the locally optimal p(z_t | z_{t-1}, x_t) of the given a, q, r).
    """

    def __init__(
        self,
        a: float = 0.9,
        q: float = 1.0,
        r: float = 0.5,
        learn_model: bool = False,
        learn_proposal: bool = True,
        proposal_init: Literal["bootstrap", "optimal"] = "bootstrap",
    ) -> None:
        super().__init__(obs_dim=1, latent_dim=1)
        for name, value in (("a", a), ("q", q), ("r", r)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if not (q > 0 and r > 0):
            raise ValueError(f"q and r are variances and must be > 0, got q={q}, r={r}")
        if proposal_init not in ("bootstrap", "optimal"):
            raise ValueError(f"proposal_init must be 'bootstrap' or 'optimal', got {proposal_init!r}")
        w_z, w_x, c, var = proposal_coefficients(proposal_init, a, q, r)
        proposal = (w_z, w_x, c, 0.5 * math.log(var))
        self.learn_model, self.learn_proposal = learn_model, learn_proposal
        for name, value in zip(("a", "log_q", "log_r"), (a, math.log(q), math.log(r))):
            self._scalar(name, value, learn_model)
        for name, value in zip(("w_z", "w_x", "c", "log_std"), proposal):
            self._scalar(name, value, learn_proposal)

    def _scalar(self, name: str, value: float, learnable: bool) -> None:
        t = torch.tensor(float(value), dtype=torch.get_default_dtype())
        if learnable:
            self.register_parameter(name, nn.Parameter(t))
        else:
            self.register_buffer(name, t)

    @property
    def q(self) -> Tensor:
        """Transition variance."""
        return self.log_q.exp()

    @property
    def r(self) -> Tensor:
        """Emission variance."""
        return self.log_r.exp()

    def compute_dtype(self, x: Tensor) -> torch.dtype:
        return as_float32_or_wider(x).dtype if x.is_floating_point() else x.dtype

    def proposal(self, z_prev: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(z_t | z_{t-1}, x_t) (``z_prev = 0`` for t = 1); broadcasts."""
        return affine_proposal(z_prev, x_t, self.w_z, self.w_x, self.c, torch.exp(2 * self.log_std))

    # -- SMC ------------------------------------------------------------------------------------

    def prepare(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        a, log_q, log_r, w_z, w_x, c, log_std = (
            getattr(self, n).to(x.dtype) for n in ("a", "log_q", "log_r", "w_z", "w_x", "c", "log_std")
        )
        return x[..., 0], (a, log_q.exp(), log_r.exp(), (w_z, w_x, c, torch.exp(2 * log_std)))

    def initial_state(self, inputs, batch_size: int, num_particles: int) -> Tensor:
        x, _ = inputs
        return x.new_zeros(num_particles, batch_size)  # z_0 = 0

    def step(self, t: int, state: Tensor, inputs, eps: Tensor) -> tuple[Tensor, Tensor]:
        x, (a, q, r, proposal) = inputs
        return lgssm_step(state, x[:, t], eps[..., 0], a, q, r, proposal)

    # -- exact quantities -----------------------------------------------------------------------

    def log_likelihood(self, x: Tensor) -> Tensor:
        """Exact log p(x_{1:T}) ``[B]`` by the Kalman filter (the oracle of the SMC bound)."""
        x = self.check_sequences(x)
        return kalman_log_likelihood(x[..., 0], self.a.to(x.dtype), self.q.to(x.dtype), self.r.to(x.dtype))

    def sample(
        self, num_sequences: int, num_steps: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            z, x = sample_lgssm(
                num_sequences,
                num_steps,
                self.a,
                self.q,
                self.r,
                generator=generator,
                dtype=self.a.dtype,
                device=self.a.device,
            )
        return z.unsqueeze(-1), x.unsqueeze(-1)
