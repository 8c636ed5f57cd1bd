"""Network wrappers for EIMs on images.

``Rescaled(net, scale)`` evaluates ``net(scale * x)``: the energy, acceptance and potential
networks of EIMs on continuous (jittered, 0-256) images see mean-centred inputs of order 100,
which saturate a tanh MLP; ``scale = 1/256`` brings them to order 1. (Binary images need none.)
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Rescaled"]


class Rescaled(nn.Module):
    """``net(scale * x[, context])``."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.net, self.scale = net, float(scale)

    def forward(self, x: Tensor, *context: Tensor) -> Tensor:
        return self.net(self.scale * x, *context)
