"""Training speed and peak memory of the VAE with each prior, and evaluation memory at 100, 1000
and 3000 importance samples (the 1000-sample test bound must not need 10x the memory).

Paper sizes (ALGORITHMS.md 3): 784-300-300-50 VAE, prior energy/acceptance MLP 100-100, SNIS
K = 1024, TRS T = 1024, LARS T = 100 with 1024 samples for Z, HIS T = 5 with a 300-300 r-network;
batch 128 of static MNIST; Adam 3e-4. Each case runs in a fresh process (one torch thread), so
its peak resident memory is its own: the kernel's peak mark (``VmHWM``) is reset after the model
and data are built (``/proc/self/clear_refs``), so "peak above base" is what the steps or the
evaluation themselves add on top of the resident model and data (Linux only). A training step is
the module's step without Lightning (``bound_and_diagnostics``, backward, Adam, LARS's Z update),
eager: the step engine's automatic choices in ``Trainer.fit`` (the HIS prior's bound compiled) are
not made here; ``bench/images_vs_tf.py`` times ``Trainer.fit`` of the shipped configs.

    python bench/vae_steps.py --output docs/BENCHMARKS_IMAGES.md
    python bench/vae_steps.py --steps 10 --eval-points 32      # quick look
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
PRIORS = ("gaussian", "snis", "trs", "his", "lars")
EVAL_SAMPLES = (100, 1000, 3000)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return it (Linux)."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def rss_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak` (VmHWM)."""
    return _status_mb("VmHWM")


def make_prior(name: str):
    from eim_lightning import densities as D
    from eim_lightning.nn import MLP

    net = MLP(50, [100, 100], 1)
    if name == "gaussian":
        return None
    if name == "snis":
        return D.SNIS(D.Normal(50), net, num_proposals=1024)
    if name == "trs":
        return D.TRS(D.Normal(50), net, T=1024)
    if name == "his":
        return D.HIS(D.Normal(50), net, MLP(50, [300, 300], 100), T=5, alpha_init=0.9995)
    if name == "lars":
        return D.LARS(D.Normal(50), net, T=100, num_z_samples=1024, num_z_eval_samples=10**6)
    raise ValueError(name)


