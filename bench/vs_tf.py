"""Ours beside the authors' TF1 code (``../shared/tfref``), measured in one run, alternating.

Two tables for the four 2-D EIMs (SNIS K = 1024, TRS T = 1024, LARS T = 1024, HIS T = 5; batch
128, Adam 3e-4, both sides at their default thread counts):

1. **Per optimiser step**: ours through ``Trainer.fit`` at the module's defaults with
   ``Toy2DDataModule`` (logger, checkpointing and progress bar off, as ``toy2d_steps.py`` runs
   it), against the authors' *whole script* per step (from its own log timestamps, hooks,
   summaries and checkpoints included) and their *bare* ``sess.run(train_op)``.
2. **Whole process**: ``eim fit --config configs/toy2d/<algo>_nine_gaussians.yaml`` for
   ``--steps`` steps (the shipped trainer: TensorBoard logger, checkpoints, image callback,
   progress bar and validation), against ``python -m eim.small_problems`` for the same steps,
   both timed as the wall time of a fresh process. Beside each pair, in the same window, each
   side's *start-up*: a fresh process that imports what its script imports before it trains,
   and exits (``import eim_lightning.cli``; ``import eim.small_problems``: TensorFlow, TFP). The
   table gives the ratio with and without it, and the start-up alone in its last row.

Every measurement runs in its own process; ours and theirs alternate in ``--windows`` windows
(default 3) and each cell is the median. A ratio is TF's time / ours: above 1, ours is faster.
Where the TF reference is not installed the tables hold ours alone and say how to install it.

    python bench/vs_tf.py --output docs/BENCHMARKS.md          # make bench (about 30 minutes)
    python bench/vs_tf.py --windows 1 --steps 2000 --part step  # a quick look
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EIM_SHARED_DIR", REPO.parent / "shared"))
TFREF = SHARED / "tfref"
EIMREF = Path(os.environ.get("EIMREF", Path.home() / ".cache" / "eimref"))
TF_PYTHON = EIMREF / "venv" / "bin" / "python"
sys.path.insert(0, str(REPO / "bench"))
from process_breakdown import fit_arguments  # noqa: E402  (bench/process_breakdown.py, beside this script)

ALGOS = {  # TF's --algo name: (our model, its size)
    "nis": ("SNIS", "K = 1024"),
    "rejection_sampling": ("TRS", "T = 1024"),
    "lars": ("LARS", "T = 1024"),
    "his": ("HIS", "T = 5"),
}
TF_ENV = {"PYTHONPATH": str(EIMREF), "TF_CPP_MIN_LOG_LEVEL": "2"}
CONFIG = {"nis": "snis", "rejection_sampling": "trs", "lars": "lars", "his": "his"}

_OURS_STEP = """
import statistics, sys
sys.path.insert(0, {bench!r})
import toy2d_steps as T
from eim_lightning import HIS, LARS, SNIS, TRS
make = {{"nis": lambda: SNIS(), "rejection_sampling": lambda: TRS(), "lars": lambda: LARS(),
        "his": lambda: HIS()}}[{algo!r}]
