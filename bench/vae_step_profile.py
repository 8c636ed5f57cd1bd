"""Where a static-MNIST VAE training step's time goes, prior by prior: torch's profiler over steps of
the shipped ``Trainer.fit``, its operations grouped by kind.

``bench/images_vs_tf.py`` times each prior's step beside the authors' TF1 code; this script says
what those steps are made of, so that a prior's extra cost over the N(0, I) prior is measured, not
guessed. For each prior (and precision) a fresh process runs ``Trainer.fit`` of
``configs/images/static_mnist/vae_<prior>_prior.yaml`` as ``images_vs_tf.py`` does (logger, image
callback and checkpoints as shipped, progress bar off), and profiles the ``--steps`` optimiser
steps after the first ``--warmup`` (the HIS prior's compilation falls in the warm-up). Each cell
is milliseconds per step: the wall time under the profiler, and the main thread's self CPU time
of the operations of each kind (:data:`KINDS`, by operation name; the intra-op threads' share of
a matrix product is not in the main thread's figure, so the kinds add up to less than the wall
time, and the profiler's own cost to a little more):

* **matmul**: ``mm``, ``addmm``, ``bmm`` and the like, forward and backward;
* **random**: drawing random numbers (``normal_``, ``uniform_``, ...);
* **activations**: tanh, sigmoid, softplus and log-sigmoid, forward and backward (ours and torch's);
* **optimiser**: the fused Adam kernel and ``Optimizer.step``/``zero_grad``;
* **casts**: ``copy_`` and ``_to_copy`` (under bf16-mixed, autocast's casts);
* **checks**: comparisons and reductions to a bool (``eq``, ``ne``, ``abs``, ``all``,
  ``isfinite``, ``logical_or``...): the per-step value checks (``validate_inputs``; binary pixels
  for a Bernoulli likelihood, finite values) and the loss's finiteness test;
* **data**: the DataLoader's ``next`` and the batch's gather (``index``);
* **other**: every other operation (the bounds' arithmetic, autograd's bookkeeping, ...).

    python bench/vae_step_profile.py --output docs/BENCHMARKS_IMAGES.md     # about 5 minutes
    python bench/vae_step_profile.py --priors gaussian snis --steps 100     # a quick look

Never run it while other jobs share the cores.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eim_lightning.modules.precision import cpu_has_bf16_instructions  # noqa: E402
from images_vs_tf import fit_shipped_config, update_section  # noqa: E402  (bench/images_vs_tf.py)
from machine import describe  # noqa: E402

HEADING = "## Where the training step's time goes"
PRIORS = ("gaussian", "snis", "trs", "lars", "his")
#: operation kinds, each a regular expression over the profiler's names; the first match wins
KINDS = {
    "matmul": r"^aten::(mm|addmm|bmm|baddbmm|addmv|mv|dot)$|^mkldnn::|^aten::mkldnn_",
    "random": r"^aten::(normal_|uniform_|bernoulli_|exponential_|random_|randn|rand|multinomial)$",
    "activations": r"^aten::(tanh|tanh_|tanh_backward|sigmoid|sigmoid_|sigmoid_backward|softplus|softplus_backward"
    r"|log_sigmoid_forward|log_sigmoid_backward)$|^_(SigmoidTanh|LogSigmoid)(Backward)?$",
    "optimiser": r"^aten::_fused_adam_$|^Optimizer\.(step|zero_grad)#",
    "casts": r"^aten::(copy_|_to_copy)$",
    "checks": r"^aten::(eq|ne|abs|all|any|isfinite|isinf|isnan|logical_or|logical_and|logical_not|is_nonzero)$",
    "data": r"^enumerate\(DataLoader\)|^aten::index$",
}

_CHILD = """
import json, sys, time
import lightning as L
from torch.profiler import ProfilerActivity, profile
from eim_lightning.cli import EIMCLI

class Profiled(L.Callback):
    def __init__(self, warmup, steps):
        self.warmup, self.steps, self.prof = warmup, steps, None
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.prof is None and trainer.global_step >= self.warmup:
            self.prof, self.step0 = profile(activities=[ProfilerActivity.CPU]), trainer.global_step
            self.prof.__enter__()
            self.began = time.perf_counter()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.prof is not None and trainer.global_step - self.step0 >= self.steps:
            wall = time.perf_counter() - self.began
            self.prof.__exit__(None, None, None)
            steps = trainer.global_step - self.step0
            ops = {{e.key: e.self_cpu_time_total / 1e3 for e in self.prof.key_averages()}}
            print("PROFILE", json.dumps({{"steps": steps, "wall_ms": 1e3 * wall, "ops_ms": ops}}), flush=True)
            trainer.should_stop = True

