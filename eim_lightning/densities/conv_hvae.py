r"""ConvHVAE: the two-stochastic-layer convolutional VAE of the LARS and EIM papers (ALGORITHMS.md 3).

Latents ``z2`` (top, 50-d, the prior's) and ``z1`` (50-d). Generative model

    p(z2) = any density (N(0, I) or an EIM),   p(z1 | z2) = N(MLP_300-300-tanh(z2)),
    p(x | z1, z2) = Bernoulli(deconv(dense512-tanh[dense300-tanh(z1) ++ dense300-tanh(z2)])),

the decoder reshaping to 4x4x32, then deconv 32 (4x4, stride 2, ReLU) to 8x8, cropped to 7x7,
deconv 32 (4x4, s2, ReLU) to 14x14 and deconv 1 (4x4, s2) to 28x28 logits, plus a per-pixel
output bias initialised to ``logit(data_mean)``. Inference network

    q(z2 | x)     = N(dense_100(trunk(x~))),
    q(z1 | x, z2) = N(dense_100(dense300-tanh[trunk'(x~) ++ dense512-tanh(z2)])),

where a trunk is 3x conv 32 (4x4, stride 2, ReLU) with TensorFlow "SAME" padding
(28 -> 14 -> 7 -> 4; padding ``(k - s)`` split with the extra pixel right/below), flattened to 512,
and ``trunk'`` has the same architecture with its own weights. All Gaussians have scale
``max(softplus(.), 1e-5)``; all weights are Glorot-uniform, biases zero. One replica of the bound:

    l(x) = log p(x | z1, z2) + beta [ log p(z1 | z2) + log p_prior(z2) - log q(z2 | x) - log q(z1 | x, z2) ],

combined over replicas as in :mod:`.latent` (IWAE; EIM/LARS priors on ``z2``).
Data are flat ``[B, 784]`` 28x28 images. References: Bauer & Mnih 2019 (appendix); Lawson et al. 2019.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import Density
from .latent import Inference, LatentVariableModel, gaussian_from, normal_log_prob

__all__ = ["ConvHVAE", "Conv2dSame"]

_SIDE = 28


class Conv2dSame(nn.Conv2d):
    """``Conv2d`` with TensorFlow's "SAME" padding: output side ``ceil(input / stride)``."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _trunk(channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (1, channels, channels):
        layers += [Conv2dSame(c_in, channels, 4, stride=2), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten())


def _glorot_(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvHVAE(LatentVariableModel):
    """Two-stochastic-layer convolutional VAE over 28x28 images, the prior on the top latent.

    Args:
        data_dim: must be 784 (28x28 images, flat).
        latent_dim: dimension of ``z1`` and ``z2``.
        prior: density over ``[latent_dim]`` for ``z2`` (default ``N(0, I)``).
        channels: convolution channels (32).
        eval_chunk_size: replicas evaluated at once (16: convolutions are memory-hungry).
        **kwargs: ``likelihood``, ``data_scale``, ``gumbel_temperature``, ``min_scale``,
            ``data_mean``: see :class:`~.latent.LatentVariableModel`.
    """

    def __init__(
        self,
        data_dim: int = 784,
        latent_dim: int = 50,
        prior: Density | None = None,
        channels: int = 32,
        eval_chunk_size: int = 16,
        **kwargs,
    ) -> None:
        if data_dim != _SIDE * _SIDE:
            raise ValueError(f"ConvHVAE models 28x28 images: data_dim must be 784, got {data_dim}")
        super().__init__(data_dim, latent_dim, prior, eval_chunk_size=eval_chunk_size, **kwargs)
        c, L, p = channels, latent_dim, self.likelihood.params_per_dim
        flat = 16 * c  # 4x4xC
        self.channels = c
        # q(z2 | x)
        self.q_z2_trunk = _trunk(c)
        self.q_z2_head = nn.Linear(flat, 2 * L)
        # q(z1 | x, z2)
        self.q_z1_trunk = _trunk(c)
        self.q_z1_from_z2 = nn.Linear(L, 512)
        self.q_z1_hidden = nn.Linear(flat + 512, 300)
        self.q_z1_head = nn.Linear(300, 2 * L)
        # p(z1 | z2)
        self.p_z1 = nn.Sequential(nn.Linear(L, 300), nn.Tanh(), nn.Linear(300, 300), nn.Tanh(), nn.Linear(300, 2 * L))
        # p(x | z1, z2)
        self.p_x_from_z1 = nn.Linear(L, 300)
        self.p_x_from_z2 = nn.Linear(L, 300)
        self.p_x_hidden = nn.Linear(600, flat)
        self.deconv1 = nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)  # 4 -> 8 (crop to 7)
        self.deconv2 = nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)  # 7 -> 14
        self.deconv3 = nn.ConvTranspose2d(c, p, 4, stride=2, padding=1)  # 14 -> 28
        for name, child in self.named_children():
            if name not in ("prior", "likelihood"):  # a given prior keeps its own weights
                _glorot_(child)
        self.pixel_bias = nn.Parameter(torch.zeros(p * data_dim))
        self._finish_init()

    @property
    def output_bias(self) -> Tensor:
        return self.pixel_bias

    def _image(self, x: Tensor) -> Tensor:
        return self.encoder_input(x).reshape(-1, 1, _SIDE, _SIDE)

    def _decode(self, z1: Tensor, z2: Tensor) -> Tensor:
        batch = z1.shape[:-1]
        h = torch.cat([torch.tanh(self.p_x_from_z1(z1)), torch.tanh(self.p_x_from_z2(z2))], dim=-1)
        h = torch.tanh(self.p_x_hidden(h)).reshape(-1, self.channels, 4, 4)
        h = F.relu(self.deconv1(h))[..., :7, :7]
        h = F.relu(self.deconv2(h))
        out = self.deconv3(h)  # [N, P, 28, 28]
        return out.reshape(*batch, -1) + self.pixel_bias

    def _infer(self, x: Tensor, m: int) -> Inference:
        img = self._image(x)
        loc2, scale2 = gaussian_from(self.q_z2_head(self.q_z2_trunk(img)), self.min_scale)
        eps2 = self.posterior_noise((m, *loc2.shape), loc2)
        z2 = loc2 + scale2 * eps2
        features = self.q_z1_trunk(img).expand(m, -1, -1)
        h = torch.cat([features, torch.tanh(self.q_z1_from_z2(z2))], dim=-1)
        loc1, scale1 = gaussian_from(self.q_z1_head(torch.tanh(self.q_z1_hidden(h))), self.min_scale)
        eps1 = self.posterior_noise(loc1.shape, loc1)
        z1 = loc1 + scale1 * eps1
        prior_loc1, prior_scale1 = gaussian_from(self.p_z1(z2), self.min_scale)
        log_p1 = normal_log_prob((z1 - prior_loc1) / prior_scale1, prior_scale1)
        return Inference(z2, normal_log_prob(eps2, scale2), normal_log_prob(eps1, scale1), log_p1, self._decode(z1, z2))

    def _generate(self, z_top: Tensor, reparameterized: bool) -> Tensor:
        loc1, scale1 = gaussian_from(self.p_z1(z_top), self.min_scale)
        return self._decode(loc1 + scale1 * torch.randn_like(loc1), z_top)