print("MS", 1e3 * statistics.median(T.lightning_seconds(make, {steps}, {warmup}, 1, False)))
"""


def tf_installed() -> bool:
    return TF_PYTHON.exists() and (EIMREF / "eim").is_dir()


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> tuple[float, str]:
    """Wall seconds and combined output of a fresh process; raises if it fails."""
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    took = time.perf_counter() - began
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took, proc.stdout + proc.stderr


def ours_step_ms(algo: str, steps: int, warmup: int) -> float:
    code = _OURS_STEP.format(bench=str(REPO / "bench"), algo=algo, steps=steps, warmup=warmup)
    _, out = _run([sys.executable, "-c", code], cwd=REPO)
    return float(re.search(r"^MS ([0-9.]+)", out, re.M).group(1))


def tf_bare_ms(algo: str, steps: int) -> float:
    _, out = _run(
        [
            str(TF_PYTHON),
            str(TFREF / "bench_tf_step.py"),
            "--algo",
            algo,
            "--K",
            "1024",
            "--steps",
            str(steps),
            "--repeats",
            "1",
            "--target",
            "checkerboard",
        ]
    )
    return float(re.search(rf"^{algo} 1024 ([0-9.]+)$", out, re.M).group(1))


def tf_script(algo: str, steps: int, target: str) -> tuple[float, float]:
    """(wall seconds of the whole process, ms per step from its log timestamps)."""
    with tempfile.TemporaryDirectory() as logdir:
        took, out = _run(
            [
                str(TF_PYTHON),
                "-m",
                "eim.small_problems",
                f"--algo={algo}",
                "--K=1024",
                f"--target={target}",
                f"--max_steps={steps}",
                f"--logdir={logdir}",
            ],
            cwd=EIMREF,
            env=TF_ENV,
        )
        log = Path(logdir) / "tf.log"
        log.write_text(out)
        _, parsed = _run([sys.executable, str(TFREF / "parse_upstream_log.py"), algo, str(log)])
    match = re.search(r"ts_ms_per_step=([0-9.]+)", parsed)
    return took, float(match.group(1)) if match else float("nan")


def ours_process_s(algo: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
        took, _ = _run(
            [sys.executable, "-m", "eim_lightning", *fit_arguments(CONFIG[algo], steps, out)],
            cwd=REPO,
            env={"TORCHINDUCTOR_CACHE_DIR": cache},  # an empty compile cache, as the goal says
        )
    return took


def ours_startup_s() -> float:
    """Wall seconds of a fresh process importing what ``eim fit`` imports before it trains."""
    return _run([sys.executable, "-c", "import eim_lightning.cli"], cwd=REPO)[0]


def tf_startup_s() -> float:
    """Wall seconds of a fresh process importing the authors' script (TensorFlow, TFP), not running it."""
    return _run([str(TF_PYTHON), "-c", "import eim.small_problems"], cwd=EIMREF, env=TF_ENV)[0]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _paired(theirs: list[float], ours: list[float]) -> float:
    """The median over windows of TF / ours measured in the same window (less exposed to the
    machine's drift between windows than a ratio of medians)."""
    return _median([t / o for t, o in zip(theirs, ours)])


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def per_step_table(windows: int, steps: int, warmup: int, with_tf: bool) -> list[str]:
    rows = []
    for algo, (model, size) in ALGOS.items():
        ours, bare, script = [], [], []
        for _ in range(windows):
            ours.append(ours_step_ms(algo, steps, warmup))
            if with_tf:
                bare.append(tf_bare_ms(algo, steps))
                script.append(tf_script(algo, max(4000, warmup + steps + 1000), "checkerboard")[1])
            print(
                f"  {model}: ours {ours[-1]:.3f} ms"
                + (f", TF bare {bare[-1]:.3f}, TF script {script[-1]:.3f}" if with_tf else ""),
                flush=True,
            )
        o, b, s = _median(ours), _median(bare), _median(script)
        rows.append(
            f"| {model} | {size} | {_fmt(o, 3)} | {_fmt(s, 3)} | {_fmt(b, 3)} | {_fmt(_paired(script, ours))} "
            f"| {_fmt(s / o)} | {_fmt(_paired(bare, ours))} |"
        )
    return rows


