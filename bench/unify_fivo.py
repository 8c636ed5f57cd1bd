"""FIVO vs the Kalman filter as K grows: the numbers and figure of the FIVO unification.

On the 1-D linear-Gaussian state-space model z_1 ~ N(0, q), z_t = a z_{t-1} + N(0, q),
x_t = z_t + N(0, r), the SMC bound of ``eim_lightning.FIVO`` (E[log Ẑ] <= log p(x)) is computed
for K in {1, 2, 4, ..., 128} particles and each resampling scheme ("never" is IWAE), beside the
exact Kalman log-likelihood. Sequences are fixed (drawn from the model with ``seed``); each K and
scheme is run ``num_replicas`` times on every sequence. Reported per K and scheme: the mean bound
per sequence, its Monte Carlo standard error (over replicas, sequences held fixed), the gap to the
Kalman log-likelihood and the mean number of resampling events per sequence.

    python bench/unify_fivo.py                              # both proposals; PNGs in docs/images/unify/
    python bench/unify_fivo.py --proposal bootstrap --replicas 50 --output-dir /tmp/fivo

From Python (the notebook and docs/RESULTS.md use these)::

    from unify_fivo import fivo_vs_kalman, markdown_table, plot_fivo_vs_kalman   # bench/ on sys.path
    result = fivo_vs_kalman(proposal="bootstrap")           # or module=<a trained FIVO.linear_gaussian>
    print(markdown_table(result)); plot_fivo_vs_kalman(result, "fivo.png")

``fivo_vs_kalman(a=0.9, q=1.0, r=0.5, T=20, num_sequences=16, num_replicas=200,
ks=(1, 2, 4, 8, 16, 32, 64, 128), schemes=("multinomial", "systematic", "never"),
proposal="bootstrap", module=None, ess_threshold=0.5, seed=0) -> dict`` with keys

* ``"settings"``: the arguments (and the machine);
* ``"kalman"``: mean over the sequences of the exact log p(x_{1:T}) (float);
* ``"ks"``: the list of K;
* ``"schemes"``: ``{scheme: {"mean": [...], "se": [...], "gap": [...], "resampling_events": [...]}}``,
  one entry per K: mean bound per sequence, its standard error, ``kalman - mean``, mean
  resampling events per sequence;
* ``"seconds"``: wall time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from eim_lightning import FIVO
from eim_lightning.densities import LinearGaussianSSM
from eim_lightning.kalman import sample_lgssm

REPO = Path(__file__).resolve().parents[1]

KS = (1, 2, 4, 8, 16, 32, 64, 128)
SCHEMES = ("multinomial", "systematic", "never")
LABELS = {
    "multinomial": "FIVO, multinomial",
    "systematic": "FIVO, systematic",
    "stratified": "FIVO, stratified",
    "never": "never resample (IWAE)",
}


def fivo_vs_kalman(
    a: float = 0.9,
    q: float = 1.0,
    r: float = 0.5,
    T: int = 20,
    num_sequences: int = 16,
    num_replicas: int = 200,
    ks: Sequence[int] = KS,
    schemes: Sequence[str] = SCHEMES,
    proposal: str = "bootstrap",
    module: FIVO | None = None,
    ess_threshold: float = 0.5,
    seed: int = 0,
) -> dict:
    """The SMC bound for each K and scheme beside the Kalman log-likelihood (see the module docstring).

    ``proposal`` is ``"bootstrap"`` or ``"optimal"`` (the locally optimal proposal); pass a
    ``module`` (e.g. a trained ``FIVO.linear_gaussian(a, q, r)``) to measure its proposal instead.
    Computed in float64 on one thread; the randomness is fixed by ``seed``.
    """
    began = time.time()
    if module is None:
        module = FIVO(LinearGaussianSSM(a, q, r, proposal_init=proposal))
        label = proposal
    else:
        label = "given module"
    gen = torch.Generator().manual_seed(seed)
    _, x = sample_lgssm(num_sequences, T, a, q, r, generator=gen)  # float64 [N, T]
    kalman = float(module.model.log_likelihood(x).mean())
    x_rep = x.repeat(num_replicas, 1)  # replica-major: [R * N, T]
    out: dict[str, dict[str, list[float]]] = {}
    with torch.no_grad():
        for scheme in schemes:
            rows: dict[str, list[float]] = {"mean": [], "se": [], "gap": [], "resampling_events": []}
            for k in ks:
                res = module.model.filter(x_rep, k, scheme, ess_threshold, generator=gen)
                per_replica = res.log_marginal.view(num_replicas, num_sequences).mean(1)
                mean = float(per_replica.mean())
                rows["mean"].append(mean)
                rows["se"].append(float(per_replica.std()) / math.sqrt(num_replicas) if num_replicas > 1 else math.nan)
                rows["gap"].append(kalman - mean)
                rows["resampling_events"].append(float(res.num_resamples.double().mean()))
            out[scheme] = rows
    settings = dict(
        a=a,
        q=q,
        r=r,
        T=T,
        num_sequences=num_sequences,
        num_replicas=num_replicas,
        ess_threshold=ess_threshold,
        seed=seed,
        proposal=label,
    )
    return {"settings": settings, "kalman": kalman, "ks": list(ks), "schemes": out, "seconds": time.time() - began}


def markdown_table(result: dict) -> str:
    """One row per K: mean bound ± standard error for each scheme, and the Kalman log-likelihood."""
    schemes = list(result["schemes"])
    head = "| K | " + " | ".join(LABELS.get(s, s) for s in schemes) + " | Kalman log p(x) |"
    lines = [head, "|" + "---:|" * (len(schemes) + 2)]
    for i, k in enumerate(result["ks"]):
        cells = [f"{result['schemes'][s]['mean'][i]:.3f} ± {result['schemes'][s]['se'][i]:.3f}" for s in schemes]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {result['kalman']:.3f} |")
    s = result["settings"]
    lines.append("")
    lines.append(
        f"Mean over {s['num_sequences']} fixed sequences (T = {s['T']}, a = {s['a']}, q = {s['q']}, r = {s['r']}) "
        f"of the per-sequence bound, ± its Monte Carlo standard error over {s['num_replicas']} replicas; "
        f"{s['proposal']} proposal, resampling when ESS < {s['ess_threshold']} K"
        + (
            f" (ESS >= 1, so for K <= {1 / s['ess_threshold']:g} the rule never fires and FIVO equals IWAE)."
            if s["ess_threshold"] > 0
            else "."
        )
    )
    return "\n".join(lines)


def plot_fivo_vs_kalman(result: dict, path: str | Path) -> Path:
    """Two panels: the bound (± 2 SE) against K with the Kalman line, and the gap on log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ks = result["ks"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for scheme, rows in result["schemes"].items():
        err = [2 * s for s in rows["se"]]
        left.errorbar(ks, rows["mean"], yerr=err, marker="o", capsize=3, label=LABELS.get(scheme, scheme))
        right.errorbar(ks, rows["gap"], yerr=err, marker="o", capsize=3, label=LABELS.get(scheme, scheme))
    left.axhline(result["kalman"], color="k", linestyle="--", label="Kalman log p(x)")
    left.set(
        xscale="log",
        xlabel="particles K",
        ylabel="mean bound per sequence (nats)",
        title=f"SMC bound vs Kalman ({result['settings']['proposal']} proposal)",
    )
    right.set(xscale="log", yscale="log", xlabel="particles K", ylabel="Kalman log p(x) − bound (nats)", title="gap")
    for ax in (left, right):
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proposal", choices=["bootstrap", "optimal", "both"], default="both")
    parser.add_argument("--T", type=int, default=20)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=200)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=REPO / "docs" / "images" / "unify")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe  # bench/machine.py

    proposals = ["bootstrap", "optimal"] if args.proposal == "both" else [args.proposal]
    results = []
    for proposal in proposals:
        result = fivo_vs_kalman(
            T=args.T,
            num_sequences=args.sequences,
            num_replicas=args.replicas,
            ks=args.ks,
            schemes=args.schemes,
            proposal=proposal,
            seed=args.seed,
        )
        image = plot_fivo_vs_kalman(result, args.output_dir / f"fivo_vs_kalman_{proposal}.png")
        print(f"### FIVO vs Kalman, {proposal} proposal\n")
        print(markdown_table(result))
        print(f"\nFigure: {image}. {result['seconds']:.1f} s on {describe()}.\n")
        results.append(result)
    return results


if __name__ == "__main__":
    main()
