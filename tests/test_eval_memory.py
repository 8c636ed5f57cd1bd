"""Evaluation memory does not grow with the number of replicas, with or without autograd, and
gradients through a many-replica bound are exact (ALGORITHMS.md 1; DESIGN.md "memory-bounded
evaluation streams chunks ... with or without autograd").

With autograd on, ``log_prob_lower_bound`` checkpoints each chunk of replicas: the chunk's graph
is dropped after the forward pass and recomputed, on the same random numbers, in the backward
pass. Peak memory is measured in a fresh process (``ru_maxrss``, the resident high-water mark);
the gradient is checked against the closed form of the log-mean-exp's gradient.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eim_lightning.densities import HIS, Density, Normal
from eim_lightning.nn import MLP
from eim_lightning.ops import chunked_log_mean_exp

REPO = Path(__file__).resolve().parents[1]

PEAKS = """
import json, resource, torch
torch.set_num_threads(1)
torch.manual_seed(0)
from eim_lightning.densities import SNIS, Normal
from eim_lightning.nn import MLP
snis = SNIS(Normal(2), MLP(2, [20, 20], 1), num_proposals=256)  # eval_chunk_size 64
x = torch.randn(100, 2)

def peak_mib(num_samples, grad):
    with torch.set_grad_enabled(grad):
        bound = snis.log_prob_lower_bound(x, num_samples).mean()
        if grad:
            bound.backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

out = {}
for grad in (False, True):  # each: two chunks first (the per-chunk peak), then 64 chunks
    out[str(grad)] = [peak_mib(128, grad), peak_mib(4096, grad)]
print(json.dumps(out))
"""


def test_peak_memory_does_not_grow_with_num_samples_with_or_without_gradients():
    """2-D SNIS, K = 256, 100 points: 128 -> 4096 replicas. Keeping every chunk's graph (the
    failure this guards against) grows the peak by about 300 MiB; what may grow is the
    [4096, 100] log-weights (a few MiB) and allocator noise. glibc's mmap threshold is fixed at
    1 MiB: by default it rises after the first large free, and later chunks' large temporaries
    then fragment the heap, which raised the high-water mark by 100-300 MiB with nothing kept
    alive (measured: any extra elementwise operation in the MLP did it)."""
    out = subprocess.run(
        [sys.executable, "-c", PEAKS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "1048576"},
    )
    assert out.returncode == 0, out.stderr
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    for grad, (two_chunks, many_chunks) in peaks.items():
        assert many_chunks - two_chunks < 40, (grad, peaks)


class NoisyLinear(Density):
    """One-dimensional test density with random replicas ``l_sb = theta eps_sb x_b``,
    ``eps ~ N(0, 1)``; it records every draw so that the forward pass's can be replayed."""

    def __init__(self, eval_chunk_size: int) -> None:
        super().__init__((1,), eval_chunk_size)
        self.theta = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.draws: list[torch.Tensor] = []

    def log_prob_replicas(self, x, num_replicas, context=None):
        eps = torch.randn(num_replicas, x.shape[0], dtype=x.dtype)
        self.draws.append(eps)
        return self.theta * eps * x[:, 0]


def test_gradient_of_a_many_chunk_bound_is_the_exact_log_mean_exp_gradient():
    """L_b = log (1/S) sum_s exp(theta eps_sb x_b), dL_b/dtheta = sum_s softmax_s(theta eps_b x_b) eps_sb x_b,
    evaluated on the forward pass's draws: each chunk is recomputed on the same random numbers."""
    density = NoisyLinear(eval_chunk_size=3)
    x = torch.tensor([[0.5], [-1.5], [2.0]], dtype=torch.float64)
    bound = density.log_prob_lower_bound(x, num_samples=10)
    assert len(density.draws) == 4  # chunks of 3, 3, 3, 1
    (grad,) = torch.autograd.grad(bound.sum(), [density.theta])
    assert len(density.draws) == 8  # recomputed in the backward pass (checkpointed, not kept)
    eps = torch.cat(density.draws[:4]).numpy()  # [10, 3], the forward draws
    for forward, again in zip(density.draws[:4], density.draws[4:][::-1]):  # backward runs last chunk first
        assert torch.equal(forward, again)
    logits = 0.7 * eps * x[:, 0].numpy()
    expected = np.log(np.exp(logits).mean(0))
    weights = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    np.testing.assert_allclose(bound.detach().numpy(), expected, rtol=1e-13)
    assert math.isclose(grad.item(), float(np.sum(weights * eps * x[:, 0].numpy())), rel_tol=1e-12)
    # the default training bound (one replica, no chunking) still differentiates: d l / d theta = eps x
    density.draws.clear()
    training_bound, _ = density.bound_and_diagnostics(x)
    (grad1,) = torch.autograd.grad(training_bound.sum(), [density.theta])
    assert math.isclose(grad1.item(), float((density.draws[0][0] * x[:, 0]).sum()), rel_tol=1e-12)


def test_his_gradients_through_a_many_chunk_bound_match_plain_autograd_on_the_same_draws():
    """HIS differentiates through grad E (a nested autograd.grad) inside each recomputed chunk;
    every parameter gets the gradient plain (non-checkpointed) autograd gives on the same draws."""
    his = HIS(Normal(2), MLP(2, [8], 1, output_bias=False), MLP(2, [8], 4), T=2, eval_chunk_size=4).double()
    params = list(his.parameters())
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.manual_seed(1)
    bound = his.log_prob_lower_bound(x, num_samples=10)
    grads = torch.autograd.grad(bound.sum(), params)
    torch.manual_seed(1)
    plain = chunked_log_mean_exp(lambda m: his.log_prob_replicas(x, m), 10, 4)
    expected = torch.autograd.grad(plain.sum(), params)
    torch.testing.assert_close(bound, plain, rtol=0, atol=0)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
        assert bool(torch.isfinite(g).all()) and g.abs().sum() > 0
    training_bound, _ = his.bound_and_diagnostics(x)  # the training path: one replica
    assert all(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(training_bound.sum(), params))
