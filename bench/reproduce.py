"""Reproduce rows of the results pages: train each named row, resumably, evaluate it, record it.

A row is ``DATASET/ROW``: ``configs/images/DATASET/ROW.yaml`` (e.g. ``static_mnist/vae_snis_prior``)
or, for ``toy2d/ROW``, ``configs/toy2d/ROW.yaml`` (e.g. ``toy2d/snis_nine_gaussians``). For each row:

* **train** (``eim fit`` of the config through ``EIMCLI``, ``--trainer.max_steps STEPS``, seed
  ``SEED`` for the run and the data) in a run folder outside the repository,
  ``RUNS/DATASET/ROW/seedSEED`` (2-D SNIS, TRS, LARS: ``.../K<K>/seedSEED``); ``checkpoints/last.ckpt`` is
  written every ``--checkpoint-minutes`` and at the end, and a rerun resumes from it (exact resume:
  the same result as an uninterrupted run), so the command can be killed at any point and run
  again. Asking for more steps than a finished run has continues it.
* **log** the training ELBO as the authors' code does (the one-sample bound of the training
  minibatch, every 5,000 steps) and the training wall time; both are kept in the checkpoints, so
  they survive a resume.
* **evaluate** the final checkpoint (``eim test``): images, the config's test bound on the whole
  test set (1000 importance samples; LARS with Z from the config's 1e8 / 1e6 proposal samples);
  2-D rows (trained at the authors' default K = 128), the mean of single-replica bounds over
  ``--points`` fresh target points (2 million: 2,000 batches of 1,000, each batch drawing its own
  proposal samples, as the authors evaluate; LARS with Z from 1e8 samples) beside the usual
  1000-replica bound on 10,000 points.
* **record** one JSON line in ``docs/results_images.jsonl`` (2-D: ``docs/results_toy2d.jsonl``):
  steps, seed, test points, samples, values, wall and CPU times (the CPU times leave out a
  pause), ELBO curve, validation curve (the module's ``val/<bound_name>`` after each validation
  run), machine, commit and the command. A row whose command is already recorded is skipped.

Arguments after ``--`` are passed to every ``eim`` call (e.g. ``-- --data.init_args.test_subset=100``);
they are part of the recorded command and of the run folder's name. Image data is read from
``EIM_DATA_DIR`` (default ``../shared/data`` beside the repository).

    python bench/reproduce.py static_mnist/vae_gaussian_prior static_mnist/vae_snis_prior --steps 50000 --seed 0
    python bench/reproduce.py toy2d/snis_nine_gaussians --steps 100000 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's eim_lightning and datamodules, whatever is installed

from eim_lightning.cli import EIMCLI  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py, beside this script)

# the 2-D models' arguments that the authors' --K sets (their small_problems.py: NIS K, TRS T, LARS K = T)
K_ARGUMENTS = {"snis": ["num_proposals"], "trs": ["T"], "lars": ["T", "num_z_samples"]}
# EIMCLI is given its arguments, not this script's sys.argv: Lightning's warning about the mismatch is moot
warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def code_commit() -> str:
    """HEAD, with "-dirty" when the code or configs differ from it (not the docs, which runs write)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "eim_lightning", "datamodules", "configs", "bench")
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