cli = EIMCLI(args={args!r}, run=False)
cli.trainer.callbacks.append(Profiled({warmup}, {steps}))
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
"""


def kind_of(name: str) -> str:
    """The kind (a key of :data:`KINDS`, else ``"other"``) of a profiler event's name."""
    return next((kind for kind, pattern in KINDS.items() if re.search(pattern, name)), "other")


def per_step(profile: dict) -> dict[str, float]:
    """Milliseconds per step of a child's profile: ``wall`` and each kind's self CPU time."""
    out = dict.fromkeys(["wall", *KINDS, "other"], 0.0)
    out["wall"] = profile["wall_ms"]
    for name, ms in profile["ops_ms"].items():
        out[kind_of(name)] += ms
    return {key: value / profile["steps"] for key, value in out.items()}


def profile_prior(prior: str, precision: str, steps: int, warmup: int) -> dict[str, float]:
    """Profile ``steps`` steps of the shipped config of ``prior`` after ``warmup`` in a fresh process."""
    log = fit_shipped_config(_CHILD, prior, precision, steps, warmup)
    return per_step(json.loads(re.search(r"^PROFILE (.*)$", log, re.M).group(1)))


def table(cells: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    """Markdown rows: one per prior and precision, with the wall time's excess over N(0, I)'s."""
    columns = [*KINDS, "other"]
    lines = [
        "| prior | precision | wall (ms/step) | over N(0, I) (ms) | " + " | ".join(columns) + " |",
        "|---|---|---|---|" + "---|" * len(columns),
    ]
    for (prior, precision), row in cells.items():
        base = cells.get(("gaussian", precision))
        excess = f"{row['wall'] - base['wall']:+.2f}" if base is not None and prior != "gaussian" else "-"
        values = " | ".join(f"{row[c]:.2f}" for c in columns)
        lines.append(f"| {prior} | {precision} | {row['wall']:.2f} | {excess} | {values} |")
    return lines


#: the sentence a page adds where :func:`precisions` leaves bf16-mixed out
BF16_LEFT_OUT = " bf16-mixed is left out: this CPU has no bfloat16 instructions."


def precisions() -> list[str]:
    """The precisions to time here: float32, and bf16-mixed unless the CPU lacks bfloat16
    instructions (torch would emulate it; see :data:`BF16_LEFT_OUT`)."""
    return ["32-true"] + (["bf16-mixed"] if cpu_has_bf16_instructions() is not False else [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    parser.add_argument("--steps", type=int, default=300, help="profiled optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=300, help="unprofiled steps before them")
    parser.add_argument("--output", default=None)
    opts = parser.parse_args(argv)
    if opts.steps < 1 or opts.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {opts.steps} and {opts.warmup}")
    began = time.time()
    timed = precisions()
    cells = {}
    for precision in timed:
        for prior in opts.priors:
            cells[(prior, precision)] = profile_prior(prior, precision, opts.steps, opts.warmup)
            print(f"{prior} {precision}: {cells[(prior, precision)]}", flush=True)
    command = "python bench/vae_step_profile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        HEADING,
        "",
        f"Milliseconds per optimiser step of the shipped static-MNIST VAE configs in `Trainer.fit`, under torch's "
        f"profiler for {opts.steps} steps after {opts.warmup}: the wall time, and the main thread's self CPU time "
        "of each kind of operation (the docstring of `bench/vae_step_profile.py` defines the kinds; the intra-op "
        "threads' share of a matrix product is not in it). The shipped configs' runs are long enough for the "
        "VAE's training step to be compiled, and a compiled step's kernels, its matrix products included, count "
        "as other. One fresh process per cell, one run each." + ("" if "bf16-mixed" in timed else BF16_LEFT_OUT),
        "",
        *table(cells),
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {describe()}; took {(time.time() - began) / 60:.1f} minutes. "
        f"Command: `{command.strip()}`. Compare the kinds within a run: these shared machines drift up to 2x "
        "between runs.",
    ]
    print("\n".join(lines))
    if opts.output:
        update_section(Path(opts.output), lines, HEADING)


if __name__ == "__main__":
    main()
