"""eim_lightning.nn.Tanh against numpy's tanh (the oracle) and torch's autograd of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eim_lightning.nn import MLP, Tanh

POINTS = np.concatenate([np.linspace(-30, 30, 20001), [0.0, 1e-30, -1e-12, 1e-5, 88.0, -104.0, 1e4, -1e4]])
# recorded calls of at least 2^16 elements take the autograd.Function path, smaller ones torch.tanh
SIZES = {"small": 1, "large": 4}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_tanh_is_tanh_to_a_few_eps_and_bounded(dtype, grad, size):
    x = torch.tensor(np.tile(POINTS, SIZES[size]), dtype=dtype, requires_grad=grad)
    y = Tanh()(x).detach()
    x = x.detach()
    eps = torch.finfo(dtype).eps
    exact = np.tanh(x.double().numpy())  # numpy on the rounded inputs
    assert y.dtype == dtype
    assert np.abs(y.double().numpy() - exact).max() <= 2 * eps
    assert y.abs().max() <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("points", [POINTS[::50], np.tile(POINTS, 4)], ids=["small", "large"])
def test_tanh_gradient_is_one_minus_tanh_squared(dtype, points):
    x = torch.tensor(points, dtype=dtype, requires_grad=True)
    Tanh()(x).sum().backward()
    expected = 1 - np.tanh(x.detach().double().numpy()) ** 2
    assert np.abs(x.grad.double().numpy() - expected).max() <= 8 * torch.finfo(dtype).eps


def test_large_tanh_second_derivative_is_minus_two_tanh_times_first():
    """Double backward through the autograd.Function path (HIS differentiates gradients):
    d^2/dx^2 tanh = -2 tanh(x) (1 - tanh(x)^2)."""
    x = torch.tensor(np.tile(POINTS, 4), dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(Tanh()(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x)
    t = np.tanh(x.detach().numpy())
    assert np.abs(second.numpy() - (-2 * t * (1 - t**2))).max() <= 8 * torch.finfo(torch.float64).eps


def test_tanh_is_torch_tanh_in_bfloat16():
    x = torch.linspace(-3, 3, 1001, dtype=torch.bfloat16)
    assert torch.equal(Tanh()(x), torch.tanh(x))


def test_mlp_tanh_layers_are_tanh():
    net = MLP(2, [20, 20], 1).double()
    x = torch.randn(64, 2, dtype=torch.float64)
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    h = x
    for linear in linears[:-1]:
        h = torch.tanh(linear(h))
    torch.testing.assert_close(net(x), linears[-1](h), rtol=0, atol=1e-14)


def test_large_tanh_under_torch_func_grad_and_vmap():
    x = torch.tensor(np.tile(POINTS, 4).reshape(2, -1), dtype=torch.float64, requires_grad=True)
    grads = torch.func.vmap(torch.func.grad(lambda v: Tanh()(v).sum()))(x)
    t = np.tanh(x.detach().numpy())
    assert np.abs(grads.detach().numpy() - (1 - t**2)).max() <= 8 * torch.finfo(torch.float64).eps


@pytest.mark.parametrize("cols", [1000, 70000], ids=["small", "large"])
def test_tanh_under_vmap_inside_an_outer_autograd_graph(cols):
    """Inside vmap a recorded tensor need not say requires_grad: no in-place composite there."""
    x = torch.tensor(np.resize(POINTS, (2, cols)), dtype=torch.float64, requires_grad=True)
    torch.func.vmap(Tanh())(x).sum().backward()
    t = np.tanh(x.detach().numpy())
    assert np.abs(x.grad.numpy() - (1 - t**2)).max() <= 8 * torch.finfo(torch.float64).eps


def test_tanh_without_gradients_is_the_composite():
    x = torch.tensor(POINTS, dtype=torch.float32)
    with torch.no_grad():
        y = Tanh()(x)
    assert torch.equal(y, torch.sigmoid(x * 2) * 2 - 1)


def test_small_tanh_without_gradients_is_torch_tanh():
    """Below 2^12 unrecorded elements (HIS's 2-D leapfrog layers) the kernel, not the composite."""
    x = torch.tensor(POINTS[:4095], dtype=torch.float32)
    with torch.no_grad():
        y = Tanh()(x)
    assert torch.equal(y, torch.tanh(x))


def _tanh_reference(net: MLP, h: torch.Tensor) -> torch.Tensor:
    """The tanh network in float64 by its definition (torch.tanh), layer by layer."""
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    h = h.double()
    for linear in linears[:-1]:
        h = torch.tanh(torch.nn.functional.linear(h, linear.weight.double(), linear.bias.double()))
    last = linears[-1]
    return torch.nn.functional.linear(h, last.weight.double(), None if last.bias is None else last.bias.double())


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((2, [20, 20], 1), {}),
        ((50, [100, 100], 1), {}),
        ((3, [7, 5, 3], 4), {"output_bias": False}),
        ((3, [], 2), {}),
        ((2, [20], 1), {"context_dim": 3}),
    ],
    ids=["2d-energy", "mnist-prior", "deep-no-output-bias", "no-hidden", "context"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_without_gradients_is_the_tanh_network_as_a_sigmoid_network(monkeypatch, shape, kwargs, dtype):
    """Where nothing records, a large call runs MLP._sigmoid_forward (tanh folded into the
    weights): the tanh network's values, to a few eps of its layers' sums, any leading dims."""
    torch.manual_seed(0)
    net = MLP(*shape, **kwargs).to(dtype)
    for p in net.parameters():
        torch.nn.init.normal_(p)  # biases nonzero: their folding is exercised
    calls = []
    fold = MLP._sigmoid_forward
    monkeypatch.setattr(MLP, "_sigmoid_forward", lambda self, h: calls.append(h.shape) or fold(self, h))
    x = 2 * torch.randn(3, 3000, shape[0], dtype=dtype)
    context = torch.randn(3, 1, kwargs["context_dim"], dtype=dtype) if "context_dim" in kwargs else None
    with torch.no_grad():
        y = net(x, context)
    assert calls, "the folded forward did not run"
    h = x if context is None else torch.cat([x, context.expand(3, 3000, -1)], -1)
    exact = _tanh_reference(net, h)
    assert y.shape == exact.shape and y.dtype == dtype
    # error relative to the size of what each output sums (tanh outputs are at most 1)
    scale = sum(m.weight.abs().sum(1).max().item() for m in net.net if isinstance(m, torch.nn.Linear))
    assert (y.double() - exact).abs().max().item() <= 64 * torch.finfo(dtype).eps * scale
    with torch.inference_mode():
        assert torch.equal(net(x, context), y)


def test_mlp_small_calls_and_recorded_calls_are_the_layers_themselves():
    """Below 2^12 hidden units per call, or where autograd records, the layers run as written."""
    net = MLP(2, [20, 20], 1)
    small = torch.randn(100, 2)
    with torch.no_grad():
        assert torch.equal(net(small), net.net(small))
    large = torch.randn(5000, 2)
    assert torch.equal(net(large), net.net(large))
