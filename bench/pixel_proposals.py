"""A pixel-space EIM's proposal on its own: where an EIM with a VAE proposal gains or loses.

An SNIS (or LARS) model in pixel space trains its VAE proposal jointly, through the EIM's bound: the
data term ``log pi(x)`` (the VAE's ELBO) and, for SNIS, the normaliser over proposal samples,
reached through the VAE's Gumbel straight-through sampler. Its test bound therefore splits into

    EIM bound = [the trained proposal's own bound] + [what the energy adds on top of it],

and comparing the first part with a VAE trained alone for the same steps tells whether the joint
training hurt the proposal. This script evaluates the proposal of a finished ``bench/reproduce.py``
row (its final checkpoint) with the VAE's test protocol (1000 importance samples on all test images)
and appends a record to ``docs/results_pixel_proposals.jsonl``; ``bench/mnist_results.py`` shows it.

    python bench/pixel_proposals.py static_mnist/snis_vae_proposal --steps 50000 --seed 0 [-- OVERRIDES]

OVERRIDES: the ``eim`` arguments the row was trained with after ``--`` (they name its run folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's eim_lightning and datamodules, whatever is installed
from eim_lightning.cli import EIMCLI  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py, beside this script)

RECORDS = REPO / "docs" / "results_pixel_proposals.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", help="DATASET/ROW of a pixel-space EIM with a VAE proposal")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1000, help="importance samples of the proposal's bound")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--runs", default=str(Path.home() / ".cache" / "eim-runs"), help="bench/reproduce.py's runs")
    parser.add_argument("--threads", type=int, default=1)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    opts, overrides = parser.parse_args(argv[:split]), argv[split + 1 :]
    torch.set_num_threads(opts.threads)
    dataset, row = opts.row.split("/")
    folder = f"seed{opts.seed}"  # named as bench/reproduce.py names it
    folder += "-" + hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:8] if overrides else ""
    checkpoint = Path(opts.runs) / dataset / row / folder / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        raise SystemExit(f"no run at {checkpoint}: python bench/reproduce.py {opts.row} --steps {opts.steps}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state["global_step"] != opts.steps:
        raise SystemExit(f"{checkpoint} holds {state['global_step']} steps, not {opts.steps}")
    config = REPO / "configs" / "images" / dataset / f"{row}.yaml"
    args = ["--config", str(config), f"--data.init_args.root={opts.data}", f"--data.init_args.seed={opts.seed}"]
    cli = EIMCLI(args=[*args, "--trainer.logger=false", *overrides], save_config_callback=None, run=False)
    cli.model.load_state_dict(state["state_dict"])
    proposal = cli.model.density.proposal
    cli.datamodule.setup("test")
    began, total, count = time.time(), 0.0, 0
    with torch.no_grad():
        for batch in cli.datamodule.test_dataloader():
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            total += float(proposal.log_prob_lower_bound(x, opts.samples).sum())
            count += x.shape[0]
    record = {
        "dataset": dataset,
        "row": row,
        "seed": opts.seed,
        "steps": opts.steps,
        "proposal_test_value": total / count,
        "test_points": count,
        "num_test_samples": opts.samples,
        "minutes": (time.time() - began) / 60,
        "machine": describe(),
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "command": " ".join(
            ["python bench/pixel_proposals.py", opts.row, f"--steps {opts.steps} --seed {opts.seed}"]
            + (["--", *overrides] if overrides else [])
        ),
    }
    with RECORDS.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