def process_table(windows: int, steps: int, with_tf: bool) -> list[str]:
    """The whole-process rows, then the start-up row (every window's start-ups)."""
    rows, all_ours_start, all_tf_start = [], [], []
    for algo, (model, size) in ALGOS.items():
        ours, theirs, ours_start, tf_start = [], [], [], []
        for _ in range(windows):
            ours.append(ours_process_s(algo, steps))
            ours_start.append(ours_startup_s())
            if with_tf:
                theirs.append(tf_script(algo, steps, "nine_gaussians")[0])
                tf_start.append(tf_startup_s())
            print(
                f"  {model}: ours {ours[-1]:.1f} s (start-up {ours_start[-1]:.1f})"
                + (f", TF {theirs[-1]:.1f} s (start-up {tf_start[-1]:.1f})" if with_tf else ""),
                flush=True,
            )
        o, t = _median(ours), _median(theirs)
        after = _paired([a - b for a, b in zip(theirs, tf_start)], [a - b for a, b in zip(ours, ours_start)])
        rows.append(
            f"| {model} | {size} | {_fmt(o, 1)} | {_fmt(t, 1)} | {_fmt(_paired(theirs, ours))} | {_fmt(t / o)} "
            f"| {_fmt(after)} |"
        )
        all_ours_start += ours_start
        all_tf_start += tf_start
    o, t = _median(all_ours_start), _median(all_tf_start)
    rows.append(
        f"| start-up only | - | {_fmt(o, 1)} | {_fmt(t, 1)} | {_fmt(_paired(all_tf_start, all_ours_start))} "
        f"| {_fmt(t / o)} | - |"
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument(
        "--step-steps",
        type=int,
        default=5000,
        help="timed steps per window (per-step table); runs of >= 5000 steps get the defaults of long runs",
    )
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20_000, help="steps of the whole-process runs")
    parser.add_argument("--part", choices=("step", "process", "both"), default="both")
    parser.add_argument("--output", default=None, help="write (or update) the Markdown here")
    opts = parser.parse_args(argv)
    with_tf = tf_installed()
    command = f"`python bench/vs_tf.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
    missing = (
        []
        if with_tf
        else [
            f"**The TF reference is not installed** (looked for `{TF_PYTHON}`): this table holds our numbers "
            "alone. Install it with `bash ../shared/tfref/install.sh` (a TF 2.15 CPU venv in `~/.cache/eimref`, a "
            "few minutes) and rerun `make bench`.",
            "",
        ]
    )
    sections = {}
    if opts.part in ("step", "both"):
        print("per-step table", flush=True)
        began = time.time()
        rows = per_step_table(opts.windows, opts.step_steps, opts.warmup, with_tf)
        sections[STEP] = [
            f"{STEP}, 2-D (batch 128, checkerboard)",
            "",
            *missing,
            f"Ours: `Trainer.fit` at the module's defaults for a run of {opts.warmup + opts.step_steps} steps "
            f"(logger, checkpoints, progress bar off; {opts.step_steps} timed steps after {opts.warmup}); TF script: "
            "the authors' whole `eim.small_problems` loop, ms per step from its own log timestamps; TF bare: "
            "`sess.run(train_op)` alone (`bench_tf_step.py`). Ratio = TF / ours (above 1: ours is faster); "
            f"{RATIO_NOTE}",
            "",
            "| model | size | ours (ms/step) | TF script (ms/step) | TF bare (ms/step) | ratio to TF script "
            "| ratio of the medians | ratio to TF bare |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            footer(opts.windows, began, command),
            "",
        ]
    if opts.part in ("process", "both"):
        print("whole-process table", flush=True)
        began = time.time()
        rows = process_table(opts.windows, opts.steps, with_tf)
        sections[PROCESS] = [
            f"{PROCESS}, {opts.steps:,} steps on nine_gaussians",
            "",
            *missing,
            "Ours: `eim fit --config configs/toy2d/<algo>_nine_gaussians.yaml --trainer.max_steps "
            f"{opts.steps}` as shipped (TensorBoard logger, checkpoints, image callback, progress bar, validation "
            "every 1000 steps), start-up included, an empty compile cache (a fresh `TORCHINDUCTOR_CACHE_DIR` per "
            "run); TF: `python -m eim.small_problems --algo=... --K=1024 "
            f"--target=nine_gaussians --max_steps={opts.steps}`. Wall seconds of a fresh process; ratio = TF / ours; "
            f"{RATIO_NOTE} Start-up: a fresh process that imports what the script imports before training, "
            'and exits (ours `python -c "import eim_lightning.cli"`: torch, Lightning, torchmetrics and what they '
            'import; TF `python -c "import eim.small_problems"`: TensorFlow and TFP), measured beside each run in '
            "its window; *ratio after start-up* is the median over windows of (TF - its start-up) / (ours - ours); "
            "the last row is the start-up alone, over all windows.",
            "",
            "| model | size | ours (s) | TF (s) | ratio | ratio of the medians | ratio after start-up |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            footer(opts.windows, began, command),
            "",
        ]
    for lines in sections.values():
        print("\n".join(lines))
    if opts.output:
        write_sections(Path(opts.output), sections)


