"""Normal draws inside a compiled function on the CPU: inductor's own ``randn`` against torch's.

The step engine compiles with ``fallback_random=True`` (``engine.compiled_for``), so that a
compiled step draws its random numbers with torch's generators instead of inductor's. This script
measures what that rests on: a function that draws the ``ROWS x COLS`` standard normals of an MNIST
VAE prior's proposals (1023 x 50 by default: K = 1024 proposals of a 50-d latent, one less for the
data point) compiled as the engine compiles it, once with inductor's generator
(``fallback_random=False``) and once with torch's, timed in ``--rounds`` alternating rounds of
``--repeats`` calls in one process; each column the median over rounds (ms per call).

    python bench/compiled_random.py                 # about a minute
    python bench/compiled_random.py --rows 127      # the N(0, I) VAE's posterior noise, 128 x 50 less a row

Never run it while other jobs share the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


def timings(rows: int, cols: int, repeats: int, rounds: int) -> dict[str, float]:
    """Median ms per call of the compiled draw with inductor's and with torch's generator."""
    import torch

    def draw() -> torch.Tensor:
        return torch.randn(rows, cols)

    compiled = {
        name: torch.compile(draw, options={"cpp_wrapper": True, "fallback_random": fallback})
        for name, fallback in (("inductor", False), ("torch", True))
    }
    for fn in compiled.values():
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(rounds):
        for name, fn in compiled.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name].append((time.perf_counter() - start) / repeats * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1023)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=200, help="calls per round and generator")
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args(argv)
    if min(opts.rows, opts.cols, opts.repeats, opts.rounds) < 1:
        parser.error(
            f"--rows, --cols, --repeats and --rounds must be >= 1, got {opts.rows}, {opts.cols}, "
            f"{opts.repeats} and {opts.rounds}"
        )
    ms = timings(opts.rows, opts.cols, opts.repeats, opts.rounds)
    print(f"{opts.rows} x {opts.cols} standard normals in a compiled function (ms per call, median of {opts.rounds}):")
    print(
        f"  inductor's generator: {ms['inductor']:.3f}   torch's generator: {ms['torch']:.3f}   "
        f"ratio {ms['inductor'] / ms['torch']:.2f}"
    )
    print(f"Measured {time.strftime('%Y-%m-%d')} on {describe()}.")


if __name__ == "__main__":
    main()
