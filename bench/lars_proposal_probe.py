"""How a proposal trains inside LARS beside alone (issue 12: LARS with a ConvHVAE proposal reached
201.20 nats after 10,000 steps, seed 0: its proposal never left the ELBO's -207 plateau; on jittered
MNIST the Gaussian-decoder VAE trained inside LARS ended 8-14 nats better than the VAE alone).

Trains, from the same seed and data, for ``--steps`` steps each (batch 128, Adam 3e-4, the shipped
configs of ``--dataset``: static MNIST, jittered MNIST or jittered Fashion-MNIST):

* ``alone``: the proposal on its own (``configs/images/<dataset>/<proposal>_gaussian_prior.yaml``, on
  jittered data ``vae_gaussian_decoder.yaml``);
* ``alone_eager``: the same, its training step not compiled (LARS's is not);
* ``lars``: LARS with that proposal as configured (``lars_<proposal>_proposal.yaml``): Z_curr's
  1024 proposal samples are reparameterised (Gumbel straight-through pixels), so the gradient of Z
  reaches the proposal's decoder;
* ``no_z_gradient``: the same with ``reparameterize_z_samples=False``, as the authors' code trains
  its ConvHVAE proposal;
* ``t1``: the same with ``T = 1``, where LARS's estimate is ``log pi(x)``: the proposal's objective
  is its own ELBO, exactly as alone; what is left of LARS is its 1024 proposal samples per step for
  Z (random numbers drawn, no gradient) and its module.

Every ``--every`` steps it records the proposal's one-sample ELBO averaged over the first 1,000
training images (its own random stream, so the runs are not disturbed) and, for LARS, the
smoothed Z. Prints a Markdown table and appends it to ``--output`` (made with a title if missing).

    python bench/lars_proposal_probe.py --proposal convhvae --steps 3000 --every 250 --variants alone lars t1
    python bench/lars_proposal_probe.py --dataset jittered_mnist --proposal vae --variants alone lars t1
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eim_lightning.cli import EIMCLI  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)
from report import append_section  # noqa: E402  (bench/report.py)

warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
DENSITY = "--model.init_args.density.init_args."
TITLE = (
    "# A proposal's training inside LARS\n\nWritten by `bench/lars_proposal_probe.py` (see its docstring): "
    "each section is one run of it, the command under its heading.\n"
)
DATASETS = {
    "static_mnist": "static MNIST",
    "jittered_mnist": "jittered MNIST",
    "jittered_fashion": "jittered Fashion-MNIST",
}
VARIANTS = {
    "alone": ("{alone}", [], "{p} alone"),
    "alone_eager": ("{alone}", ["--model.init_args.compile=false"], "{p} alone, not compiled"),
    "lars": ("lars_{p}_proposal.yaml", [], "LARS"),
    "no_z_gradient": (
        "lars_{p}_proposal.yaml",
        [DENSITY + "reparameterize_z_samples=false"],
        "LARS, no Z gradient into the proposal",
    ),
    "t1": ("lars_{p}_proposal.yaml", [DENSITY + "T=1"], "LARS with T = 1"),
}


class ProposalELBO(Callback):
    """Records ``(step, ELBO of the proposal on fixed images, Z)`` every ``every`` steps."""

    def __init__(self, every: int, images: int = 1000) -> None:
        self.every, self.images, self.rows = every, images, []
        self.x: torch.Tensor | None = None

    def _record(self, trainer, pl_module) -> None:
        density = pl_module.density
        proposal = getattr(density, "proposal", density)
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(1234)
            elbo = float(proposal.log_prob_replicas(self.x.to(pl_module.device), 1).mean())
        z = getattr(density, "z_ema", None)
        self.rows.append((trainer.global_step, elbo, None if z is None else float(z)))

    def on_train_start(self, trainer, pl_module) -> None:
        data = trainer.datamodule.train_dataset
        self.x = torch.stack([data[i] for i in range(self.images)])
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._record(trainer, pl_module)


def run(config: Path, steps: int, every: int, seed: int, extra: list[str]) -> tuple[list, float]:
    args = [
        "--config", str(config),
        f"--seed_everything={seed}",
        f"--trainer.max_steps={steps}",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.callbacks=[]",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        *extra,
    ]  # fmt: skip
    cli = EIMCLI(args=args, run=False)
    probe = ProposalELBO(every)
    cli.trainer.callbacks.append(probe)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return probe.rows, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="static_mnist")
    parser.add_argument("--proposal", choices=["convhvae", "vae"], default="convhvae")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    for option in ("steps", "every"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be a positive number of steps, got {getattr(args, option)}")
    folder = REPO / "configs" / "images" / args.dataset
    alone = "vae_gaussian_decoder.yaml" if args.dataset.startswith("jittered") else "{p}_gaussian_prior.yaml"
    runs = {}
    for variant in args.variants:
        config, extra, name = VARIANTS[variant]
        path = folder / config.replace("{alone}", alone).format(p=args.proposal)
        if not path.exists():
            missing = path.relative_to(REPO)
            parser.error(f"no {args.proposal} proposal config for {args.dataset}: {missing} does not exist")
        runs[name.format(p=args.proposal)] = (path, extra)
    results, seconds = {}, {}
    for name, (config, extra) in runs.items():
        results[name], seconds[name] = run(config, args.steps, args.every, args.seed, extra)
        print(f"{name}: {seconds[name]:.0f} s; ELBO {results[name][-1][1]:.2f} at step {results[name][-1][0]}")
    names = list(runs)
    lars = [n for n in names if results[n][0][2] is not None]
    header = [f"ELBO: {n}" for n in names] + [f"Z: {n}" for n in lars]
    lines = [f"| step | {' | '.join(header)} |", "|---|" + "---|" * len(header)]
    for i, (step, *_) in enumerate(results[names[0]]):
        cells = [f"{results[n][i][1]:.2f}" for n in names] + [f"{results[n][i][2]:.3g}" for n in lars]
        lines.append(f"| {step} | {' | '.join(cells)} |")
    took = sum(seconds.values()) / 60
    text = "\n".join(
        [
            f"## {args.proposal.upper()} proposal: its ELBO alone and inside LARS, {DATASETS[args.dataset]}, "
            f"seed {args.seed}",
            "",
            "The proposal's one-sample ELBO (nats, mean over the first 1,000 training images) and LARS's "
            "moving-average Z, every "
            f"{args.every} steps. Measured {time.strftime('%Y-%m-%d')} on {describe()}; took {took:.0f} minutes. "
            f"Command: `python bench/lars_proposal_probe.py --dataset {args.dataset} --proposal {args.proposal} "
            f"--steps {args.steps} "
            f"--every {args.every} --seed {args.seed} --variants {' '.join(args.variants)}`.",
            "",
            *lines,
            "",
        ]
    )
    print(text)
    if args.output:
        append_section(args.output, TITLE, text)


if __name__ == "__main__":
    main()
