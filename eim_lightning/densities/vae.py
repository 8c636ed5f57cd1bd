r"""VAE: a one-latent-layer variational autoencoder whose prior is any density (ALGORITHMS.md 3).

The paper's "VAE" (Burda et al. 2016 sizes): latent ``z`` of 50 dimensions, encoder and decoder
MLPs 784-300-300 tanh (Glorot-uniform), diagonal Gaussian posterior

    q(z | x) = N(z; mu(x~), diag(sigma(x~)^2)),   sigma = max(softplus(.), 1e-5),  x~ = (x - mean) / scale,

Bernoulli decoder ``p(x | z) = prod_d Bernoulli(x_d; sigmoid(l_d(z)))`` with its output bias
initialised to ``logit(data_mean)`` (or a Gaussian decoder for continuous data), and a prior
``p(z)`` that is ``N(0, I)`` or any EIM over ``[50]`` ("VAE w/ SNIS/TRS/HIS/LARS prior"). One
replica of the bound is

    l(x) = log p(x | z) + beta [ log p_prior(z) - log q(z | x) ],    z = mu + sigma * eps,

with ``log p_prior`` the prior's one-sample lower bound; ``num_samples`` replicas combine into
the IWAE bound ``log (1/S) sum_s exp(l_s)`` (see :mod:`.latent`; any prior plugs in through
:meth:`Density.log_prob_for_elbo`). With a Normal prior and ``S = 1`` it is the textbook ELBO. As an
EIM's proposal in pixel space it provides ``log_prob_replicas`` (one-sample bounds) and ``rsample``
(prior, decoder, Gumbel straight-through Bernoulli with temperature 0.7).

**The latent-model protocol** (ALGORITHMS.md 4): with an exact prior (``N(0, I)``) the VAE offers
``log_joint(x, z) = log p(x | z) + log p(z)`` and ``latent_dim``, and :meth:`VAE.encoder_density`
gives its inference network as a :class:`~.conditional_normal.ConditionalNormal` ``q0(z | x)``
(sharing its parameters and its data centring), so the VAE can be the model of
:class:`~.iwae.IWAE` and :class:`~.eim_posterior_vae.EIMPosteriorVAE`: the IWAE bound with K
particles is then this VAE's own ``log_prob_lower_bound(x, K)`` on the same noise.

Shapes: ``x [B, D]``; ``z [m, B, L]``. Reference: Kingma & Welling 2014; Burda et al. 2016;
Bauer & Mnih 2019; Lawson et al. 2019.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..nn import MLP
from .base import Density
from .conditional_normal import ConditionalNormal
from .latent import Inference, LatentVariableModel, gaussian_from, normal_log_prob

__all__ = ["VAE"]

#: the shortest run the VAE's training bound is compiled for by default (:attr:`VAE.compile_min_steps`):
#: on 2 CPU cores its compiled step was 1.30-1.46x faster with every prior, in float32 and
#: bf16-mixed, after 19-28 s of compilation with an empty cache, which paid for itself after
#: 5,700-11,700 steps (``bench/vae_compile.py``, docs/BENCHMARKS_IMAGES.md)
COMPILE_MIN_STEPS = 12_000


class VAE(LatentVariableModel):
    """Variational autoencoder with an MLP encoder and decoder and any prior.

    Args:
        data_dim: pixels ``D``.
        latent_dim: latent dimension ``L``.
        hidden_sizes: hidden layers of the encoder and of the decoder (tanh).
        prior: density over ``[latent_dim]`` (default ``N(0, I)``).
        **kwargs: ``likelihood`` (``"bernoulli"`` or ``"gaussian"``), ``data_scale``,
            ``gumbel_temperature``, ``min_scale``, ``data_mean``, ``eval_chunk_size``: see
            :class:`~.latent.LatentVariableModel`.
    """

    def __init__(
        self,
        data_dim: int = 784,
        latent_dim: int = 50,
        hidden_sizes: Sequence[int] = (300, 300),
        prior: Density | None = None,
        **kwargs,
    ) -> None:
        super().__init__(data_dim, latent_dim, prior, **kwargs)
        self.encoder = MLP(data_dim, list(hidden_sizes), 2 * latent_dim)
        self.decoder = MLP(latent_dim, list(hidden_sizes), self.likelihood.params_per_dim * data_dim)
        self._finish_init()

    @property
    def compile_min_steps(self) -> int:  # type: ignore[override]
        """Compiled from :data:`COMPILE_MIN_STEPS` steps on (the encoder's and decoder's matrix
        products and the elementwise work between them, fused), or from its prior's threshold if
        that is lower (HIS)."""
        prior = self.prior.compile_min_steps
        return COMPILE_MIN_STEPS if prior is None else min(prior, COMPILE_MIN_STEPS)

    @property
    def output_bias(self) -> Tensor:
        return self.decoder.net[-1].bias

    def _infer(self, x: Tensor, m: int) -> Inference:
        loc, scale = gaussian_from(self.encoder(self.encoder_input(x)), self.min_scale)
        eps = self.posterior_noise((m, *loc.shape), loc)
        z = loc + scale * eps
        log_q = normal_log_prob(eps, scale)
        zero = log_q.new_zeros(())
        return Inference(z, log_q, zero, zero, self.decoder(z))

    def _generate(self, z_top: Tensor, reparameterized: bool) -> Tensor:
        return self.decoder(z_top)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x, z) = log p(x | z) + log p(z)``: ``[*S, B]`` for ``z [*S, B, L]`` and ``x [B, D]``
        (or ``[*S, B, D]``).

        Needs a prior with an exact log-density (``N(0, I)``); an EIM prior has only bounds."""
        if not self.prior.exact_log_prob:
            raise TypeError(
                f"{type(self).__name__}.log_joint needs a prior with an exact log-density (e.g. Normal), "
                f"got a {type(self.prior).__name__} prior, which only bounds log p(z)"
            )
        if z.shape[-1:] != (self.latent_dim,) or x.shape[-1:] != self.event_shape:
            raise ValueError(
                f"{type(self).__name__}.log_joint takes x [..., {self.event_shape[0]}] and z [..., "
                f"{self.latent_dim}], got {list(x.shape)} and {list(z.shape)}"
            )
        if self.checks_values():
            self.likelihood.check(x, type(self).__name__)
        return self.likelihood.log_prob(x, self.decoder(z)) + self.prior.log_prob(z)

    def encoder_density(self) -> ConditionalNormal:
        """The inference network as a density ``q0(z | x)`` over ``[latent_dim]`` with ``context=x``:
        the same parameters (trained together) and the same input centring as :meth:`_infer`."""
        return ConditionalNormal(_CentredEncoder(self), self.latent_dim, min_scale=self.min_scale)


class _CentredEncoder(nn.Module):
    """``x -> encoder((x - data_mean) / data_scale)``: the VAE's encoder network, shared.

    It registers the encoder (a parameter shared by two owners is trained once) but keeps the
    VAE itself unregistered, in a tuple, so the VAE is not a submodule twice; its data mean is read
    at call time (``.to()`` replaces buffers)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self._vae = (vae,)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(self._vae[0].encoder_input(x))
