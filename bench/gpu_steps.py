"""Training steps per second on a GPU, each step eager and replayed from a CUDA graph.

For the 2-D EIMs at the modules' defaults (SNIS K = 1024, TRS T = 1024, LARS T = K = 1024, HIS
T = 5; batch 128 of nine_gaussians) and the static-MNIST VAE with an SNIS and an N(0, I) prior
(its shipped config, batch 128, real data from ``EIM_DATA_DIR``): ``Trainer.fit`` on one GPU with
logger, checkpoints, progress bar and validation off, in float32 and bf16-mixed, with
``cuda_graphs=False`` and ``True`` alternating in ``--rounds`` rounds. Steps/s over ``--steps``
steps after ``--warmup`` (the capture and any compilation fall in the warm-up); each cell the
median over rounds, the ratio graphed / eager the median of the ratios within a round.

Without a CUDA device it says so and exits 0 (``make bench`` runs it on any machine) and writes
nothing: the page keeps the last GPU run's figures.

    python bench/gpu_steps.py --output docs/BENCHMARKS_GPU.md
    python bench/gpu_steps.py --steps 200 --rounds 1                 # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy2d_steps import timing_trainer  # noqa: E402  (bench/toy2d_steps.py)

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("32-true", "bf16-mixed")
TOY = ("SNIS", "TRS", "LARS", "HIS")
VAE_PRIORS = ("snis", "gaussian")


def _data_dir() -> Path:
    return Path(os.environ.get("EIM_DATA_DIR", REPO.parent / "shared" / "data"))


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Timer(L.Callback):
    """The time of the first training batch at or after ``warmup`` steps and of the end."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.step0, self.end, self.steps = warmup, None, 0, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            _synchronize()
            self.start, self.step0 = time.perf_counter(), trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        _synchronize()
        self.end, self.steps = time.perf_counter(), trainer.global_step - self.step0


def _toy(name: str, graphs: bool):
    import eim_lightning
    from datamodules import Toy2DDataModule

    return getattr(eim_lightning, name)(cuda_graphs=graphs), Toy2DDataModule("nine_gaussians")


def _vae(prior: str, graphs: bool):
    import yaml

    from eim_lightning.cli import EIMCLI

    cfg = yaml.safe_load((REPO / "configs/images/static_mnist" / f"vae_{prior}_prior.yaml").read_text())
    cfg["trainer"] = {}
    cfg["model"].setdefault("init_args", {})["cuda_graphs"] = graphs
    cfg["data"]["init_args"]["root"] = str(_data_dir())
    cli = EIMCLI(args=["--config", yaml.safe_dump(cfg)], run=False)
    return cli.model, cli.datamodule


def steps_per_second(
    make, name: str, graphs: bool, precision: str, steps: int, warmup: int, accelerator: str = "gpu"
) -> tuple[float, bool]:
    """Steps/s of one fit, and whether its steps were replayed from a graph (``accelerator="cpu"``
    for the tests)."""
    L.seed_everything(0, verbose=False)
    model, datamodule = make(name, graphs)
    timer = _Timer(warmup)
    timing_trainer(warmup + steps, timer, accelerator, precision).fit(model, datamodule=datamodule)
    if timer.start is None:
        raise RuntimeError(f"no block of training steps started after the {warmup} warm-up steps: time more --steps")
    graphed = model._graphed_step
    return timer.steps / (timer.end - timer.start), graphed is not None and not graphed.failed and graphed.replays > 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=100, help="steps before the timed ones")
    parser.add_argument("--rounds", type=int, default=2, help="eager and graphed fits alternate this often")
    parser.add_argument("--output", type=Path, help="write the Markdown page here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error("--steps, --warmup and --rounds must be at least 1")
    if not torch.cuda.is_available():
        print("gpu_steps: no CUDA device here; nothing measured (run it on a GPU machine)")
        return
    sys.path.insert(0, str(REPO))
    cases = [(_toy, name, f"{name} (2-D)") for name in TOY]
    if (_data_dir() / "binarized_mnist").is_dir():
        cases += [(_vae, prior, f"VAE, {prior} prior (static MNIST)") for prior in VAE_PRIORS]
    else:
        print("gpu_steps: no static MNIST under EIM_DATA_DIR; the VAE rows are left out")
    started = time.perf_counter()
    rows = []
    for make, name, label in cases:
        for precision in PRECISIONS:
            eager, graphed, ratios, served = [], [], [], True
            for _ in range(args.rounds):
                e, _ = steps_per_second(make, name, False, precision, args.steps, args.warmup)
                g, used = steps_per_second(make, name, True, precision, args.steps, args.warmup)
                eager.append(e)
                graphed.append(g)
                ratios.append(g / e)
                served = served and used
            row = (label, precision, statistics.median(eager), statistics.median(graphed), statistics.median(ratios))
            rows.append((*row, "yes" if served else "no (eager: see the warning)"))
            print(*rows[-1], flush=True)
    minutes = (time.perf_counter() - started) / 60
    lines = [
        "# Training steps per second on a GPU",
        "",
        "| model | precision | eager (steps/s) | CUDA graph (steps/s) | graph / eager | replayed from a graph |",
        "|---|---|---|---|---|---|",
        *(f"| {m} | {p} | {e:.0f} | {g:.0f} | {r:.2f} | {s} |" for m, p, e, g, r, s in rows),
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {torch.cuda.get_device_name()} "
        f"({os.cpu_count()} CPU cores), torch {torch.__version__}, lightning {L.__version__}; "
        "`Trainer.fit` with logger, checkpoints, progress bar and validation off, "
        f"{args.steps} timed steps after {args.warmup}, {args.rounds} rounds alternating eager and graphed fits, "
        f"each cell the median; this table took {minutes:.1f} minutes. Command: `python bench/gpu_steps.py "
        f"--steps {args.steps} --warmup {args.warmup} --rounds {args.rounds} --output docs/BENCHMARKS_GPU.md`.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
