"""Static-MNIST VAE training speed beside the authors' TF1 code, measured in one run, alternating.

For each prior (N(0, I), SNIS, TRS, LARS; the authors' ``vae_gauss``, ``vae_nis``, ``vae_trs``,
``vae_lars`` at K = T = 1024, LARS T = 100, batch 128) and ``--windows`` windows (default 3):

* **TF**: the authors' ``mnist.py`` through ``../shared/tfref/mnist/speed_pass.sh STEPS NAME``
  (their whole training loop, summaries every 1000 steps, no evaluation); steps/s from their
  own log timestamps (``parsed.json``: step 0 to the last logged step);
* **ours, float32** and **ours, bf16-mixed** (bf16 skipped on a CPU without bfloat16
  instructions, where torch emulates it, unless ``--bf16``): ``Trainer.fit`` of the shipped config
  ``configs/images/static_mnist/vae_<prior>_prior.yaml`` (TensorBoard logger, image callback,
  checkpointing and run length as shipped, so every automatic choice is the one a real run
  makes: the VAE's training step is compiled, whatever its prior), stopped after WARMUP + STEPS
  steps; steps/s over the STEPS steps after the first WARMUP (the compilation falls in the
  warm-up, as TF's graph construction precedes its step 0), validation time excluded (TF's
  loop does not validate).

Our HIS prior has no TF counterpart; it is timed beside our N(0, I) prior (the issue's goal: at
most 1.6x its step). Each measurement is a fresh process; both sides at their default thread
counts; each steps/s cell is the median over the windows and each ratio the median of the ratios
within a window (the TF ratios and HIS / N(0, I) of runs taken side by side: :func:`schedule`).
Writes (or updates) the section
"Training speed beside the authors' TF1 code" of ``--output``.

    python bench/images_vs_tf.py --output docs/BENCHMARKS_IMAGES.md      # about 20 minutes
    python bench/images_vs_tf.py --windows 1 --steps 500                 # a quick look
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eim_lightning.modules.precision import cpu_has_bf16_instructions  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)
from vs_tf import EIMREF, REPO, TFREF, _paired, _run, footer, tf_installed  # noqa: E402

HEADING = "## Training speed beside the authors' TF1 code"
PRIORS = {"gaussian": "vae_gauss", "snis": "vae_nis", "trs": "vae_trs", "lars": "vae_lars", "his": None}
MEASURED = ("gaussian", "his", "snis", "trs", "lars")  # the order within a window (see schedule)

_OURS = """
import sys, time
import lightning as L
from eim_lightning.cli import EIMCLI

class Timer(L.Callback):
    def __init__(self, warmup, steps):
        self.warmup, self.steps = warmup, steps
        self.start, self.val, self.v0 = None, 0.0, None
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None and trainer.global_step >= self.warmup:
            self.start, self.step0 = time.perf_counter(), trainer.global_step
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is not None and trainer.global_step - self.step0 >= self.steps:
            took = time.perf_counter() - self.start - self.val
            print("SPS", (trainer.global_step - self.step0) / took, flush=True)
            trainer.should_stop = True
    def on_validation_start(self, trainer, pl_module):
        self.v0 = time.perf_counter()
    def on_validation_end(self, trainer, pl_module):
        if self.start is not None:
            self.val += time.perf_counter() - self.v0

