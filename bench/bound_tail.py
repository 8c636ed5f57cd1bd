"""Where a row's test mean comes from: each image's bound, on test and on training images.

A results row's test figure is the mean over the test images of each image's importance-sampled
bound. Where a few images score far below the rest, that mean can move with training while the
typical image does not: a Gaussian decoder on jittered pixels learns scales near the U(0, 1) noise's
(0.29 on the 0-256 scale) where every training image is blank, and a test image with a stroke there
pays ``(x - mu)^2 / (2 sigma^2)``, tens of thousands of nats for one image. For a checkpoint this scores
``--images`` test images and as many training images (the first ones; a jittered image gets fresh
noise), each by its ``--samples``-sample IWAE bound
``log (1/R) sum_r p(x, z_r) / q(z_r | x)``, and prints per split the mean, the median, quantiles,
the worst image, the mean without the worst 1% and the part of the mean that the worst 1% and the
worst image contribute. A model must be a latent-variable model (a VAE or ConvHVAE); for an EIM whose
proposal is one (LARS, SNIS, HIS with a VAE proposal), ``--proposal`` scores the proposal.

    python bench/bound_tail.py --config configs/images/jittered_mnist/vae_gaussian_decoder.yaml \\
        --ckpt_path R/jittered_mnist/vae_gaussian_decoder/seed0/checkpoints/last.ckpt
    python bench/bound_tail.py --config configs/images/jittered_mnist/lars_vae_proposal.yaml --proposal \\
        --ckpt_path R/jittered_mnist/lars_vae_proposal/seed0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eim_lightning.cli import EIMCLI  # noqa: E402
from eim_lightning.densities import LatentVariableModel  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)
from report import append_section  # noqa: E402  (bench/report.py)

warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
TITLE = (
    "# Where a test mean comes from\n\nWritten by `bench/bound_tail.py` (see its docstring): each "
    "section is one run of it, the command under its heading.\n"
)
COLUMNS = ["images", "mean", "median", "1% quantile", "10% quantile", "worst", "mean without the worst 1%",
           "worst 1%'s part of the mean", "worst image's part"]  # fmt: skip


def summary(values: Tensor) -> list[float]:
    """The :data:`COLUMNS` of per-image bounds ``[N]``: ``N``, mean, median, the 1% and 10% quantiles
    (order statistics ``floor(N q)``), the lowest, the mean of all but the ``ceil(N / 100)`` lowest,
    their sum over ``N`` (what they add to the mean) and the lowest over ``N``."""
    v = values.double().sort().values
    n = len(v)
    tail = math.ceil(n / 100)
    rest = v[tail:].mean() if n > tail else v.new_tensor(float("nan"))
    stats = [v.mean(), v[(n - 1) // 2], v[int(n * 0.01)], v[int(n * 0.1)], v[0], rest, v[:tail].sum() / n, v[0] / n]
    return [float(n), *(float(s) for s in stats)]


@torch.no_grad()
def image_bounds(model: LatentVariableModel, images: Tensor, samples: int, batch: int) -> Tensor:
    """``[N]``: each image's ``samples``-sample IWAE bound, ``batch`` images at a time."""
    out = []
    for x in images.split(batch):
        log_w = model.log_prob_replicas(x, samples)
        out.append(torch.logsumexp(log_w.double(), 0) - math.log(samples))
    return torch.cat(out)


def load(config: Path, ckpt: Path, proposal: bool, parser: argparse.ArgumentParser):
    """The part of the configured model to score, with the checkpoint's weights; the datamodule; the
    checkpoint's step (None where it has none)."""
    root = os.environ.get("EIM_DATA_DIR", str(REPO.parent / "shared" / "data"))
    quiet = ["--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false"]
    cli = EIMCLI(args=["--config", str(config), f"--data.init_args.root={root}", *quiet], run=False)
    module = cli.model
    part = module.density.proposal if proposal and hasattr(module.density, "proposal") else module.density
    if proposal and part is module.density:
        parser.error(f"--proposal: {type(module.density).__name__} in {config} has no proposal")
    if not isinstance(part, LatentVariableModel):
        hint = "; score its proposal with --proposal" if hasattr(part, "proposal") else ""
        parser.error(f"{type(part).__name__} is not a latent-variable model, so it has no IWAE bound to score{hint}")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    module.load_state_dict(saved["state_dict"])
    module.eval()
    return part, cli.datamodule, saved.get("global_step")


def shown_path(path: Path) -> str:
    """A checkpoint path for the docs: an absolute one as ``R/`` and its last five parts (the run
    folder's ``DATASET/ROW/SEED/checkpoints/last.ckpt`` under ``bench/reproduce.py``'s ``--runs`` R)."""
    return "R/" + "/".join(path.parts[-5:]) if path.is_absolute() else str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the row's config (configs/images/...)")
    parser.add_argument("--ckpt_path", type=Path, required=True, help="a checkpoint of that config's model")
    parser.add_argument("--proposal", action="store_true", help="score the EIM's proposal")
    parser.add_argument("--samples", type=int, default=100, help="importance samples per image (R)")
    parser.add_argument("--images", type=int, default=10_000, help="test images, and as many training images")
    parser.add_argument("--batch", type=int, default=100, help="images scored at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="append the section to this Markdown file")
    args = parser.parse_args(argv)
    for option in ("samples", "images", "batch"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be a positive integer, got {getattr(args, option)}")
    for option in ("config", "ckpt_path"):
        if not getattr(args, option).is_file():
            parser.error(f"--{option} {getattr(args, option)} is not a file")
    start = time.perf_counter()
    model, data, step = load(args.config, args.ckpt_path, args.proposal, parser)
    data.setup("fit")
    data.setup("test")
    rows = []
    for split, dataset in (("test", data.test_dataset), ("train", data.train_dataset)):
        torch.manual_seed(args.seed)
        n = min(args.images, len(dataset))
        images = torch.stack([dataset[i] for i in range(n)]).reshape(n, -1)
        rows.append((split, summary(image_bounds(model, images, args.samples, args.batch))))
    took = (time.perf_counter() - start) / 60
    ckpt = shown_path(args.ckpt_path)
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python bench/bound_tail.py", *(ckpt if a == str(args.ckpt_path) else a for a in given)])
    what = "its proposal" if args.proposal else "the model"
    lines = [f"| split | {' | '.join(COLUMNS)} |", "|---|" + "---|" * len(COLUMNS)]
    for split, stats in rows:
        lines.append(f"| {split} | {int(stats[0])} | " + " | ".join(f"{s:.2f}" for s in stats[1:]) + " |")
    text = "\n".join(
        [
            f"## {args.config.parent.name}/{args.config.stem}, {what}"
            + (f" after {step:,} steps" if step is not None else "")
            + f": `{ckpt}`",
            "",
            f"Each image's {args.samples}-sample IWAE bound (nats), the first {args.images} images of each split. "
            f"Measured {time.strftime('%Y-%m-%d')} on {describe()}; took {took:.1f} minutes. Command: `{command}`.",
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
