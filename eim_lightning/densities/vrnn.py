r"""Layer 2: the variational RNN (VRNN; Chung et al. 2015) with a filtering proposal, for FIVO.

A GRU state h_t summarises the past (h_0 = 0); with feature networks φ_x, φ_z::

    prior      f(z_t | h_{t-1})        = N(μ_p, diag σ_p²),      (μ_p, s_p) = prior_net(h_{t-1})
    emission   g(x_t | z_t, h_{t-1})    = N(μ_x, diag σ_x²),      (μ_x, s_x) = decoder([φ_z(z_t), h_{t-1}])
    proposal   q(z_t | h_{t-1}, x_t)    = N(μ_q, diag σ_q²),
               (μ_q, s_q) = (μ_p, s_p) + proposal_net([h_{t-1}, φ_x(x_t)])
    recurrence h_t = GRU(h_{t-1}, [φ_x(x_t), φ_z(z_t)])

Every scale is σ = max(softplus(s), ``min_scale``) of its pre-softplus output s. The SMC
incremental weight (:mod:`.sequential`, ALGORITHMS.md section 4) is

    α_t = f(z_t | h_{t-1}) g(x_t | z_t, h_{t-1}) / q(z_t | h_{t-1}, x_t).

The proposal is a residual on the prior, as in the FIVO authors' VRNN (here on the prior's mean and
pre-softplus scale): its output layer starts at zero, so training starts from the bootstrap
proposal q = f. The particle state is h_t ``[K, B, hidden_size]`` (the latent path enters only
through it), so resampling copies GRU states. Networks are :class:`eim_lightning.nn.MLP`
(one hidden layer of ``hidden_size``, ReLU); φ_x(x_{1:T}) is computed once per sequence and
shared by all particles.

Sampling (:meth:`VRNN.sample`) is ancestral: z_t ~ f, x_t ~ g, then the GRU update.

Reference: Chung, Kastner, Dinh, Goel, Courville, Bengio, "A Recurrent Latent Variable Model for
Sequential Data" (NeurIPS 2015); Maddison et al., "Filtering Variational Objectives" (NeurIPS 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kalman import normal_log_prob
from ..nn import MLP
from .base import check_positive_int, positive_scale
from .sequential import SequentialModel

__all__ = ["VRNN"]


def _diag_normal_log_prob(x: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    return normal_log_prob(x, mean, scale.square()).sum(-1)


class VRNN(SequentialModel):
    """Variational RNN with Gaussian emissions and a residual filtering proposal.

    Args:
        obs_dim: dimension of x_t.
        latent_dim: dimension of z_t.
        hidden_size: GRU state size (and the hidden width of every network).
        feature_size: output size of φ_x and φ_z.
        min_scale: lower limit of every standard deviation.
    """

    def __init__(
        self,
        obs_dim: int = 1,
        latent_dim: int = 2,
        hidden_size: int = 32,
        feature_size: int = 16,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(obs_dim, latent_dim)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        check_positive_int("feature_size", feature_size)
        if not min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {min_scale}")
        self.min_scale = min_scale
        h, f = hidden_size, feature_size
        self.phi_x = MLP(obs_dim, [h], f, activation="relu")
        self.phi_z = MLP(latent_dim, [h], f, activation="relu")
        self.prior_net = MLP(h, [h], 2 * latent_dim, activation="relu")
        self.proposal_net = MLP(h + f, [h], 2 * latent_dim, activation="relu")
        self.decoder = MLP(f + h, [h], 2 * obs_dim, activation="relu")
        self.rnn = nn.GRUCell(2 * f, h)
        last = self.proposal_net.net[-1]
        nn.init.zeros_(last.weight)  # proposal = prior at initialisation (bootstrap)
        nn.init.zeros_(last.bias)

    def _loc_scale(self, out: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = out.chunk(2, dim=-1)
        return loc, positive_scale(raw, self.min_scale)

    def _prior(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self._loc_scale(self.prior_net(h))

    def _emission(self, fz: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self._loc_scale(self.decoder(torch.cat([fz, h], dim=-1)))

    def _recur(self, h: Tensor, fx: Tensor, fz: Tensor) -> Tensor:
        lead = h.shape[:-1]
        inp = torch.cat([fx, fz], dim=-1).reshape(-1, fx.shape[-1] + fz.shape[-1])
        return self.rnn(inp, h.reshape(-1, self.hidden_size)).view(*lead, self.hidden_size)

    # -- SMC ------------------------------------------------------------------------------------

    def prepare(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, self.phi_x(x)  # ([B, T, D], [B, T, F])

    def initial_state(self, inputs, batch_size: int, num_particles: int) -> Tensor:
        x, _ = inputs
        return x.new_zeros(num_particles, batch_size, self.hidden_size)

    def step(self, t: int, state: Tensor, inputs, eps: Tensor) -> tuple[Tensor, Tensor]:
        x, fx_all = inputs
        h = state
        x_t = x[:, t]
        fx = fx_all[:, t].expand(h.shape[0], -1, -1)  # [K, B, F]
        prior_out = self.prior_net(h)
        mu_p, sd_p = self._loc_scale(prior_out)
        mu_q, sd_q = self._loc_scale(prior_out + self.proposal_net(torch.cat([h, fx], dim=-1)))
        z = mu_q + sd_q * eps
        fz = self.phi_z(z)
        mu_x, sd_x = self._emission(fz, h)
        log_alpha = (
            _diag_normal_log_prob(z, mu_p, sd_p)
            + _diag_normal_log_prob(x_t, mu_x, sd_x)
            - _diag_normal_log_prob(z, mu_q, sd_q)
        )
        return self._recur(h, fx, fz), log_alpha

    @torch.no_grad()
    def sample(
        self, num_sequences: int, num_steps: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        check_positive_int("num_sequences", num_sequences)
        check_positive_int("num_steps", num_steps)
        ref = self.rnn.weight_hh
        h = ref.new_zeros(num_sequences, self.hidden_size)
        zs, xs = [], []
        for _ in range(num_steps):
            mu_p, sd_p = self._prior(h)
            z = mu_p + sd_p * torch.randn(mu_p.shape, generator=generator, dtype=ref.dtype, device=ref.device)
            fz = self.phi_z(z)
            mu_x, sd_x = self._emission(fz, h)
            x = mu_x + sd_x * torch.randn(mu_x.shape, generator=generator, dtype=ref.dtype, device=ref.device)
            h = self._recur(h, self.phi_x(x), fz)
            zs.append(z)
            xs.append(x)
        return torch.stack(zs, 1), torch.stack(xs, 1)