def case(kind: str, prior: str, steps: int, warmup: int, samples: int, points: int, data_root: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from datamodules import BinarizedMNISTDataModule
    from eim_lightning import densities as D

    dm = BinarizedMNISTDataModule("static", root=data_root)
    torch.manual_seed(0)  # the same initial weights in every process, so the bounds compare along a row
    vae = D.VAE(prior=make_prior(prior), data_mean=dm.data_mean)
    vae.validate_args = False
    if kind == "train":
        x_all = dm.train_dataset.images[: 128 * (steps + warmup)].float()
        opt = torch.optim.Adam(vae.parameters(), lr=3e-4)
        base = reset_peak()
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            bound, _ = vae.bound_and_diagnostics(x_all[128 * i : 128 * (i + 1)])
            loss = -bound.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if isinstance(vae.prior, D.LARS):
                vae.prior.update_z_ema()
        seconds = (time.perf_counter() - start) / steps
        return {
            "kind": kind,
            "prior": prior,
            "ms_per_step": seconds * 1e3,
            "steps_per_s": 1 / seconds,
            "peak_mb": rss_mb(),
            "peak_above_base_mb": rss_mb() - base,
        }
    x = dm.test_dataset.images[:points].float()
    vae.eval()
    if isinstance(vae.prior, D.LARS):
        vae.prior.estimate_z()
    base = reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        value = vae.log_prob_lower_bound(x, samples).mean().item()
    seconds = time.perf_counter() - start
    return {
        "kind": kind,
        "prior": prior,
        "samples": samples,
        "points": points,
        "seconds": seconds,
        "bound": value,
        "peak_mb": rss_mb(),
        "peak_above_base_mb": rss_mb() - base,
    }


def interleaved_step_times(steps: int, rounds: int, data_root: str) -> dict[str, float]:
    """Median ms/step of each prior over ``rounds`` rounds of ``steps`` steps, the priors taking
    turns within each round in one process, so that load from other jobs hits them alike."""
    import statistics

    import torch

    torch.set_num_threads(1)
    from datamodules import BinarizedMNISTDataModule
    from eim_lightning import densities as D

    dm = BinarizedMNISTDataModule("static", root=data_root)
    x = dm.train_dataset.images[:128].float()
    models = {p: D.VAE(prior=make_prior(p), data_mean=dm.data_mean) for p in PRIORS}
    optims = {p: torch.optim.Adam(m.parameters(), lr=3e-4) for p, m in models.items()}
    times: dict[str, list[float]] = {p: [] for p in PRIORS}
    for r in range(rounds + 1):  # round 0 warms up
        for p, vae in models.items():
            vae.validate_args = False
            start = time.perf_counter()
            for _ in range(steps):
                bound, _ = vae.bound_and_diagnostics(x)
                optims[p].zero_grad(set_to_none=True)
                (-bound.mean()).backward()
                optims[p].step()
                if isinstance(vae.prior, D.LARS):
                    vae.prior.update_z_ema()
            if r:
                times[p].append((time.perf_counter() - start) / steps * 1e3)
    return {p: statistics.median(t) for p, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-points", type=int, default=128)
    parser.add_argument("--data-root", default=os.environ.get("EIM_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--output", default=None)
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.case:
        kind, prior, samples = opts.case
        print(json.dumps(case(kind, prior, opts.steps, opts.warmup, int(samples), opts.eval_points, opts.data_root)))
        return
    began = time.time()
    interleaved = interleaved_step_times(opts.steps, opts.rounds, opts.data_root)
    results = []
    plan = [("train", p, 1) for p in PRIORS] + [("eval", p, s) for p in PRIORS for s in EVAL_SAMPLES]
    for kind, prior, samples in plan:
        cmd = [
            sys.executable,
            __file__,
            "--case",
            kind,
            prior,
            str(samples),
            "--steps",
            str(opts.steps),
            "--warmup",
            str(opts.warmup),
            "--eval-points",
            str(opts.eval_points),
            "--data-root",
            opts.data_root,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    sys.path.insert(0, str(REPO / "bench"))
    from machine import describe

    load = os.getloadavg()
    train = [r for r in results if r["kind"] == "train"]
    evals = {(r["prior"], r["samples"]): r for r in results if r["kind"] == "eval"}
    lines = [
        "# Image benchmarks (VAE with each prior, static MNIST)",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {describe()}, one torch thread per case, each case "
        f"in a fresh process; load average {load[0]:.1f} / {load[2]:.1f} (1 / 15 min) at the end (this script's "
        f"one-thread cases account for about 1 of it; above that, other jobs shared the {os.cpu_count()} cores "
        "and absolute times are pessimistic). Took "
        f"{(time.time() - began) / 60:.1f} minutes. Command: `python bench/vae_steps.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`.",
        "",
        "## Training step (batch 128, paper sizes)",
        "",
        f"ms/step: median over {opts.rounds} rounds of {opts.steps} steps, the five models taking turns within each "
        "round in one process (so that load from other jobs hits them alike); memory: a separate process per "
        f"prior running {opts.steps} steps after {opts.warmup}. Plain eager steps without Lightning: the HIS prior's "
        "bound is not compiled here as `Trainer.fit` compiles it (the section \"Training speed beside the authors' "
        'TF1 code" below times the shipped configs in `Trainer.fit`).',
        "",
        "| prior | ms/step | steps/s | ms/step relative to N(0, I) | peak RSS (MB) | peak above model+data (MB) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['prior']} | {interleaved[r['prior']]:.1f} | {1e3 / interleaved[r['prior']]:.1f} | "
            f"{interleaved[r['prior']] / interleaved['gaussian']:.2f} | {r['peak_mb']:.0f} | "
            f"{r['peak_above_base_mb']:.0f} |"
            for r in train
        ],
        "",
        f"## Evaluation: IWAE bound of {opts.eval_points} test images, 100, 1000 and 3000 importance samples",
        "",
        "One process per cell. Streamed in chunks of `eval_chunk_size` = 64 replicas: the memory columns should "
        "not grow in proportion to the number of samples, 30x from the first to the last (LARS: its Z, from 1e6 "
        "samples here, is estimated before the peak mark is reset). "
        "Times of single runs under a fluctuating load: compare within a row.",
        "",
        "| prior | "
        + " | ".join(f"time {s} (s)" for s in EVAL_SAMPLES)
        + " | "
        + " | ".join(f"peak above base {s} (MB)" for s in EVAL_SAMPLES)
        + " | "
        + " | ".join(f"bound {s}" for s in EVAL_SAMPLES)
        + " |",
        "|---" * (1 + 3 * len(EVAL_SAMPLES)) + "|",
        *[
            f"| {p} | "
            + " | ".join(f"{evals[(p, s)]['seconds']:.1f}" for s in EVAL_SAMPLES)
            + " | "
            + " | ".join(f"{evals[(p, s)]['peak_above_base_mb']:.0f}" for s in EVAL_SAMPLES)
            + " | "
            + " | ".join(f"{evals[(p, s)]['bound']:.1f}" for s in EVAL_SAMPLES)
            + " |"
            for p in PRIORS
        ],
        "",
        "The bounds are of an untrained model (the same initial weights, from seed 0, in every cell of a row), so they "
        "only show that more samples tighten it, up to the Monte Carlo noise of one estimate.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if opts.output:
        write_page(Path(opts.output), text)


def write_page(path: Path, text: str) -> None:
    """Write this script's tables at the top of ``path``, keeping the sections that
    ``bench/images_vs_tf.py``, ``bench/vae_step_profile.py`` and ``bench/vae_compile.py`` wrote there."""
    from images_vs_tf import HEADING, section
    from vae_compile import HEADING as COMPILE
    from vae_step_profile import HEADING as PROFILE

    old = path.read_text() if path.exists() else ""
    headings = (HEADING, PROFILE, COMPILE)
    kept = [part.rstrip("\n") + "\n" for part in (section(old, h) for h in headings) if part.strip()]
    path.write_text(text + "".join("\n" + part for part in kept))


if __name__ == "__main__":
    main()
