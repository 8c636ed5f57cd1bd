"""Networks used as energies, potentials, acceptance logits and momentum models.

``MLP(in_dim, hidden_sizes, out_dim, activation="tanh")`` is the authors' default network:
Glorot-uniform weights, zero biases. ``output_bias=False`` drops the bias of the last layer,
for networks used only through their gradient (HIS's potential: a constant offset gets no
gradient, which multi-process DDP would otherwise report as an unused parameter). With
``context_dim > 0`` it is conditional: it is called as ``net(x, context)`` and sees the
concatenation ``[x, context]`` (flattened per example), the shape conditional EIMs (posteriors
q(z|x), CPC's q(x|c)) need.

Where nothing records (``no_grad``, inference mode: sampling, evaluation, images) a large call of
a tanh MLP on the CPU runs as a sigmoid network, ``tanh(a) = 2 sigmoid(2a) - 1`` folded into the
weights (:meth:`MLP._sigmoid_forward`): the same function to a few eps, in half the time for a 2-D
sampler's energy.

:meth:`MLP.input_gradient` is the closed-form gradient of a scalar MLP with respect to its input,
by the chain rule written out (``g_L = W_L``, ``g_l = (g_{l+1} * s'(a_l)) W_l``, ``a_l`` the
pre-activations), in ordinary differentiable operations: HIS's leapfrog differentiates it once
more with plain backward instead of double backward through ``autograd.grad`` (fewer, fusable
operations; ``torch.compile`` can trace it).

:meth:`MLP.forward_cached` and :meth:`MLP.parameter_gradients` are the forward pass keeping
each layer's output and the backward pass for the parameters written out
(``dL/dW_l = delta_l^T h_{l-1}``, ``dL/db_l = sum_n delta_l``,
``delta_{l-1} = (delta_l W_l) * s'(a_{l-1})``), without autograd: a density's closed-form
training step (``Density.closed_form_training_bound``) uses them where the autograd engine's
per-operation cost would dominate a small network's step.

:meth:`MLP.input_gradient_cached` and :meth:`MLP.input_gradient_vjp` are the same for the input
gradient ``g(h) = d net(h) / dh``, which HIS's closed-form step differentiates once more: for a
cotangent ``v``, ``F = v . g(h)`` is the directional derivative of the network along ``v``,
computed by the forward-mode (tangent) pass ``adot_l = hdot_{l-1} W_l^T``,
``hdot_l = s'(a_l) adot_l`` from ``hdot_0 = v`` (``F = W_L hdot_{L-1}``), and its reverse pass
gives ``dF/dh = H v`` (the Hessian-vector product) and ``dF/dtheta``: with ``gamma_l`` the input
gradient's chain (``gamma_{L-1} = W_L``, ``gamma_{l-1} = (gamma_l s'(a_l)) W_l``) and
``delta_l = gamma_l s'(a_l)``, layer by layer from the top (``hbar_{L-1} = 0``)
``abar_l = hbar_l s'(a_l) + gamma_l s''(a_l) adot_l``, ``hbar_{l-1} = abar_l W_l``,
``dF/dW_l = delta_l^T hdot_{l-1} + abar_l^T h_{l-1}``, ``dF/db_l = sum_n abar_l`` and
``dF/dW_L = sum_n hdot_{L-1}`` (``b_L`` gets none).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ACTIVATIONS", "DERIVATIVES", "SECOND_DERIVATIVES", "Tanh"]

#: s'(a) of each activation from its pre-activation ``a`` and output ``s(a)``
DERIVATIVES = {
    "tanh": lambda a, s: 1 - s.square(),
    "relu": lambda a, s: (a > 0).to(s.dtype),
    "elu": lambda a, s: torch.where(a > 0, torch.ones_like(s), s + 1),
    "softplus": lambda a, s: torch.sigmoid(a),
    "silu": lambda a, s: torch.sigmoid(a) * (1 + a * (1 - torch.sigmoid(a))),
}

#: ``gamma s''(a)`` of each activation, its second derivative times the input gradient's chain
#: ``gamma``, from the pre-activation ``a``, output ``s``, slope ``d = s'(a)`` (None for tanh: see
#: :func:`_times_slope`), ``gamma`` and ``delta = gamma s'(a)``; tanh's ``s'' = -2 s s'`` makes it
#: ``-2 s delta``
SECOND_DERIVATIVES = {
    "tanh": lambda a, s, d, gamma, delta: -2 * s * delta,
    "relu": lambda a, s, d, gamma, delta: torch.zeros_like(s),
    "elu": lambda a, s, d, gamma, delta: gamma * torch.where(a > 0, torch.zeros_like(s), s + 1),
    "softplus": lambda a, s, d, gamma, delta: gamma * (d * (1 - d)),
    "silu": lambda a, s, d, gamma, delta: (
        gamma * (torch.sigmoid(a) * (1 - torch.sigmoid(a)) * (2 + a * (1 - 2 * torch.sigmoid(a))))
    ),
}


#: Recorded calls at least this large go through :class:`_SigmoidTanh` (see :class:`Tanh`).
_FUNCTION_MIN_ELEMENTS = 2**16
#: Unrecorded calls at least this large are the composite (see :class:`Tanh`).
_COMPOSITE_MIN_ELEMENTS = 2**12


def _sigmoid_tanh(x: Tensor) -> Tensor:
    return torch.sigmoid(x * 2).mul_(2).sub_(1)


class _SigmoidTanh(torch.autograd.Function):
    """``2 sigmoid(2x) - 1`` forward, torch's fused ``tanh_backward`` (``g (1 - y^2)``) backward;
    twice differentiable (the backward is itself recorded where a graph is built), and usable
    under ``torch.func`` transforms (``generate_vmap_rule``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _sigmoid_tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def _sigmoid_form_applies(x: Tensor) -> bool:
    """Whether tanh on ``x`` may take a sigmoid form (:class:`Tanh`, :meth:`MLP._sigmoid_forward`):
    on the CPU in float32/float64, outside ``torch.compile``."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()


def _affine(linear: nn.Linear, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    """``(alpha W, b + beta W 1)`` of a layer whose input is ``alpha h + beta``."""
    weight = linear.weight if alpha == 1.0 else linear.weight * alpha
    bias = linear.bias if linear.bias is not None else weight.new_zeros(weight.shape[0])
    if beta != 0.0:
        bias = bias + beta * linear.weight.sum(1)
    return weight, bias


class Tanh(nn.Module):
    """``tanh``; on the CPU in float32/float64 computed as ``2 sigmoid(2x) - 1`` for calls of at
    least 2^12 elements where gradients are off (no_grad, inference mode) and for large recorded calls.

    The same function: on these CPUs torch's ``tanh`` kernel takes about 2 ns per float32 element on
    one thread against 0.2 ns for ``sigmoid`` (AVX-512 EPYC, torch 2.14;
    ``bench/activation_speed.py``; on an AVX2 EPYC 3.6-4.6 ns against 0.9-1.1 at ``16384 x 20``,
    where the no_grad composite took 1.3-1.6), and the tanh layers were a fifth of a closed-form 2-D step and
    half of an SNIS sampler's time. Below 2^12 elements the composite's four calls cost more than
    ``tanh``'s kernel (the ``128 x 20`` row of ``bench/activation_speed.py``: HIS's 2-D leapfrog
    layer), so there it is ``torch.tanh``. The error is a few ``eps`` in absolute terms (not
    relative near 0), below what the next layer's matmul rounds away; the output stays in [-1, 1].
    Where autograd records the call on a tensor of at least 2^16 elements, the backward is torch's
    own fused ``tanh_backward`` of that output (an ``autograd.Function``; the composite's three
    recorded backward operations were slower than ``torch.tanh``): forward and backward of an MNIST
    prior's ``[1152, 100]`` layer took 0.73 ns per element against ``torch.tanh``'s 1.35; below 2^16
    elements the Function's own per-call cost ate the gain (``[128, 300]``: 1.77 against 1.63;
    ``bench/activation_speed.py --threads 2``), so smaller recorded calls are ``torch.tanh``. It is
    ``torch.tanh`` on CUDA (a fast kernel), in bfloat16/float16 (whose ``2 s - 1`` would cancel) and
    inside ``torch.compile`` (which generates its own vectorised tanh).
    """

    def forward(self, x: Tensor) -> Tensor:
        if _sigmoid_form_applies(x):
            if not torch.is_grad_enabled():  # nothing records: the in-place composite
                return _sigmoid_tanh(x) if x.numel() >= _COMPOSITE_MIN_ELEMENTS else torch.tanh(x)
            if x.requires_grad and x.numel() >= _FUNCTION_MIN_ELEMENTS:
                return _SigmoidTanh.apply(x)
        return torch.tanh(x)  # also where autograd may record a tensor that does not say so (vmap)


ACTIVATIONS = {
    "tanh": Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


def _times_slope(t: Tensor, activation: str, a: Tensor, s: Tensor, slope: Tensor | None = None) -> Tensor:
    """``t s'(a)`` of a layer with pre-activation ``a`` and output ``s``: for tanh torch's fused
    ``tanh_backward(t, s) = t (1 - s^2)``, one operation instead of the slope's two and a product;
    else ``t`` times ``slope`` (computed from :data:`DERIVATIVES` when not given)."""
    if activation == "tanh":
        return torch.ops.aten.tanh_backward(t, s)
    return t * (DERIVATIVES[activation](a, s) if slope is None else slope)


def _sum_of_outer_products(left: Tensor, right: Tensor) -> Tensor:
    """``left^T right`` ``[P, Q]`` of ``[N, P]`` and ``[N, Q]``; as ``(right^T left)^T`` (a
    transposed view) when ``Q < P``: MKL took about 3x longer for the tall result (a 2-D network's
    first layer, ``[20, 2]``; the last table of ``bench/activation_speed.py``)."""
    return right.t().mm(left).t() if right.shape[1] < left.shape[1] else left.t().mm(right)


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
        self.activation = activation
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
        h = self._input(x, context)
        if (  # nothing records: the sigmoid network, for calls of at least 2^12 first-layer units
            self.activation == "tanh"
            and not torch.is_grad_enabled()
            and _sigmoid_form_applies(h)
            and h.numel() // h.shape[-1] * self.net[0].out_features >= _COMPOSITE_MIN_ELEMENTS
        ):
            return self._sigmoid_forward(h)
        return self.net(h)

    def _sigmoid_forward(self, h: Tensor) -> Tensor:
        """``net(h)`` of a tanh MLP where nothing records, as a sigmoid network: with
        ``tanh(a) = 2 sigmoid(2a) - 1`` and each layer's input written ``s = alpha h + beta``
        (``alpha = 1, beta = 0`` for the data, ``2, -1`` after a hidden layer), layer ``W, b``
        gives ``a = (alpha W) h + (b + beta W 1)``, so a hidden layer is one ``addmm`` and an
        in-place ``sigmoid`` of ``2a`` (doubling is exact in floating point), and the last is
        one ``addmm``: one pass over each hidden layer where the composite :class:`Tanh` takes
        four. For the 2-D energy over an SNIS sampler's chunk of 32768 particles it took half the
        time of the layers as written (the MLP table of ``bench/activation_speed.py``, 1 and 2
        threads); for an MNIST prior's 1024 particles about the same."""
        *hidden, last = self._linears
        lead, h = h.shape[:-1], h.reshape(-1, h.shape[-1])
        alpha, beta = 1.0, 0.0
        for linear in hidden:
            weight, bias = _affine(linear, alpha, beta)
            h = torch.addmm(bias, h, weight.t(), beta=2, alpha=2).sigmoid_()
            alpha, beta = 2.0, -1.0
        weight, bias = _affine(last, alpha, beta)
        return torch.addmm(bias, h, weight.t()).reshape(*lead, -1)

    @property
    def has_input_gradient(self) -> bool:
        """Whether :meth:`input_gradient` is available (a scalar output and a known derivative)."""
        return self.out_dim == 1 and self.activation in DERIVATIVES

    def _input(self, x: Tensor, context: Tensor | None) -> Tensor:
        if (context is None) != (self.context_dim == 0):
            raise ValueError(
                f"this MLP has context_dim={self.context_dim}; it was called "
                f"{'without' if context is None else 'with'} a context"
            )
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MLP expected inputs [..., {self.in_dim}], got {list(x.shape)}")
        if context is None:
            return x
        context = context.expand(*x.shape[:-1], context.shape[-1])
        return torch.cat([x, context.to(x.dtype)], dim=-1)

    def forward_cached(self, h: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``net(h)`` of an unconditional ``h [N, in_dim]``, ``[N, out_dim]``, and what
        :meth:`parameter_gradients` needs: the hidden layers' pre-activations and outputs."""
        cache = [h]
        for module in self.net:
            h = module(h)
            cache.append(h)
        return h, cache

    def parameter_gradients(self, cache: list[Tensor], delta: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(parameter, gradient)`` of every parameter, for the gradient of ``sum(delta * net(h))``,
        ``delta [N, out_dim]`` and the cache of :meth:`forward_cached`."""
        if self.activation not in DERIVATIVES:
            raise ValueError(
                f"parameter_gradients needs an activation in {sorted(DERIVATIVES)}, got {self.activation!r}"
            )
        linears = self._linears
        grads: list[tuple[Tensor, Tensor]] = []
        for i in reversed(range(len(linears))):
            linear, h_in = linears[i], cache[2 * i]
            if linear.bias is not None:
                grads.append((linear.bias, delta.sum(0)))
            grads.append((linear.weight, _sum_of_outer_products(delta, h_in)))
            if i == 0:
                break
            delta = _times_slope(delta.mm(linear.weight), self.activation, cache[2 * i - 1], h_in)
        return grads[::-1]

    def input_gradient(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``d net(x, c) / dx`` of a scalar MLP, ``[..., in_dim]``, differentiable (see the module doc)."""
        g, _ = self.input_gradient_cached(self._input(x, context))
        return g.expand(*x.shape[:-1], g.shape[-1])[..., : self.in_dim]

    def input_gradient_cached(self, h: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        """The input gradient ``d net(h) / dh`` of a scalar MLP at its full input ``h [..., in]``
        (``[1, in]`` for a network without hidden layers) and, per hidden layer, what
        :meth:`input_gradient_vjp` needs: ``[h_in, a, s, s'(a), gamma, delta]`` (module doc; ``s'(a)``
        is None for tanh, whose products with it are ``tanh_backward(., s)``)."""
        if not self.has_input_gradient:
            raise ValueError(
                f"input_gradient needs out_dim == 1 and an activation in {sorted(DERIVATIVES)}; "
                f"this MLP has out_dim={self.out_dim}, activation={self.activation!r}"
            )
        derivative = None if self.activation == "tanh" else DERIVATIVES[self.activation]
        *hidden, last = self._linears
        weights = [linear.weight for linear in hidden]
        layers: list[list[Tensor]] = []
        for linear, weight, activation in zip(hidden, weights, self._activations):
            a = nn.functional.linear(h, weight, linear.bias)
            s = activation(a)
            layers.append([h, a, s, None if derivative is None else derivative(a, s)])
            h = s
        g = last.weight  # [1, H_last]
        for weight, layer in zip(reversed(weights), reversed(layers)):
            delta = _times_slope(g, self.activation, *layer[1:4])
            layer += [g, delta]
            g = delta @ weight
        return g, layers

    def input_gradient_vjp(self, cache: list[list[Tensor]], v: Tensor) -> tuple[Tensor, list]:
        """For a cotangent ``v [N, in]`` of :meth:`input_gradient_cached`'s gradient (at ``[N, in]``
        inputs): ``d(v . g)/dh = H v`` ``[N, in]`` and this evaluation's terms of ``d(v . g)/dtheta``,
        which :meth:`input_gradient_parameter_gradients` sums over evaluations (module doc)."""
        if self.activation not in SECOND_DERIVATIVES:
            raise ValueError(
                f"input_gradient_vjp needs an activation in {sorted(SECOND_DERIVATIVES)}, got {self.activation!r}"
            )
        second = SECOND_DERIVATIVES[self.activation]
        weights = [linear.weight for linear in self._linears[: len(cache)]]
        hdot, dots = v, []
        for weight, layer in zip(weights, cache):  # the tangent pass
            adot = hdot.mm(weight.t())
            dots.append((hdot, adot))
            hdot = _times_slope(adot, self.activation, *layer[1:4])
        terms: list = [hdot]  # W_L's: sum_n hdot_{L-1}
        hbar = None
        for i in reversed(range(len(cache))):
            h_in, a, s, slope, gamma, delta = cache[i]
            hdot_in, adot = dots[i]
            abar = second(a, s, slope, gamma, delta) * adot
            if hbar is not None:
                abar = abar + _times_slope(hbar, self.activation, a, s, slope)
            terms.append((delta, hdot_in, abar, h_in))
            hbar = abar.mm(weights[i])
        return (torch.zeros_like(v) if hbar is None else hbar), terms

    def input_gradient_parameter_gradients(self, evaluations: list[list]) -> list[tuple[Tensor, Tensor]]:
        """``(parameter, gradient)`` of ``sum_k v_k . g(h_k)`` from the terms of
        :meth:`input_gradient_vjp` at each evaluation ``k``: one matrix product per layer."""
        linears = self._linears
        grads = [(linears[-1].weight, torch.cat([terms[0] for terms in evaluations]).sum(0, keepdim=True))]
        for depth, linear in enumerate(reversed(linears[:-1]), start=1):
            parts = [terms[depth] for terms in evaluations]
            left = torch.cat([t for delta, _, abar, _ in parts for t in (delta, abar)])
            right = torch.cat([t for _, hdot_in, _, h_in in parts for t in (hdot_in, h_in)])
            grads.append((linear.weight, _sum_of_outer_products(left, right)))
            if linear.bias is not None:
                grads.append((linear.bias, torch.cat([abar for _, _, abar, _ in parts]).sum(0)))
        return grads

    @property
    def _linears(self) -> list[nn.Linear]:
        return list(self.net._modules.values())[0::2]  # Linear, activation, Linear, ..., Linear

    @property
    def _activations(self) -> list[nn.Module]:
        return list(self.net._modules.values())[1::2]