class RunLog(Callback):
    """Saves the run to ``path`` every ``minutes`` and after the last step, and keeps, in that
    checkpoint (so a resumed run carries them on), the training ELBO as the authors log it (the
    bound of the training minibatch at every ``every``-th step, counted from 0), the seconds spent
    training, in wall time and in the process's CPU time (time after the last checkpoint of a killed
    run is lost, not counted; CPU time does not count a pause, e.g. SIGSTOP while a benchmark runs,
    and is None where a run resumed from a checkpoint that did not keep it), the steps at which
    training was resumed and the device each part trained on (``[first step, device]``: ``"cpu"``
    or the GPU's name; None for a part whose checkpoint did not keep it) and the validation curve
    (``[step, value]`` of the module's ``val/<bound_name>`` after each validation run; empty where a
    run resumed from a checkpoint that did not keep it)."""

    def __init__(self, path: Path, minutes: float, every: int) -> None:
        self.path, self.interval, self.every = path, 60 * minutes, every
        self.elbo: list[list] = []
        self.saturated: list[list] = []  # LARS: the fraction of the step's proposal samples with a > 0.99
        self.seconds = 0.0
        self.cpu_seconds: float | None = 0.0
        self.resumed_at: list[int] = []
        self.trained_on: list[list] = []
        self.validation: list[list] = []
        self.started: float | None = None
        self.cpu_started = 0.0
        self.saved = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = self.saved = time.time()
        self.cpu_started = time.process_time()
        if trainer.global_step:
            self.resumed_at.append(trainer.global_step)
        device = pl_module.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.trained_on.append([trainer.global_step, name])

    @property
    def state_key(self) -> str:
        return "RunLog"  # also LarsRunLog's: either resumes the other's checkpoints

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the batch's optimiser steps (a block of them for generated data) each with its loss, read
        # from the module's outputs rather than in a per-step hook, which would keep a CUDA graph
        # from serving the steps on a GPU
        losses = outputs["step_losses"] if isinstance(outputs, dict) else []
        first = trainer.global_step - len(losses)
        self.elbo += [[first + i, -float(loss)] for i, loss in enumerate(losses) if (first + i) % self.every == 0]
        if trainer.global_step == trainer.max_steps or time.time() - self.saved >= self.interval:
            trainer.save_checkpoint(self.path)  # atomic: a kill while saving leaves the previous one
            self.saved = time.time()

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(f"val/{pl_module.bound_name}")
        if not trainer.sanity_checking and value is not None:
            self.validation.append([trainer.global_step, float(value)])

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds, self.cpu_seconds = self.train_seconds(), self.train_cpu_seconds()
        self.started = None

    def train_seconds(self) -> float:
        return self.seconds + (time.time() - self.started if self.started is not None else 0.0)

    def train_cpu_seconds(self) -> float | None:
        if self.cpu_seconds is None:
            return None
        return self.cpu_seconds + (time.process_time() - self.cpu_started if self.started is not None else 0.0)

    def state_dict(self) -> dict:
        return {
            "elbo": self.elbo,
            "saturated": self.saturated,
            "seconds": self.train_seconds(),
            "cpu_seconds": self.train_cpu_seconds(),
            "resumed_at": self.resumed_at,
            "trained_on": self.trained_on,
            "validation": self.validation,
        }

    def load_state_dict(self, state: dict) -> None:
        self.elbo, self.seconds, self.resumed_at = state["elbo"], state["seconds"], state["resumed_at"]
        self.saturated = state.get("saturated", [])
        self.cpu_seconds = state.get("cpu_seconds")  # None: a checkpoint from before CPU time was kept
        self.trained_on = state.get("trained_on", [[0, None]])  # likewise: the device was not kept
        self.validation = state.get("validation", [])


class LarsRunLog(RunLog):
    """:class:`RunLog` for a LARS model: also the fraction of saturated acceptances (a(z) > 0.99) of
    the proposal samples at every ``every``-th step, read as the step runs (a per-step hook: on a
    GPU such a row's steps run without a CUDA graph)."""

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        # every optimiser step (also inside a block of steps); global_step is this step's index
        if trainer.global_step % self.every == 0:
            acceptance = pl_module.density.last_acceptance  # a(z) of this step's proposal samples
            self.saturated.append([trainer.global_step, float((acceptance > 0.99).float().mean())])


