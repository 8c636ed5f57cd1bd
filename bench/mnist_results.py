"""Table 1 of the EIM paper, as far as this machine allows: train rows of configs/images/ for a
fixed number of steps and report the 1000-sample test bound beside the papers' numbers.

Each row runs in its own process (``--one DATASET ROW``): ``eim fit`` of the row's config with
``--trainer.max_steps STEPS`` (everything else as in the config: Adam 3e-4, batch 128, the
authors' sizes), then ``eim test`` on the first ``--test-subset`` test images (default all
10,000) with ``num_test_samples`` = 1000 replicas (LARS: Z from the config's 1e8 / 1e6 proposal
samples). Results are appended to ``docs/results_images.jsonl``; ``--report`` rewrites
``docs/RESULTS_IMAGES.md`` from it.

    python bench/mnist_results.py --rows static_mnist/vae_gaussian_prior static_mnist/vae_snis_prior --steps 10000
    python bench/mnist_results.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
JSONL = REPO / "docs" / "results_images.jsonl"
REPORT = REPO / "docs" / "RESULTS_IMAGES.md"

# test NLL (nats, lower is better) reported by the LARS paper (ALGORITHMS.md section 5)
PAPER = {
    ("static_mnist", "vae_gaussian_prior"): 89.11,
    ("dynamic_mnist", "vae_gaussian_prior"): 84.97,
    ("fashion_mnist", "vae_gaussian_prior"): 228.68,
    ("static_mnist", "vae_lars_prior"): 86.53,
    ("dynamic_mnist", "vae_lars_prior"): 83.03,
    ("fashion_mnist", "vae_lars_prior"): 227.45,
    ("static_mnist", "convhvae_lars_prior"): 81.70,
    ("dynamic_mnist", "convhvae_lars_prior"): 80.30,
    ("fashion_mnist", "convhvae_lars_prior"): 225.92,
    ("dynamic_mnist", "lars_vae_proposal"): 83.63,
}


def strided_test_set(datamodule, every: int) -> None:
    """Keep every ``every``-th test image (a spread-out subset: the first n are not representative,
    static MNIST's first 2000 test images are ~25 nats easier than its last 2000)."""
    from datamodules import ImageDataset

    datamodule.setup("test")
    full = datamodule.test_dataset
    datamodule._datasets["test"] = ImageDataset(full.images[::every], full.event_shape, full.transform)


def run_one(dataset: str, row: str, steps: int, test_subset: int | None, runs_dir: Path, data_root: str,
            test_every: int = 1, test_only: str | None = None) -> dict:
    import torch

    torch.set_num_threads(1)
    from machine import describe

    from eim_lightning.cli import EIMCLI

    config = REPO / "configs" / "images" / dataset / f"{row}.yaml"
    common = [
        "--config", str(config),
        f"--trainer.logger.init_args.save_dir={runs_dir}",
        "--trainer.enable_progress_bar=false",
        f"--data.init_args.root={data_root}",
    ]
    if test_subset:
        common.append(f"--data.init_args.test_subset={test_subset}")
    fit = EIMCLI(args=[*common, f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={min(steps, 10_000)}"], run=False)
    began = time.time()
    if test_only is None:
        fit.trainer.fit(fit.model, datamodule=fit.datamodule)
    train_s = time.time() - began
    name = fit.model.bound_name
    val = fit.trainer.callback_metrics.get(f"val/{name}")
    if test_every > 1:
        strided_test_set(fit.datamodule, test_every)
    began = time.time()
    (result,) = fit.trainer.test(fit.model, datamodule=fit.datamodule, verbose=False, ckpt_path=test_only)
    test_s = time.time() - began
    if test_only is not None:
        ckpt = __import__("torch").load(test_only, map_location="cpu", weights_only=False)
        steps_done, train_s = ckpt["global_step"], float("nan")
    return {
        "dataset": dataset,
        "row": row,
        "steps": fit.trainer.global_step if test_only is None else steps_done,
        "test_every": test_every,
        "train_hours": train_s / 3600,
        "test_minutes": test_s / 60,
        "test_points": len(fit.datamodule.test_dataset),
        "num_test_samples": fit.model.num_test_samples,
        "metric": f"test/{name}",
        "test_value": result[f"test/{name}"],
        "last_val_elbo": None if val is None else float(val),
        "log_dir": str(fit.trainer.log_dir),
        "machine": describe(),
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
    }


def report() -> str:
    rows = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()] if JSONL.exists() else []
    rows.sort(key=lambda r: (r["dataset"], r.get("test_every", 1), r["row"], r["steps"]))
    lines = [
        "# Image results (EIM paper Table 1, as far as 2 shared CPU cores allow)",
        "",
        "Written by `python bench/mnist_results.py --report` from `docs/results_images.jsonl`; each row was",
        "produced by `python bench/mnist_results.py --rows DATASET/ROW --steps N` (the row's config under",
        "`configs/images/`, unchanged except `--trainer.max_steps`), one torch thread, while other jobs shared",
        "the machine. Test: the 1000-replica IWAE bound (LARS rows: the log-likelihood *estimate* with Z from",
        "1e8 latent / 1e6 pixel proposal samples) averaged over the test images; NLL = minus that.",
        "Validation during training: the single-sample ELBO.",
        "",
        "| dataset | model | steps | epochs | train (h) | test points | test NLL (nats) | paper NLL | test (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = PAPER.get((r["dataset"], r["row"]))
        epochs = r["steps"] * 128 / 50_000
        lines.append(
            f"| {r['dataset']} | {r['row']} | {r['steps']} | {epochs:.1f} | "
            f"{'(the run above, retested)' if r['train_hours'] != r['train_hours'] else format(r['train_hours'], '.2f')} | "
            f"{r['test_points']}{' (every ' + str(r.get('test_every')) + 'th)' if r.get('test_every', 1) > 1 else ''} | "
            f"{-r['test_value']:.2f} | {'' if paper is None else f'{paper:.2f}'} | {r['test_minutes']:.1f} |"
        )
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """## What this is, and what falls short

* **Training length.** The papers trained for millions of steps (the learning-rate step alone is at
  1e6); these rows ran 10,000 steps (about 26 epochs) each, and the static and Fashion-MNIST VAE
  rows with N(0, I) and SNIS priors also 30,000, on a CPU shared with other jobs. The gap to the
  paper's NLL is mostly that: from 10k to 30k steps the static test NLL fell by 5.1 (N(0, I) prior)
  and 5.6 nats (SNIS prior), the Fashion-MNIST one by 4.5 and 4.2, and it had not levelled off:
  the single-sample validation ELBO on static MNIST went -104.26, -100.66, -99.04 (N(0, I)) and
  -102.07, -98.02, -96.18 (SNIS) at 10k, 20k, 30k steps (the 10k values equal those of the 10k-step
  runs: the runs are deterministic given the seed). The numbers show that every row trains and is
  evaluated with the paper's protocol, not where the models converge. What they do show already:
  every EIM prior beats the N(0, I) prior at equal steps (by about 2 nats at 10k steps on static
  MNIST and Fashion-MNIST; at 30k by 2.5 nats on static MNIST and 1.7 on Fashion-MNIST), the
  direction and size of the improvement the LARS paper reports for its prior (2.6 / 1.2 nats).
* **Pixel space and ConvHVAE** (10k steps each, static MNIST): SNIS with a VAE proposal (K = 1024,
  the proposal trained jointly through the SNIS bound) reached 98.00 nats, *not* better than the
  VAE alone at 10k steps (97.55 on the same test images), while LARS with a VAE proposal (T = 100,
  Z from 1e6 samples at test; its training Z fell to about 0.004) reached 96.54, 1.0 nat better;
  the EIM paper reports both improving on their proposal after full training. Each pixel-space step
  costs about 80 ms against about 20 ms for the VAE (1024 decoded proposal samples per step). The
  ConvHVAE (two stochastic layers, convolutional) reached 91.06 nats with an N(0, I) prior, and
  with an EIM or LARS prior on its top latent 88.19 (SNIS), 87.50 (TRS) and 87.71 (LARS, an
  estimate): 2.9 to 3.6 nats from the learned prior, and all far better than the MLP VAE at equal
  steps (about 115-140 ms a step).
* **Test set.** Rows marked "every 5th" were evaluated on every 5th test image (2,000 of 10,000, a
  spread-out subset: static MNIST's first test images are much easier than its last, so a prefix
  would be biased); the static VAE row was evaluated on both, so the two can be compared.
* **Not run here**: ConvHVAE with an HIS prior, SNIS and LARS with ConvHVAE proposals,
  dynamic MNIST (no grayscale MNIST offline), the jittered (Table 2) rows, and Fashion-MNIST beyond
  the two VAE rows; their configs are in `configs/images/` and train in the tests on small slices.
* **Paper column**: the LARS paper's numbers as quoted in ALGORITHMS.md section 5 (VAE with N(0, I)
  and with a LARS prior); the EIM paper's own numbers for the TRS/SNIS/HIS priors are not quoted
  there, so those cells are empty (the EIM paper reports them better than or comparable to LARS).
* **Train (h)** is wall-clock time on a machine whose load from other jobs varied from 2 to 9 on 2
  cores during these runs, so it compares poorly across rows; `docs/BENCHMARKS_IMAGES.md` has
  interleaved step timings.
* **LARS** rows report a log-likelihood *estimate* (Z from 1e8 proposal samples in latent space, not
  the LARS paper's 1e10), not a bound.
* **Fashion-MNIST** trains on 50,000 images (the last 10,000 of the training file are the validation
  split, which the authors' code does not hold out), so its numbers are slightly pessimistic.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="*", default=[], help="DATASET/ROW names under configs/images")
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "ROW"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--test-subset", type=int, default=None, help="first n test images (default: all)")
    parser.add_argument("--test-every", type=int, default=1, help="test on every n-th test image (default: all)")
    parser.add_argument("--test-only", default=None, help="with --one: test this checkpoint instead of training")
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "results_images"))
    parser.add_argument("--data-root", default=os.environ.get("EIM_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--report", action="store_true", help="rewrite docs/RESULTS_IMAGES.md from the JSONL")
    opts = parser.parse_args(argv)
    if opts.one:
        result = run_one(*opts.one, opts.steps, opts.test_subset, Path(opts.runs_dir), opts.data_root,
                         opts.test_every, opts.test_only)
        with JSONL.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)
        return
    for name in opts.rows:
        dataset, row = name.split("/")
        cmd = [sys.executable, __file__, "--one", dataset, row, "--steps", str(opts.steps), "--runs-dir", opts.runs_dir,
               "--data-root", opts.data_root]
        if opts.test_subset:
            cmd += ["--test-subset", str(opts.test_subset)]
        if opts.test_every > 1:
            cmd += ["--test-every", str(opts.test_every)]
        print("running", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
        REPORT.write_text(report())
    if opts.report or opts.rows:
        REPORT.write_text(report())
        print(REPORT.read_text())


if __name__ == "__main__":
    main()
