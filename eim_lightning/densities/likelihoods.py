r"""Observation models p(x | decoder output) of the latent-variable models (ALGORITHMS.md 3).

``Bernoulli`` (binary images): the decoder gives one logit ``l_d`` per pixel and

    log p(x | l) = sum_d [ x_d l_d - softplus(l_d) ]                (= -BCE-with-logits)

Exact samples are ``x_d = 1[l_d + L_d > 0]`` with ``L_d`` standard logistic noise
(``L = log u - log(1 - u)``, ``u ~ U(0, 1)``), which is ``Bernoulli(sigmoid(l_d))``.
:meth:`Bernoulli.rsample` is the Gumbel straight-through estimator (Jang et al. 2017; Maddison
et al. 2017; ALGORITHMS.md 3, temperature ``tau = 0.7``): the *hard* sample above in the forward
pass and the gradient of the relaxed sample ``sigmoid((l_d + L_d) / tau)`` in the backward pass,

    x = hard + soft - stopgrad(soft),

so a binary EIM negative is differentiable with respect to the decoder. The output bias
starts at ``logit(data_mean)`` (clipped to ``[1e-4, 1 - 1e-4]``).

``Gaussian`` (continuous, e.g. jittered images on the 0-256 scale): the decoder gives
``(h_mu, h_sigma)`` per pixel, ``mu = data_scale * h_mu``,
``sigma = data_scale * max(softplus(h_sigma), min_scale)`` and ``log N(x; mu, sigma)``; its
samples are reparameterised. The mean's output bias starts at ``data_mean / data_scale``.

Shapes: decoder outputs ``[*batch, P * D]`` with ``P = params_per_dim``; ``x`` ``[B, D]``
broadcasts against ``[m, B, P * D]``; log-likelihoods are ``[*batch]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits

from ..ops import log_sigmoid
from .base import normal_log_prob, positive_scale

__all__ = ["Bernoulli", "Gaussian", "make_likelihood", "gumbel_straight_through_bernoulli", "LIKELIHOODS"]

_TINY = 1e-7


def _logistic_noise(like: Tensor) -> Tensor:
    u = torch.rand_like(like).clamp_(_TINY, 1.0 - _TINY)
    return torch.log(u) - torch.log1p(-u)


def gumbel_straight_through_bernoulli(logits: Tensor, temperature: float) -> Tensor:
    """Hard ``Bernoulli(sigmoid(logits))`` samples whose gradient is that of the relaxed
    ``sigmoid((logits + L) / temperature)`` with the same logistic noise ``L``."""
    noisy = logits + _logistic_noise(logits)
    hard = (noisy > 0).to(logits.dtype)
    soft = torch.sigmoid(noisy / temperature)
    return hard + (soft - soft.detach())


class Bernoulli(nn.Module):
    """Bernoulli pixels with logits from the decoder; Gumbel straight-through ``rsample``."""

    params_per_dim = 1
    data_kind = "binary"

    def __init__(self, temperature: float = 0.7, data_scale: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"gumbel_temperature must be > 0, got {temperature}")
        if data_scale != 1.0:
            raise ValueError(f"a Bernoulli likelihood models {{0, 1}} pixels: data_scale must be 1, got {data_scale}")
        self.temperature = temperature

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """``sum_d [x_d l_d - softplus(l_d)]`` in float32 or wider.

        For float32/float64 logits as ``sum_d [log sigmoid(l_d) - (1 - x_d) l_d]`` with
        :func:`~eim_lightning.ops.log_sigmoid` (torch's BCE-with-logits took a tenth of a
        float32 VAE step on a CPU); for bfloat16/float16 logits (autocast) as torch's fused
        BCE-with-logits, which autocast runs in float32 and which measured faster there
        (steps/s of the shipped static-MNIST VAE in ``Trainer.fit``, ``ours_steps_per_s`` of
        ``bench/images_vs_tf.py``, four runs alternating with the fused form everywhere: median 238
        against 210 in bf16-mixed; 152 against 164 in float32).
        """
        if params.dtype in (torch.float16, torch.bfloat16):
            return -binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none").float().sum(-1)
        return (log_sigmoid(params) - (1 - x.to(params.dtype)) * params).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor) -> Tensor:
        return (params + _logistic_noise(params) > 0).to(params.dtype)

    def rsample(self, params: Tensor) -> Tensor:
        return gumbel_straight_through_bernoulli(params, self.temperature)

    def check(self, x: Tensor, owner: str) -> None:
        binary = (x == 0) | (x == 1)
        if not bool(binary.all()):
            bad = x[~binary][:3].tolist()
            raise ValueError(
                f"{owner} has a Bernoulli likelihood and needs binary data (0. or 1.), but got "
                f"{int((~binary).sum())} other values, e.g. {bad}; binarize the images or use "
                f"likelihood='gaussian' for continuous data"
            )

    @torch.no_grad()
    def init_output_bias(self, bias: Tensor, data_mean: Tensor) -> None:
        p = data_mean.reshape(-1).to(bias.dtype).clamp(1e-4, 1 - 1e-4)
        bias.copy_(torch.log(p) - torch.log1p(-p))


class Gaussian(nn.Module):
    """Diagonal Gaussian pixels on the data's own scale (mean and scale from the decoder)."""

    params_per_dim = 2
    data_kind = "continuous"

    def __init__(self, temperature: float = 0.7, data_scale: float = 1.0, min_scale: float = 1e-3) -> None:
        super().__init__()
        if not data_scale > 0:
            raise ValueError(f"data_scale must be > 0, got {data_scale}")
        self.data_scale, self.min_scale = float(data_scale), min_scale

    def _loc_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        h_mu, h_sigma = params.chunk(2, dim=-1)
        return self.data_scale * h_mu, self.data_scale * positive_scale(h_sigma, self.min_scale)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        loc, scale = self._loc_scale(params)
        return normal_log_prob((x - loc) / scale, scale)

    def mean(self, params: Tensor) -> Tensor:
        return self._loc_scale(params)[0]

    def rsample(self, params: Tensor) -> Tensor:
        loc, scale = self._loc_scale(params)
        return loc + scale * torch.randn_like(loc)

    def sample(self, params: Tensor) -> Tensor:
        with torch.no_grad():
            return self.rsample(params)

    def check(self, x: Tensor, owner: str) -> None:
        return None

    @torch.no_grad()
    def init_output_bias(self, bias: Tensor, data_mean: Tensor) -> None:
        d = data_mean.numel()
        bias[:d].copy_(data_mean.reshape(-1).to(bias.dtype) / self.data_scale)


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def make_likelihood(name: str, temperature: float = 0.7, data_scale: float = 1.0) -> nn.Module:
    """``"bernoulli"`` or ``"gaussian"``."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](temperature=temperature, data_scale=data_scale)
