"""Time torch.tanh against eim_lightning.nn.Tanh and torch's logsigmoid against eim_lightning.ops.log_sigmoid.

    python bench/activation_speed.py [--threads 1]

Prints ns per element, forward and forward+backward, at the sizes of a 2-D step's hidden layer
(1152 x 20), an SNIS sampler chunk (16384 x 20), a VAE's hidden layer (128 x 300) and an MNIST
SNIS prior's energy layer (1152 x 100), and of a VAE's Bernoulli logits (128 x 784).
Why: the docstrings of ``nn.Tanh`` and ``ops.log_sigmoid``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from eim_lightning.nn import Tanh
from eim_lightning.ops import log_sigmoid


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
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    print("| size | torch.tanh fwd | Tanh fwd | sigmoid fwd | torch.tanh fwd+bwd | Tanh fwd+bwd | (ns/element) |")
    print("|---|---|---|---|---|---|---|")
    ours = Tanh()
    for rows, width in ((1152, 20), (16384, 20), (128, 300), (1152, 100)):
        x = torch.randn(rows, width)
        xg = x.clone().requires_grad_()
        cells = [
            per_element(torch.tanh, x, args.repeats),
            per_element(ours, x, args.repeats),
            per_element(torch.sigmoid, x, args.repeats),
            per_element(forward_backward(torch.tanh), xg, args.repeats),
            per_element(forward_backward(ours), xg, args.repeats),
        ]
        print(f"| {rows} x {width} | " + " | ".join(f"{c:.2f}" for c in cells) + " | |")
    print()
    print(
        "| size | torch logsigmoid fwd | log_sigmoid fwd | torch logsigmoid fwd+bwd | log_sigmoid fwd+bwd "
        "| (ns/element) |"
    )
    print("|---|---|---|---|---|---|")
    x = torch.randn(128, 784) * 4
    xg = x.clone().requires_grad_()
    logsigmoid = torch.nn.functional.logsigmoid
    cells = [
        per_element(logsigmoid, x, args.repeats),
        per_element(log_sigmoid, x, args.repeats),
        per_element(forward_backward(logsigmoid), xg, args.repeats),
        per_element(forward_backward(log_sigmoid), xg, args.repeats),
    ]
    print("| 128 x 784 | " + " | ".join(f"{c:.2f}" for c in cells) + " | |")


if __name__ == "__main__":
    main()
