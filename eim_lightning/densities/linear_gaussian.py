r"""A linear-Gaussian latent-variable model (factor analysis): the exact oracle of the unification.

    z ~ N(0, I_{d_z}),     x | z ~ N(W z + b, diag(sigma^2)),
    log p(x, z) = log N(z; 0, I) + log N(x; W z + b, diag(sigma^2)),
    p(x) = N(x; b, W W^T + diag(sigma^2)),                                 (exact marginal)
    p(z | x) = N(z; S W^T D^{-1} (x - b), S),  S = (I + W^T D^{-1} W)^{-1},  D = diag(sigma^2).

Every variational bound on ``log p(x)`` (ELBO, IWAE, an EIM posterior's ELBO) can be compared with
the exact :meth:`LinearGaussianModel.log_prob`, and ``q0 = p(z|x)`` makes the bounds tight, which
is how the tests check them. ``W``, ``b`` and ``sigma`` are learnable by default
(``sigma = max(softplus(raw), min_scale)``), so the model is also trained by the bounds it checks.

The latent-model protocol the variational modules use (:mod:`.eim_posterior_vae`, :mod:`.iwae`):
``model.log_joint(x, z)`` with ``x [*S, B, Dx]`` (or ``[B, Dx]``) broadcast against
``z [*S, B, Dz]``, returning ``[*S, B]``; ``model.latent_dim``; ``model.event_shape``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Density, check_positive_int, normal_log_prob, positive_scale, standard_normal_log_prob
from .normal import inverse_softplus

__all__ = ["LinearGaussianModel"]


class LinearGaussianModel(Density):
    """``z ~ N(0, I)``, ``x | z ~ N(W z + b, diag(sigma^2))`` over ``x [data_dim]`` (exact ``log p(x)``).

    Args:
        data_dim: dimension of x.
        latent_dim: dimension of z.
        weight: ``W [data_dim, latent_dim]`` (default: Glorot-uniform random); a float tensor
            sets the dtype of every parameter.
        bias: ``b [data_dim]`` (default 0).
        noise_scale: ``sigma``, a float or ``[data_dim]`` (default 1).
        learnable: make ``W``, ``b`` and ``sigma`` parameters (else buffers).
        min_scale: lower limit of a learnable ``sigma``.
    """

    exact_log_prob = True

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        noise_scale: float | Tensor = 1.0,
        learnable: bool = True,
        min_scale: float = 1e-3,
    ) -> None:
        check_positive_int("data_dim", data_dim)
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        super().__init__((data_dim,))
        given = weight if isinstance(weight, Tensor) and weight.is_floating_point() else None
        dtype = given.dtype if given is not None else torch.get_default_dtype()  # a given W sets the dtype
        if weight is None:
            weight = nn.init.xavier_uniform_(torch.empty(data_dim, latent_dim, dtype=dtype))
        weight = torch.as_tensor(weight, dtype=dtype).clone()
        bias = (
            torch.zeros(data_dim, dtype=dtype)
            if bias is None
            else torch.as_tensor(bias, dtype=dtype).expand(data_dim).clone()
        )
        scale = torch.as_tensor(noise_scale, dtype=dtype).expand(data_dim).clone()
        if weight.shape != (data_dim, latent_dim):
            raise ValueError(
                f"weight must be [data_dim, latent_dim] = {[data_dim, latent_dim]}, got {list(weight.shape)}"
            )
        if not bool((scale > min_scale).all()):
            raise ValueError(f"noise_scale must exceed min_scale={min_scale}, got {noise_scale}")
        self.learnable, self.min_scale = learnable, min_scale
        if learnable:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
            self.raw_noise_scale = nn.Parameter(inverse_softplus(scale))
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
            self.register_buffer("fixed_noise_scale", scale)

    @property
    def noise_scale(self) -> Tensor:
        return positive_scale(self.raw_noise_scale, self.min_scale) if self.learnable else self.fixed_noise_scale

    def decode(self, z: Tensor) -> Tensor:
        """The mean ``W z + b`` of ``p(x | z)``: ``[*S, Dx]``."""
        return z @ self.weight.T + self.bias

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x, z)`` ``[*S, B]`` for ``x [B, Dx]`` (or ``[*S, B, Dx]``) and ``z [*S, B, Dz]``."""
        # in plain operations, not torch.distributions.Normal: its argument check reads values back
        # to the host, and its number arguments become tensors copied from the host at every call,
        # which a CUDA graph cannot capture
        scale = self.noise_scale
        return standard_normal_log_prob(z) + normal_log_prob((x - self.decode(z)) / scale, scale)

    def marginal(self) -> torch.distributions.MultivariateNormal:
        """``p(x) = N(b, W W^T + diag(sigma^2))``."""
        cov = self.weight @ self.weight.T + torch.diag(self.noise_scale.square())
        return torch.distributions.MultivariateNormal(self.bias, covariance_matrix=cov)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` ``[*S]`` of ``x [*S, Dx]``."""
        return self.marginal().log_prob(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The exact posterior ``p(z | x) = N(mean [B, Dz], cov [Dz, Dz])``."""
        w_over_d = self.weight / self.noise_scale.square().unsqueeze(-1)  # D^{-1} W
        precision = torch.eye(self.latent_dim, dtype=x.dtype, device=x.device) + self.weight.T @ w_over_d
        cov = torch.linalg.inv(precision)
        return (x - self.bias) @ w_over_d @ cov, cov

    def rsample(self, n: int, context: Tensor | None = None) -> Tensor:
        shape = self._sample_shape(n, context)
        z = torch.randn(*shape, self.latent_dim, dtype=self.weight.dtype, device=self.weight.device)
        mean = self.decode(z)
        return mean + self.noise_scale * torch.randn_like(mean)

    def log_unnormalized_density(self, x: Tensor) -> Tensor:
        return self.log_prob(x)
