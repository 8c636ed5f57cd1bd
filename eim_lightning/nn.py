"""Networks used as energies, potentials, acceptance logits and momentum models.

``MLP(in_dim, hidden_sizes, out_dim, activation="tanh")`` is the authors' default network:
Glorot-uniform weights, zero biases. ``output_bias=False`` drops the bias of the last layer,
for networks used only through their gradient (HIS's potential: a constant offset gets no
gradient, which multi-process DDP would otherwise report as an unused parameter). With ``context_dim > 0`` it is conditional: it is called
as ``net(x, context)`` and sees the concatenation ``[x, context]`` (flattened per example), the
shape conditional EIMs (posteriors q(z|x), CPC's q(x|c)) need.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


class MLP(nn.Module):
    """Fully connected network ``in_dim (+ context_dim) -> hidden_sizes -> out_dim``.

    Inputs may carry any number of leading batch dimensions; trailing event dimensions beyond
    ``in_dim`` are not flattened, so pass ``[..., in_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_sizes: Sequence[int] = (20, 20),
        out_dim: int = 1,
        activation: str = "tanh",
        context_dim: int = 0,
        output_bias: bool = True,
    ) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1 or context_dim < 0:
            raise ValueError(
                f"MLP needs in_dim >= 1, out_dim >= 1, context_dim >= 0; got {in_dim}, {out_dim}, {context_dim}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.in_dim, self.out_dim, self.context_dim = in_dim, out_dim, context_dim
        sizes = [in_dim + context_dim, *hidden_sizes, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            linear = nn.Linear(a, b, bias=output_bias or not last)
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
            layers.append(linear)
            if not last:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if (context is None) != (self.context_dim == 0):
            raise ValueError(
                f"this MLP has context_dim={self.context_dim}; it was called "
                f"{'without' if context is None else 'with'} a context"
            )
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MLP expected inputs [..., {self.in_dim}], got {list(x.shape)}")
        if context is not None:
            context = context.expand(*x.shape[:-1], context.shape[-1])
            x = torch.cat([x, context.to(x.dtype)], dim=-1)
        return self.net(x)