STEP, PROCESS = "## Per optimiser step", "## Whole process"
RATIO_NOTE = (
    "a ratio column is the median over windows of the ratio measured within each window (ours and TF run "
    "back to back), the ratio of the medians (each side's median over all windows) beside it."
)


def footer(windows: int, began: float, command: str) -> str:
    from machine import describe

    return (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {describe()}; both sides at their default thread counts "
        f"(torch: {torch_threads()} intra-op threads, closed-form training steps on one, the engine's automatic "
        f"`step_threads`; TF: its defaults). Ours and TF alternate in {windows} windows, "
        f"each cell the median; this table took {(time.time() - began) / 60:.1f} minutes. Command: {command}. These "
        "shared machines drift up to 2x between runs: compare the ratios, not the times across runs."
    )


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def write_sections(path: Path, sections: dict[str, list[str]]) -> None:
    """Write the tables measured now into ``path``, keeping the other table of an earlier run; each
    table replaced leaves its ratios as a line of :data:`HISTORY` (newest first), so that runs on
    other machines stay on the page."""
    parts = dict.fromkeys((STEP, PROCESS, HISTORY), "")
    old = path.read_text() if path.exists() else ""
    for chunk in old.split("\n## ")[1:]:
        for key in parts:
            if ("## " + chunk).startswith(key):
                parts[key] = "## " + chunk.rstrip() + "\n"
    earlier = [line for line in parts[HISTORY].splitlines() if line.startswith("- ")]
    for key, lines in sections.items():
        summary = ratio_summary(parts[key])
        if summary is not None and summary not in earlier:
            earlier.insert(0, summary)
        parts[key] = "\n".join(lines)
    if earlier:
        parts[HISTORY] = "\n".join([HISTORY, "", HISTORY_NOTE, "", *earlier, ""])
    path.write_text("# Speed beside the authors' TF1 code\n\n" + "\n".join(p for p in parts.values() if p))


HISTORY = "## Earlier runs"
HISTORY_NOTE = (
    "The ratio to TF (TF / ours; above 1: ours is faster) of each table an earlier run wrote here, newest first: the "
    "same commands on other days and machines. A ratio is only comparable within its own run."
)


def ratio_summary(section: str) -> str | None:
    """One line of :data:`HISTORY` for a table section as :func:`main` writes it: its title, the date and
    machine of its footer and each model's first ratio column; None where it holds no table."""
    lines = section.splitlines()
    header = next((line for line in lines if line.startswith("| model |")), None)
    footer = re.search(r"Measured (\S+) on (.+?);", section)
    if header is None or footer is None:
        return None
    column = next(i for i, cell in enumerate(header.strip("|").split("|")) if cell.strip().startswith("ratio"))
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| ") and line != header]
    ratios = ", ".join(f"{cells[0].strip()} {cells[column].strip()}" for cells in rows)
    title = lines[0].removeprefix("## ")
    return f"- {title}, measured {footer.group(1)} on {footer.group(2)}: {ratios}."


if __name__ == "__main__":
    main()
