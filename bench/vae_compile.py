"""Whether compiling the static-MNIST VAE's training step pays, prior by prior, and from how many steps.

The step engine compiles a density's training bound automatically only in runs long enough for
the compilation to pay for itself (``Density.compile_min_steps``). This script measures what that
threshold rests on. For each prior and precision a fresh process builds the shipped config's model
(``configs/images/static_mnist/vae_<prior>_prior.yaml``, its data mean from the static-MNIST
training set) and times the step the engine runs: the training bound (under bf16 autocast for
``bf16-mixed``, as Lightning runs it), backward, the fused Adam step and the densities' after-step
hooks, on a training batch of 128 images, with torch's default threads:

* **compile (s)**: the first compiled step, ``module.training_bound_only`` compiled as the
  engine compiles it (``engine.compiled_for``: inductor's C++ wrapper on the CPU), with an empty compile cache
  (a fresh ``TORCHINDUCTOR_CACHE_DIR``), less an eager step;
* **eager / compiled (ms/step)**: ``--rounds`` rounds of ``--steps`` eager steps then as many
  compiled ones, alternating in the one process so that the machine's drift hits both alike;
  each column the median over rounds, the ratio the median of the rounds' ratios;
* **break-even (steps)**: compile seconds over the time a compiled step saves within a round,
  the median over rounds: the shortest run the compilation pays for.

    python bench/vae_compile.py --output docs/BENCHMARKS_IMAGES.md      # about 8 minutes
    python bench/vae_compile.py --priors gaussian --rounds 3            # a quick look

Never run it while other jobs share the cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images_vs_tf import update_section  # noqa: E402  (bench/images_vs_tf.py)
from machine import describe  # noqa: E402
from vae_step_profile import BF16_LEFT_OUT, precisions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Compiling the training step: what it saves and from how many steps"
PRIORS = ("gaussian", "snis", "trs", "lars", "his")


def child(prior: str, precision: str, steps: int, rounds: int) -> dict:
    """One cell, in this (fresh) process: see the module doc."""
    import contextlib

    import torch

    from eim_lightning.cli import EIMCLI
    from eim_lightning.modules.engine import compiled_for

    cli = EIMCLI(
        args=["--config", f"configs/images/static_mnist/vae_{prior}_prior.yaml", "--trainer.logger=false"], run=False
    )
    module, dm = cli.model, cli.datamodule
    for part in module.modules():
        if callable(getattr(part, "initialize_from_data", None)):
            part.initialize_from_data(dm.data_mean)
    batch = dm.train_dataset[list(range(dm.batch_size))]
    module._diagnostics_wanted = False
    optimizer = torch.optim.Adam(module.parameters(), lr=module.lr, fused=True)
    stateful = module._densities_with("after_optimizer_step")
    compiled = compiled_for(module.training_bound_only, batch.device)

    def step(bound_of) -> None:
        autocast = torch.autocast("cpu", torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
        with autocast:
            loss = -bound_of(batch).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for density in stateful:
            density.after_optimizer_step(lambda value: value)

    def seconds(bound_of, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step(bound_of)
        return time.perf_counter() - start

    eager_first = seconds(module.training_bound_only, 1)
    compile_s = seconds(compiled, 1) - eager_first
    seconds(module.training_bound_only, 5)  # warm both
    seconds(compiled, 5)
    eager, fast = [], []
    for _ in range(rounds):
        eager.append(seconds(module.training_bound_only, steps) / steps * 1e3)
        fast.append(seconds(compiled, steps) / steps * 1e3)
    return {
        "compile_s": compile_s,
        "eager_ms": statistics.median(eager),
        "compiled_ms": statistics.median(fast),
        "ratio": statistics.median(e / c for e, c in zip(eager, fast)),
        "break_even": statistics.median(compile_s / (e - c) * 1e3 if e > c else math.inf for e, c in zip(eager, fast)),
    }


def measure(prior: str, precision: str, steps: int, rounds: int) -> dict:
    """One cell in a fresh process with an empty compile cache."""
    with tempfile.TemporaryDirectory() as cache:
        code = (
            f"import sys, json; sys.path.insert(0, {str(REPO / 'bench')!r}); import vae_compile; "
            f"print('CELL', json.dumps(vae_compile.child({prior!r}, {precision!r}, {steps}, {rounds})))"
        )
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    found = re.search(r"^CELL (.*)$", out.stdout, re.M)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"{prior} {precision} failed:\n{out.stderr[-3000:]}")
    return json.loads(found.group(1))


def row(prior: str, precision: str, cell: dict) -> str:
    even = f"{cell['break_even']:,.0f}" if math.isfinite(cell["break_even"]) else "never"
    return (
        f"| {prior} | {precision} | {cell['eager_ms']:.2f} | {cell['compiled_ms']:.2f} | {cell['ratio']:.2f} | "
        f"{cell['compile_s']:.1f} | {even} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    parser.add_argument("--steps", type=int, default=30, help="steps per round and kind")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds per cell")
    parser.add_argument("--output", default=None)
    opts = parser.parse_args(argv)
    if opts.steps < 1 or opts.rounds < 1:
        parser.error(f"--steps and --rounds must be >= 1, got {opts.steps} and {opts.rounds}")
    began = time.time()
    timed = precisions()
    rows = []
    for precision in timed:
        for prior in opts.priors:
            cell = measure(prior, precision, opts.steps, opts.rounds)
            rows.append(row(prior, precision, cell))
            print(rows[-1], flush=True)
    command = "python bench/vae_compile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        HEADING,
        "",
        "The static-MNIST VAE's training step (bound, backward, Adam, the after-step hooks; batch 128, the shipped "
        "config of each prior) eager and through `torch.compile` as the step engine compiles it, in one fresh "
        f"process per cell with an empty compile cache; {opts.rounds} alternating rounds of {opts.steps} steps each, "
        "the ratio the median of the rounds' ratios; break-even: the compilation's seconds over what a compiled "
        "step saves, the median over rounds (the docstring of `bench/vae_compile.py`). The HIS prior's eager "
        "step differentiates its leapfrog through autograd." + ("" if "bf16-mixed" in timed else BF16_LEFT_OUT),
        "",
        "| prior | precision | eager (ms/step) | compiled (ms/step) | eager / compiled | compile (s) "
        "| break-even (steps) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {describe()}; took {(time.time() - began) / 60:.1f} minutes. "
        f"Command: `{command.strip()}`. These shared machines drift up to 2x between runs: compare within a row.",
    ]
    print("\n".join(lines))
    if opts.output:
        update_section(Path(opts.output), lines, HEADING)


if __name__ == "__main__":
    main()