class Row:
    """One row of a results page under the runner's options: its config, run folder, command."""

    def __init__(self, name: str, opts: argparse.Namespace) -> None:
        self.name, self.opts = name, opts
        self.dataset, self.row = name.split("/")
        self.toy2d = self.dataset == "toy2d"
        self.config = REPO / "configs" / ("toy2d" if self.toy2d else f"images/{self.dataset}") / f"{self.row}.yaml"
        if not self.config.exists():
            raise SystemExit(f"no config {self.config.relative_to(REPO)} for row {name}")
        self.k_arguments = K_ARGUMENTS.get(self.row.split("_")[0], []) if self.toy2d else []
        options = ["--steps", opts.steps, "--seed", opts.seed]
        options += ["--K", opts.K] if self.k_arguments else []
        options += ["--points", opts.points] if self.toy2d else []
        options += ["--", *opts.overrides] if opts.overrides else []
        self.command = " ".join(map(str, ["python bench/reproduce.py", name, *options]))
        folder = Path(opts.runs) / self.dataset / self.row / (f"K{opts.K}" if self.k_arguments else "")
        seed = f"seed{opts.seed}"
        if opts.overrides:
            seed += "-" + hashlib.sha1(" ".join(opts.overrides).encode()).hexdigest()[:8]
        self.folder = folder / seed
        self.last = self.folder / "checkpoints" / "last.ckpt"
        self.records = Path(opts.docs) / f"results_{'toy2d' if self.toy2d else 'images'}.jsonl"

    def args(self) -> list[str]:
        """The ``eim`` arguments of this row, for training and evaluation."""
        seed = self.opts.seed
        args = ["--config", str(self.config), f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]
        args += [f"--model.init_args.{name}={self.opts.K}" for name in self.k_arguments]
        if not self.toy2d:
            args.append(f"--data.init_args.root={os.environ.get('EIM_DATA_DIR', REPO.parent / 'shared' / 'data')}")
        return args + QUIET + self.opts.overrides

    def recorded(self) -> bool:
        lines = self.records.read_text().splitlines() if self.records.exists() else []
        return any(json.loads(line).get("command") == self.command for line in lines if line.strip())

    def train(self) -> dict:
        """Train (or resume, or find finished) this row; its step count, wall time and ELBO curve."""
        config = yaml.safe_load(self.config.read_text())
        # the config's own checkpoints (inside the logger's version folder) are replaced by the run's
        callbacks = [c for c in config["trainer"].get("callbacks", []) if "ModelCheckpoint" not in c["class_path"]]
        args = [
            f"--trainer.max_steps={self.opts.steps}",
            f"--trainer.callbacks={json.dumps(callbacks)}",
            f"--trainer.logger.init_args.save_dir={self.folder}",
            "--trainer.logger.init_args.name=logs",
        ]
        cli = EIMCLI(args=[*self.args(), *args], run=False)
        lars = hasattr(cli.model.density, "last_acceptance")
        log = (LarsRunLog if lars else RunLog)(self.last, self.opts.checkpoint_minutes, self.opts.elbo_every)
        cli.trainer.callbacks.append(log)
        resume = self.last if self.last.exists() else None
        print(f"{self.name}: {'resuming from ' + str(resume) if resume else 'training'} in {self.folder}", flush=True)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
        if cli.trainer.global_step != self.opts.steps:
            raise SystemExit(
                f"{self.name}: {self.folder} holds a run of {cli.trainer.global_step} steps, not "
                f"{self.opts.steps}; choose another --runs folder"
            )
        return {
            "steps": cli.trainer.global_step,
            "train_hours": log.train_seconds() / 3600,
            **({"train_cpu_hours": cpu / 3600} if (cpu := log.train_cpu_seconds()) is not None else {}),
            "resumed_at_steps": log.resumed_at,
            "trained_on": log.trained_on,
            "train_elbo_every": self.opts.elbo_every,
            "train_elbo": log.elbo,
            "validation_metric": f"val/{cli.model.bound_name}",
            "validation": log.validation,
            **({"saturated_fraction": log.saturated} if log.saturated else {}),
        }

    def evaluate(self, *overrides: str) -> dict:
        """``eim test`` of the final checkpoint (with ``overrides``); its value and cost."""
        args = [*self.args(), "--trainer.logger=false", "--trainer.callbacks=[]", *overrides]
        cli = EIMCLI(args=args, save_config_callback=None, run=False)
        began, cpu = time.time(), time.process_time()
        (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=self.last, verbose=False)
        metric = f"test/{cli.model.bound_name}"
        return {
            "metric": metric,
            "value": metrics[metric],
            "points": len(cli.datamodule.test_dataloader().dataset),
            "samples": cli.model.num_test_samples,
            "minutes": (time.time() - began) / 60,
            "cpu_minutes": (time.process_time() - cpu) / 60,
        }

    def record(self, trained: dict) -> dict:
        test = self.evaluate()
        record = {
            "dataset": self.dataset,
            "row": self.row,
            "seed": self.opts.seed,
            **({"K": self.opts.K} if self.k_arguments else {}),
            **trained,
            "metric": test["metric"],
            "test_value": test["value"],
            "test_points": test["points"],
            "num_test_samples": test["samples"],
            "test_minutes": test["minutes"],
            "test_cpu_minutes": test["cpu_minutes"],
        }
        if self.toy2d:  # batches of 1,000 points, each with its own proposal samples, one replica each
            single = self.evaluate(
                "--model.init_args.num_test_samples=1",
                "--data.init_args.eval_batch_size=1000",
                f"--data.init_args.test_size={self.opts.points}",
            )
            record.update(
                single_replica_value=single["value"],
                single_replica_points=single["points"],
                single_replica_batch=1000,
                single_replica_minutes=single["minutes"],
            )
        date = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
        record.update(machine=describe(), commit=code_commit(), date=date, command=self.command)
        return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", help="DATASET/ROW (configs/images/DATASET/ROW.yaml) or toy2d/ROW")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--K", type=int, default=128, help="2-D rows: proposal samples (SNIS K, TRS and LARS T)")
    parser.add_argument("--points", type=int, default=2_000_000, help="2-D rows: points of the single-replica bound")
    parser.add_argument("--runs", default=str(Path.home() / ".cache" / "eim-runs"), help="where the run folders go")
    parser.add_argument("--docs", default=str(REPO / "docs"), help="folder of the results_*.jsonl records")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--elbo-every", type=int, default=5000, help="steps between logged training ELBOs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    opts = parser.parse_args(argv[:split])
    opts.overrides = argv[split + 1 :]
    torch.set_num_threads(opts.threads)
    for row in [Row(name, opts) for name in opts.rows]:
        if row.recorded():
            print(f"{row.name}: already in {row.records.name} ({row.command}), skipped", flush=True)
            continue
        record = row.record(row.train())
        row.records.parent.mkdir(parents=True, exist_ok=True)
        with row.records.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