timer = Timer({warmup}, {steps})
cli = EIMCLI(args={args!r}, run=False)
cli.trainer.callbacks.append(timer)
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
"""


def fit_shipped_config(child: str, prior: str, precision: str, steps: int, warmup: int) -> str:
    """The output of a fresh process running ``child`` (a template of ``args``, ``warmup`` and ``steps``)
    on the shipped static-MNIST VAE config of ``prior`` at ``precision``, its logs in a temporary folder
    and its progress bar off (here and in ``bench/vae_step_profile.py``)."""
    with tempfile.TemporaryDirectory() as out:
        args = [
            "--config",
            f"configs/images/static_mnist/vae_{prior}_prior.yaml",
            "--trainer.logger.init_args.save_dir",
            out,
            "--trainer.default_root_dir",
            out,
            "--trainer.enable_progress_bar=false",
            "--trainer.precision",
            precision,
        ]
        _, log = _run([sys.executable, "-c", child.format(args=args, warmup=warmup, steps=steps)], cwd=REPO)
    return log


def ours_steps_per_s(prior: str, steps: int, precision: str, warmup: int) -> float:
    log = fit_shipped_config(_OURS, prior, precision, steps, warmup)
    return float(re.search(r"^SPS ([0-9.]+)", log, re.M).group(1))


def tf_steps_per_s(name: str, steps: int) -> float:
    _run(["bash", str(TFREF / "mnist" / "speed_pass.sh"), str(steps), name])
    parsed = json.loads((EIMREF / "results" / "mnist" / f"speed_{name}" / "parsed.json").read_text())
    return float(parsed["steps_per_sec_step0_to_last_log"])


def schedule(with_tf: bool, with_bf16: bool) -> list[tuple[str, str]]:
    """One window's measurements ``(prior, kind)`` in order: the priors as :data:`MEASURED` lists
    them, each prior's runs in the reverse order of the previous prior's (``bf16``, ``tf``,
    ``fp32``, then ``fp32``, ``bf16`` for HIS, ...). So each TF run lies beside our runs of its
    prior and the N(0, I) prior's float32 run directly precedes the HIS prior's: the ratios the
    table reports are of measurements taken a minute apart, not a window apart."""
    runs = []
    for i, prior in enumerate(MEASURED):
        kinds = [
            k for k in ("bf16", "tf", "fp32") if (k != "bf16" or with_bf16) and (k != "tf" or with_tf and PRIORS[prior])
        ]
        runs += [(prior, kind) for kind in (kinds if i % 2 == 0 else kinds[::-1])]
    return runs


def table(windows: int, steps: int, with_tf: bool, warmup: int, with_bf16: bool = True) -> list[str]:
    """The table's lines: each steps/s cell the median over ``windows``, each ratio the median over
    windows of the ratio within a window (paired, as ``bench/vs_tf.py`` reports them: less exposed
    to the machine's drift between windows than a ratio of medians)."""
    cells: dict[tuple[str, str], list[float]] = {}
    for w in range(windows):
        for prior, kind in schedule(with_tf, with_bf16):
            if kind == "tf":
                value = tf_steps_per_s(PRIORS[prior], steps)
            else:
                value = ours_steps_per_s(prior, steps, "32-true" if kind == "fp32" else "bf16-mixed", warmup)
            cells.setdefault((prior, kind), []).append(value)
            print(f"window {w + 1}: {prior} {kind} {value:.1f} steps/s", flush=True)

    def paired(top: tuple[str, str], bottom: tuple[str, str]) -> str:
        if top not in cells or bottom not in cells:
            return "-"
        return f"{_paired(cells[top], cells[bottom]):.2f}"

    lines = [
        "| prior | ours fp32 (steps/s) | ours bf16-mixed (steps/s) | TF (steps/s) | fp32 / TF | bf16 / TF "
        "| our fp32 step / N(0, I)'s |",
        "|---|---|---|---|---|---|---|",
    ]
    for prior in PRIORS:
        speeds = [
            f"{statistics.median(cells[key]):.1f}" if (key := (prior, kind)) in cells else "-"
            for kind in ("fp32", "bf16", "tf")
        ]
        if not with_bf16:
            speeds[1] = "skipped"
        fp32, tf = (prior, "fp32"), (prior, "tf")
        ratios = [paired(fp32, tf), paired((prior, "bf16"), tf), paired(("gaussian", "fp32"), fp32)]
        lines.append(f"| {prior} | {' | '.join(speeds)} | {' | '.join(ratios)} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=300, help="untimed steps before them (ours)")
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="time bf16-mixed also on a CPU without bfloat16 instructions (skipped there by default: emulated)",
    )
    opts = parser.parse_args(argv)
    began = time.time()
    with_tf = tf_installed()
    with_bf16 = opts.bf16 or cpu_has_bf16_instructions() is not False
    lines = [
        HEADING,
        "",
        f"Static MNIST VAE 784-300-300-50, batch 128, {opts.steps} timed training steps per measurement. "
        "Ours: `Trainer.fit` of the shipped config (logger, image callback, checkpoints and run length as "
        "shipped, so the automatic choices are a real run's: the VAE's training step is compiled, whatever its "
        "prior), "
        f"steps/s over {opts.steps} steps after {opts.warmup} untimed ones (compilation included there), "
        "validation excluded; TF: the authors' "
        "`mnist.py` via `../shared/tfref/mnist/speed_pass.sh` (steps/s from its own log timestamps). "
        "HIS has no TF counterpart; the last column is our step time relative to our N(0, I) prior's. "
        "Within a window each TF run lies beside our runs of its prior and our N(0, I) float32 run directly "
        "precedes the HIS prior's; each ratio is the median over windows of the ratio within a window.",
        "",
        *table(opts.windows, opts.steps, with_tf, opts.warmup, with_bf16),
        "",
    ]
    if not with_bf16:
        lines.append(
            "bf16-mixed was skipped: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), so torch "
            "emulates bfloat16 and fit warns; `--bf16` times it anyway (6-9x slower than float32 on an AVX2 EPYC)."
        )
        lines.append("")
    if not with_tf:
        lines.append("The TF reference is not installed (`bash ../shared/tfref/install.sh`): ours alone.")
        lines.append("")
    command = "python bench/images_vs_tf.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines.append(footer(opts.windows, began, f"`{command.strip()}`"))
    text = "\n".join(lines)
    print(text)
    if opts.output:
        update_section(Path(opts.output), lines)
    print(describe())


def section(text: str, heading: str = HEADING) -> str:
    """The section under ``heading`` (default: this script's) of a Markdown page ("" if it has none),
    up to its last line's newline: the blank line before the next heading is not part of it."""
    start = text.find(heading)
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def update_section(path: Path, lines: list[str], heading: str = HEADING) -> None:
    """Replace the section under ``heading`` (default: this script's) of ``path`` (or append it),
    keeping everything else."""
    old = path.read_text() if path.exists() else "# Image benchmarks\n\n"
    new = "\n".join(lines) + "\n"
    current = section(old, heading)
    path.write_text(old.replace(current, new) if current else old.rstrip() + "\n\n" + new)


if __name__ == "__main__":
    main()
