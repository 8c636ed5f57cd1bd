"""Time the small kernels eim-lightning chooses between: tanh forms, logsigmoid forms, outer-product sums.

    python bench/activation_speed.py [--threads 1]

Prints ns per element, forward and forward+backward, of torch.tanh, the ``2 sigmoid(2x) - 1``
composite and ``eim_lightning.nn.Tanh`` at the sizes of HIS's 2-D leapfrog layer (128 x 20), a
2-D SNIS step's hidden layer (1152 x 20), an SNIS sampler chunk (16384 x 20), a VAE's hidden
layer (128 x 300) and an MNIST SNIS prior's energy layer (1152 x 100); torch's logsigmoid
against the composite of ``eim_lightning.ops.log_sigmoid`` at a VAE's Bernoulli logits (128 x 784), and
which of the two ``log_sigmoid`` takes on this machine; and
microseconds of ``left^T right`` for the weight gradients of a 2-D closed-form step's first
layer, both orientations. Why: the docstrings of ``nn.Tanh``, ``nn.MLP._sigmoid_forward``,
``ops.log_sigmoid`` and ``nn._sum_of_outer_products``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eim_lightning.nn import MLP, Tanh, _sigmoid_tanh
from eim_lightning.ops import TORCH_LOGSIGMOID_ON_CPU, _LogSigmoid
from machine import describe  # noqa: E402  (bench/machine.py, beside this script)


def per_element(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - start) / repeats / x.numel() * 1e9


def forward_backward(act):
    def run(x):
        act(x).sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe(args.threads))
    print(
        "| size | torch.tanh fwd | composite fwd | Tanh fwd, no_grad | sigmoid fwd | torch.tanh fwd+bwd "
        "| Tanh fwd+bwd | (ns/element) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ours = Tanh()

    def unrecorded(x):
        with torch.no_grad():
            return ours(x)

    for rows, width in ((128, 20), (1152, 20), (16384, 20), (128, 300), (1152, 100)):
        x = torch.randn(rows, width)
        xg = x.clone().requires_grad_()
        cells = [
            per_element(torch.tanh, x, args.repeats),
            per_element(_sigmoid_tanh, x, args.repeats),
            per_element(unrecorded, x, args.repeats),
            per_element(torch.sigmoid, x, args.repeats),
            per_element(forward_backward(torch.tanh), xg, args.repeats),
            per_element(forward_backward(ours), xg, args.repeats),
        ]
        print(f"| {rows} x {width} | " + " | ".join(f"{c:.2f}" for c in cells) + " | |")
    print()
    print("| MLP, rows | layers as written (us) | folded (us) | folded / layers |")
    print("|---|---|---|---|")
    for sizes, rows in (((2, [20, 20], 1), 32768), ((50, [100, 100], 1), 1024)):
        net = MLP(*sizes)
        x = torch.randn(rows, sizes[0])
        with torch.no_grad():
            layers = per_element(net.net, x, args.repeats) * x.numel() / 1e3
            folded = per_element(net, x, args.repeats) * x.numel() / 1e3
        name = f"{sizes[0]}-{'-'.join(map(str, sizes[1]))}-{sizes[2]}"
        print(f"| {name}, {rows} | {layers:.0f} | {folded:.0f} | {folded / layers:.2f} |")
    print()
    print(
        "| size | torch logsigmoid fwd | composite fwd | torch logsigmoid fwd+bwd | composite fwd+bwd "
        f"| (ns/element; log_sigmoid takes {'torch' if TORCH_LOGSIGMOID_ON_CPU else 'the composite'} "
        f"where torch dispatches to {torch.backends.cpu.get_cpu_capability()}) |"
    )
    print("|---|---|---|---|---|---|")
    x = torch.randn(128, 784) * 4
    xg = x.clone().requires_grad_()
    logsigmoid, composite = torch.nn.functional.logsigmoid, _LogSigmoid.apply
    cells = [
        per_element(logsigmoid, x, args.repeats),
        per_element(composite, x, args.repeats),
        per_element(forward_backward(logsigmoid), xg, args.repeats),
        per_element(forward_backward(composite), xg, args.repeats),
    ]
    print("| 128 x 784 | " + " | ".join(f"{c:.2f}" for c in cells) + " | |")
    print()
    print("| left, right | left^T right (us) | (right^T left)^T (us) |")
    print("|---|---|---|")
    for n, p_dim, q_dim in ((1536, 20, 2), (1152, 20, 2), (1536, 20, 20)):
        left, right = torch.randn(n, p_dim), torch.randn(n, q_dim)
        tall = per_element(lambda a, b=right: a.t().mm(b), left, args.repeats * 10) * left.numel() / 1e3
        wide = per_element(lambda a, b=right: b.t().mm(a).t(), left, args.repeats * 10) * left.numel() / 1e3
        print(f"| {n} x {p_dim}, {n} x {q_dim} | {tall:.1f} | {wide:.1f} |")


if __name__ == "__main__":
    main()
