"""Why LARS lags TRS on nine_gaussians: a training-dynamics diagnosis written to docs/LARS_SATURATION.md.

LARS and TRS model the same density, ``pi(x) a(x) / Z`` up to truncation, but train on different
objectives. LARS's estimate ``log pi(x) + log a(x) - log Z`` pushes the acceptance down at proposal
samples only through ``-grad Z / Z = -E_pi[a (1 - a) grad f] / Z``, which vanishes where the sigmoid
saturates; TRS's exact bound has ``log(1 - a)`` terms for the rejected proposals, whose gradient
``-a grad f`` does not. This script trains both from the same seed on the same batches
(the paper's 2-D settings through the layer-2 densities, plain Adam loop) and logs, every
``--every`` steps: the training objective, a(x) on the data, the mean of a over proposal samples
(= Z), and the fraction of proposal samples where a is saturated (> 0.99) or off (< 0.01).

    python bench/lars_saturation.py --steps 10000 --every 1000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from datamodules import make_target
from eim_lightning import LARS, TRS
from machine import describe


def trajectory(algo: str, steps: int, every: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    module = LARS(T=1024, num_z_samples=1024) if algo == "lars" else TRS(T=1024)
    density, target = module.density, make_target("nine_gaussians")
    optimiser = torch.optim.Adam(density.parameters(), lr=3e-4)
    data_gen, probe_gen = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 2)
    probe = torch.randn(100_000, 2, generator=probe_gen)  # fixed proposal samples (pi = N(0, I))
    rows = []
    for step in range(steps + 1):
        x = target.sample(128, generator=data_gen)
        bound, _ = density.bound_and_diagnostics(x)
        if step % every == 0:
            with torch.no_grad():
                a_probe = torch.sigmoid(density.logit(probe))
                rows.append(
                    {
                        "step": step,
                        "objective": float(bound.mean()),
                        "a_data": float(torch.sigmoid(density.logit(x)).mean()),
                        "z": float(a_probe.mean()),
                        "saturated": float((a_probe > 0.99).float().mean()),
                        "off": float((a_probe < 0.01).float().mean()),
                    }
                )
        if step == steps:
            break
        optimiser.zero_grad()
        (-bound.mean()).backward()
        optimiser.step()
        if algo == "lars":
            density.update_z_ema()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "docs" / "LARS_SATURATION.md"))
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    runs = {algo: trajectory(algo, opts.steps, opts.every, opts.seed) for algo in ("lars", "trs")}
    minutes = (time.time() - start) / 60
    lines = [
        "# LARS vs TRS on nine_gaussians: acceptance saturation",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"Command: `python bench/lars_saturation.py --steps {opts.steps} --every {opts.every} --seed {opts.seed}`; "
        f"{describe()}, {minutes:.1f} min for both runs. "
        "Objective: LARS's log-density estimate (smoothed Z), TRS's exact bound, averaged over the step's batch.",
        "",
        "| step | LARS objective | LARS a(data) | LARS Z | LARS a>0.99 | LARS a<0.01 "
        "| TRS objective | TRS a(data) | TRS Z | TRS a>0.99 | TRS a<0.01 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lars, trs in zip(runs["lars"], runs["trs"]):
        cells = [f"{r[k]:.3f}" for r in (lars, trs) for k in ("objective", "a_data", "z", "saturated", "off")]
        lines.append(f"| {lars['step']} | " + " | ".join(cells) + " |")
    last_l, last_t = runs["lars"][-1], runs["trs"][-1]
    lines += [
        "",
        f"After {opts.steps} steps LARS accepts {100 * last_l['a_data']:.0f} % of the data and Z = {last_l['z']:.2f} "
        f"(density ratio a/Z at the data about {last_l['a_data'] / last_l['z']:.1f}), with "
        f"{100 * last_l['saturated']:.0f} % of proposal samples saturated (a > 0.99); TRS accepts "
        f"{100 * last_t['a_data']:.0f} % of the data with Z = {last_t['z']:.2f} "
        f"(ratio {last_t['a_data'] / last_t['z']:.1f}). "
        "Where a saturates, LARS's gradient that would lower the acceptance between the modes vanishes, so the "
        "model stays close to pi restricted to a broad region: the LARS* row for nine_gaussians in RESULTS.md. "
        "This is a property of LARS's objective with these settings (sigmoid acceptance, Adam 3e-4), "
        "not of the sampler; a smaller learning rate or a logit penalty might avoid it (not tried here).",
    ]
    Path(opts.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
