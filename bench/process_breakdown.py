"""Where the whole process's time goes: ``eim fit`` of a shipped 2-D config, phase by phase.

Goal 2 of the speed issue times the whole process (``bench/vs_tf.py --part process``); this
script says what that time is made of, for our side, so that the part outside the optimiser steps
is measured rather than guessed. Each run is a fresh process of ``eim fit --config
configs/toy2d/<algo>_nine_gaussians.yaml --trainer.max_steps N`` as shipped (TensorBoard logger,
checkpoints, image callback, progress bar, validation every 1000 steps; an empty compile cache),
with timers wrapped around the phases, each phase's time exclusive of the phases inside it:

* **start-up**: the interpreter and ``import eim_lightning.cli`` (torch, Lightning and what they
  import);
* **set-up**: from there to the first training batch: parsing the config, building the model,
  datamodule and trainer, Lightning's set-up;
* **steps**: the module's ``training_step`` (a block of optimiser steps with its logging);
* **validation**: Lightning's evaluation loop (the sanity check included);
* **images**: ``DensityImageCallback.render``;
* **checkpoints**: ``Trainer.save_checkpoint``;
* **rest of fit**: the remainder of ``Trainer.fit``: Lightning's per-batch loop, logger flushes,
  the progress bar, callbacks' hooks;
* **exit**: after ``fit`` until the process has ended (the time outside the process's own clock,
  less a bare interpreter's start and end, which counts as start-up).

The second table is the import chain, from ``python -X importtime -c "import eim_lightning.cli"``:
cumulative seconds of the modules that dominate it, each where it is first imported
(``eim_lightning.cli``: the whole chain).

    python bench/process_breakdown.py --output docs/BENCHMARKS_PROCESS.md
    python bench/process_breakdown.py --steps 2000 --repeats 1 --algos snis   # a quick look

Never run it while other jobs share the cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALGOS = ("snis", "trs", "lars", "his")
PHASES = ("start-up", "set-up", "steps", "validation", "images", "checkpoints", "rest of fit", "exit")
#: modules reported from the import chain, as ``-X importtime`` names them
IMPORTS = (
    "torch",
    "lightning",
    "torchmetrics.functional",
    "torchvision",
    "torch._dynamo",
    "scipy.signal",
    "matplotlib",
    "eim_lightning",
    "eim_lightning.cli",
)


class _Timers:
    """Exclusive time per phase: entering a phase pauses the one it interrupts."""

    def __init__(self) -> None:
        self.spent = dict.fromkeys(PHASES, 0.0)
        self.stack: list[tuple[str, float]] = []

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            now = time.perf_counter()
            if self.stack:  # pause the phase this one interrupts
                outer, began = self.stack[-1]
                self.spent[outer] += now - began
            self.stack.append((phase, now))
            try:
                return original(*args, **kwargs)
            finally:
                _, began = self.stack.pop()
                now = time.perf_counter()
                self.spent[phase] += now - began
                if self.stack:  # resume it
                    self.stack[-1] = (self.stack[-1][0], now)

        setattr(owner, name, timed)


def fit_arguments(algo: str, steps: int, save_dir: str) -> list[str]:
    """The ``eim`` arguments of goal 2's whole process (here and in ``bench/vs_tf.py``): the
    shipped 2-D config of ``algo`` for ``steps`` steps, writing under ``save_dir``."""
    config, logs = f"configs/toy2d/{algo}_nine_gaussians.yaml", "--trainer.logger.init_args.save_dir"
    return ["fit", "--config", config, "--trainer.max_steps", str(steps), logs, save_dir]


def child(algo: str, steps: int, save_dir: str) -> dict:
    """One timed ``eim fit`` in this process; returns seconds per phase (start-up without the
    interpreter's own start, which the parent adds)."""
    began = time.perf_counter()
    from lightning.pytorch import Trainer
    from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop

    import eim_lightning.cli as cli
    from eim_lightning.callbacks import DensityImageCallback
    from eim_lightning.modules.mixin import BoundEstimatorMixin

    timers = _Timers()
    timers.spent["start-up"] = time.perf_counter() - began
    timers.wrap(Trainer, "fit", "rest of fit")
    timers.wrap(BoundEstimatorMixin, "training_step", "steps")
    timers.wrap(_EvaluationLoop, "run", "validation")
    timers.wrap(DensityImageCallback, "render", "images")
    timers.wrap(Trainer, "save_checkpoint", "checkpoints")
    marks: dict[str, float] = {}
    timed_fit, timed_step = Trainer.fit, BoundEstimatorMixin.training_step

    def fit(*args, **kwargs):
        marks["fit"] = time.perf_counter()
        try:
            return timed_fit(*args, **kwargs)
        finally:
            marks["fit end"] = time.perf_counter()

    def training_step(*args, **kwargs):  # set-up ends where the first batch begins
        if "first batch" not in marks:
            marks["first batch"] = time.perf_counter()
            marks["validation before"] = timers.spent["validation"]  # the sanity check
        return timed_step(*args, **kwargs)

    Trainer.fit, BoundEstimatorMixin.training_step = fit, training_step
    setup_began = time.perf_counter()
    cli.main(fit_arguments(algo, steps, save_dir))
    ended = time.perf_counter()
    spent = timers.spent
    # fit's own time before the first batch (its validation, the sanity check, aside) is set-up
    fit_setup = marks["first batch"] - marks["fit"] - marks["validation before"]
    spent["rest of fit"] -= fit_setup
    spent["set-up"] = marks["first batch"] - setup_began - marks["validation before"]
    spent["exit"] = ended - marks["fit end"]
    return {"spent": spent, "in_process": ended - began}


def import_chain() -> dict[str, float]:
    """Cumulative import seconds of :data:`IMPORTS`, each at its first import."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import eim_lightning.cli"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, float] = {}
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        if name in IMPORTS and name not in found and cumulative.strip().isdigit():
            found[name] = int(cumulative) / 1e6
    return {name: found[name] for name in IMPORTS if name in found}


def measure(algo: str, steps: int) -> dict[str, float]:
    """One fresh process: seconds per phase, ``total`` its wall time."""
    with tempfile.TemporaryDirectory() as logs, tempfile.TemporaryDirectory() as cache:
        began = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--child", algo, "--steps", str(steps), "--save-dir", logs],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache},
        )
        wall = time.perf_counter() - began
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    spent = result["spent"]
    # outside the child's own clock: the interpreter's start (start-up) and its end (exit); a bare
    # interpreter's start and end is counted as start-up, the rest as exit
    outside = wall - result["in_process"]
    spent["start-up"] += min(outside, _bare_interpreter())
    spent["exit"] += max(0.0, outside - _bare_interpreter())
    spent["total"] = wall
    return spent


@functools.cache
def _bare_interpreter() -> float:
    """Seconds to start and end an interpreter that does nothing (median of 5)."""
    times = []
    for _ in range(5):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per model (median)")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--output", default=None)
    parser.add_argument("--child", choices=ALGOS, help=argparse.SUPPRESS)
    parser.add_argument("--save-dir", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        print(json.dumps(child(opts.child, opts.steps, opts.save_dir)))
        return
    began = time.time()
    rows = []
    runs = {algo: [] for algo in opts.algos}
    for _ in range(opts.repeats):  # the models take turns, so that drift hits them alike
        for algo in opts.algos:
            runs[algo].append(measure(algo, opts.steps))
            print(algo, {k: round(v, 2) for k, v in runs[algo][-1].items()}, flush=True)
    for algo in opts.algos:
        cells = {key: statistics.median(run[key] for run in runs[algo]) for key in (*PHASES, "total")}
        per_step = cells["steps"] / opts.steps * 1e3
        rows.append(
            f"| {algo.upper()} | {cells['total']:.1f} | "
            + " | ".join(f"{cells[p]:.1f}" for p in PHASES)
            + f" | {cells['total'] - cells['steps']:.1f} | {per_step:.3f} |"
        )
    chain = import_chain()
    sys.path.insert(0, str(REPO / "bench"))
    from machine import describe

    lines = [
        "# Where the whole process's time goes (2-D, 20,000 steps)",
        "",
        f"`eim fit --config configs/toy2d/<algo>_nine_gaussians.yaml --trainer.max_steps {opts.steps}` as shipped "
        "(the whole-process run of `bench/vs_tf.py`), with timers around its phases (the docstring of "
        "`bench/process_breakdown.py` defines them; each phase's seconds exclude the phases inside it). Seconds, "
        f"median of {opts.repeats} fresh processes per model.",
        "",
        "| model | total | " + " | ".join(PHASES) + " | all but steps | steps (ms/step) |",
        "|---|" + "---|" * (len(PHASES) + 3),
        *rows,
        "",
        'Import chain (`python -X importtime -c "import eim_lightning.cli"`, one run; cumulative seconds of '
        "each module where it is first imported, so a module's figure includes the ones it imports first):",
        "",
        "| " + " | ".join(chain) + " |",
        "|" + "---|" * len(chain),
        "| " + " | ".join(f"{v:.2f}" for v in chain.values()) + " |",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {describe()}; took {(time.time() - began) / 60:.1f} "
        f"minutes. Command: `python bench/process_breakdown.py"
        f"{'' if opts.steps == 20_000 else f' --steps {opts.steps}'}"
        f"{'' if opts.repeats == 3 else f' --repeats {opts.repeats}'}"
        f"{'' if list(opts.algos) == list(ALGOS) else ' --algos ' + ' '.join(opts.algos)}"
        f"{f' --output {opts.output}' if opts.output else ''}`. "
        "These shared machines drift up to 2x between runs: compare phases within a run.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.output:
        Path(opts.output).write_text(text)


if __name__ == "__main__":
    main()
