"""Produce docs/RESULTS.md: every 2-D EIM on every target, trained from its config.

For each algo in {snis, trs, his, lars, gaussian} and target in {checkerboard, nine_gaussians,
two_rings} this trains ``configs/toy2d/<algo>_<target>.yaml`` for ``--steps`` steps (the
config's settings otherwise), evaluates the test bound (1000 replicas per point on the
10,000-point test set; LARS with Z from 1e8 proposal samples) and copies the final density
image to ``docs/images/toy2d/``. Each run is a separate process with one torch thread;
``--jobs`` run side by side. Finished runs leave a JSON file in ``--runs-dir`` and are skipped
when the script is run again, so an interrupted sweep resumes; the table is rebuilt from every
JSON found.

    python bench/toy2d_results.py --steps 20000 --jobs 2          # the table in docs/RESULTS.md
    python bench/toy2d_results.py --steps 500 --algos snis --targets checkerboard --output /tmp/r.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import describe  # bench/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]

ALGOS = ["snis", "trs", "his", "lars", "gaussian"]
TARGETS = ["checkerboard", "nine_gaussians", "two_rings"]
LABELS = {"snis": "SNIS", "trs": "TRS", "his": "HIS", "lars": "LARS*", "gaussian": "Gaussian"}

# The authors' code after 20,000 steps at K = 1024, the mean of its last five logged eval_elbo
# (../shared/tfref/README.md, "2-D quality after 20,000 steps at K = 1024"; their run_all.sh)
AUTHORS_20K = {
    "nine_gaussians": {"lars": -2.07, "snis": -1.08, "trs": -0.88, "his": -1.84},
    "checkerboard": {"lars": -2.48, "snis": -2.52, "trs": -2.60, "his": -2.66},
    "two_rings": {"lars": -2.00, "snis": -1.96, "trs": -1.99, "his": -2.13},
}


def run_one(algo: str, target: str, steps: int, runs_dir: Path) -> dict:
    """Train and test one config in this process; return and save its record."""
    import torch

    from eim_lightning.cli import EIMCLI

    torch.set_num_threads(1)
    config = REPO / "configs" / "toy2d" / f"{algo}_{target}.yaml"
    cli = EIMCLI(
        args=[
            "--config",
            str(config),
            f"--trainer.max_steps={steps}",
            f"--trainer.logger.init_args.save_dir={runs_dir}",
            "--trainer.enable_progress_bar=false",
        ],
        run=False,
    )
    began = time.time()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    trained = time.time()
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    tested = time.time()
    record = {
        "algo": algo,
        "target": target,
        "steps": cli.trainer.global_step,
        "metric": f"test/{cli.model.bound_name}",
        "test_value": float(metrics[f"test/{cli.model.bound_name}"]),
        "train_seconds": trained - began,
        "test_seconds": tested - trained,
        "log_dir": str(cli.trainer.log_dir),
        "image": str(Path(cli.trainer.log_dir) / "images" / "final.png"),
    }
    (runs_dir / f"{algo}_{target}.json").write_text(json.dumps(record, indent=1))
    return record


def reference_values(target: str) -> tuple[float, float]:
    import torch

    from datamodules import make_target
    from eim_lightning.densities import Normal

    t = make_target(target)
    return t.expected_log_likelihood, t.expected_log_prob(Normal(2).to(torch.float64).log_prob)


def write_table(runs_dir: Path, output: Path, images_dir: Path, command: str, opts_jobs: int) -> None:
    records = {}
    for path in sorted(runs_dir.glob("*.json")):
        r = json.loads(path.read_text())
        records[(r["algo"], r["target"])] = r
    images_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Results",
        "",
        "## 2-D targets (ALGORITHMS.md section 5)",
        "",
        "Mean test log-likelihood bound in nats on 10,000 test points (1000 replicas per point), after the stated "
        "number of training steps with the paper's settings (batch 128, Adam 3e-4, N(0, I) proposal, MLPs 20-20 "
        "tanh, K = T = 1024, HIS T = 5). Higher is better; the target's E_p[log p] is the ceiling. "
        "\\* LARS's value is an *estimate* (its Z is estimated from 1e8 proposal samples), not a bound.",
        "",
        f"Produced by `{command}` on {describe(threads=1)} per run, {opts_jobs} runs side by side on a machine "
        "shared with other work. The paper trained far longer: these are short runs, not converged values.",
        "",
        "| target | " + " | ".join(LABELS[a] for a in ALGOS) + " | N(0, I) proposal | target E_p[log p] | steps |",
        "|---|" + "---|" * (len(ALGOS) + 3),
    ]
    for target in TARGETS:
        true_ll, proposal_ll = reference_values(target)
        cells, steps = [], set()
        for algo in ALGOS:
            r = records.get((algo, target))
            cells.append(f"{r['test_value']:.3f}" if r else "not run")
            if r:
                steps.add(r["steps"])
        step_text = ", ".join(str(s) for s in sorted(steps)) or "-"
        lines.append(f"| {target} | " + " | ".join(cells) + f" | {proposal_ll:.3f} | {true_ll:.3f} | {step_text} |")
    eims = [a for a in ALGOS if a != "gaussian"]
    lines += [
        "",
        "The authors' TF1 code at the same K and steps (`../shared/tfref/README.md`, their `run_all.sh`): the mean",
        "of its last five logged `eval_elbo` values. For SNIS, TRS and HIS each is a 1000-sample bound on a fresh",
        "batch of 1,000 target points (5,000 points in all; ours: 1000 replicas on 10,000 fixed test points); for",
        "LARS it is the log-density with the training (moving-average) Z, where ours estimates Z from 1e8 samples:",
        "",
        "| target | " + " | ".join(LABELS[a] for a in eims) + " |",
        "|---|" + "---|" * len(eims),
    ]
    for target in TARGETS:
        lines.append(f"| {target} | " + " | ".join(f"{AUTHORS_20K[target][a]:.2f}" for a in eims) + " |")
    lines += ["", "Wall time per run (training + test, seconds):", ""]
    lines += ["| target | " + " | ".join(LABELS[a] for a in ALGOS) + " |", "|---|" + "---|" * len(ALGOS)]
    for target in TARGETS:
        cells = []
        for algo in ALGOS:
            r = records.get((algo, target))
            cells.append(f"{r['train_seconds']:.0f} + {r['test_seconds']:.0f}" if r else "-")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Density images (panels: target density, model density as the paper plots it (pi e^U for SNIS, "
        "pi a for TRS/LARS, e^-E for HIS), target samples, model samples):",
        "",
    ]
    for target in TARGETS:
        for algo in ALGOS:
            r = records.get((algo, target))
            if r and Path(r["image"]).exists():
                dest = images_dir / f"{algo}_{target}.png"
                shutil.copyfile(r["image"], dest)
                lines.append(f"**{LABELS[algo]} on {target}**  ")
                lines.append(f"![{algo} {target}]({dest.relative_to(output.parent)})")
                lines.append("")
    lines += [
        "## More results",
        "",
        "- [RESULTS_TOY2D_REPRO.md](RESULTS_TOY2D_REPRO.md): the 2-D models at the authors' K = 128 after "
        "100,000 steps, evaluated as they evaluate, beside their code's numbers (`bench/reproduce.py`, "
        "`bench/toy2d_reproduction.py`).",
        "- [RESULTS_IMAGES.md](RESULTS_IMAGES.md): VAEs with EIM priors and EIMs with VAE proposals on binarized "
        "MNIST and Fashion-MNIST (the paper's Table 1), produced by `bench/reproduce.py` and `bench/mnist_results.py`.",
        "- [RESULTS_UNIFY.md](RESULTS_UNIFY.md): IWAE = SNIS posterior, FIVO vs the Kalman filter as K grows, "
        "ranking NCE = SNIS, InfoNCE vs the true mutual information, produced by `bench/unify_results.py` and "
        "`bench/unify_fivo.py`.",
        "- [LARS_SATURATION.md](LARS_SATURATION.md): why LARS* lags TRS on nine_gaussians (its acceptance "
        "saturates and the gradient that would lower it vanishes), produced by `bench/lars_saturation.py`.",
        "",
    ]
    output.write_text("\n".join(lines) + "\n")
    print(f"wrote {output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    parser.add_argument("--runs-dir", default="runs/results")
    parser.add_argument("--output", default="docs/RESULTS.md")
    parser.add_argument("--one", nargs=2, metavar=("ALGO", "TARGET"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    runs_dir = Path(opts.runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    if opts.one:
        run_one(*opts.one, opts.steps, runs_dir)
        return

    todo = [(a, t) for t in opts.targets for a in opts.algos if not (runs_dir / f"{a}_{t}.json").exists()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(job):
        algo, target = job
        cmd = [sys.executable, __file__, "--one", algo, target, "--steps", str(opts.steps), "--runs-dir", str(runs_dir)]
        with open(runs_dir / f"{algo}_{target}.log", "w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        print(f"{algo} on {target}: {'done' if code == 0 else f'FAILED ({code}), see the log'}", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
        list(pool.map(launch, todo))
    command = f"python bench/toy2d_results.py --steps {opts.steps} --jobs {opts.jobs}"
    write_table(
        runs_dir,
        Path(opts.output).resolve(),
        Path(opts.output).resolve().parent / "images" / "toy2d",
        command,
        opts.jobs,
    )


if __name__ == "__main__":
    main()
