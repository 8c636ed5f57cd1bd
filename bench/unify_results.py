"""The unification in numbers: IWAE = SNIS posterior, InfoNCE vs the true MI, ranking NCE = SNIS.

Writes ``docs/RESULTS_UNIFY.md`` and its figures under ``docs/images/unify/``:

1. **IWAE vs the SNIS posterior** on a linear-Gaussian latent model (8-d x, 2-d z; exact
   ``log p(x)``) with a Gaussian encoder q0 fitted by the ELBO and then held fixed: for each K,
   the IWAE bound and the SNIS-posterior bound with energy ``log w`` on the same random draws
   (their largest difference), the SNIS posterior with ``U = 0`` (the ELBO) and with a *learned*
   energy (an MLP of (z, x) trained on the SNIS-posterior bound at that K), beside the exact
   ``log p(x)``.
2. **InfoNCE vs the true mutual information** on correlated Gaussian pairs, for K = 2 .. 1024
   in-batch negatives: the Bayes-optimal critic and a trained CPC critic, beside ``log K``.
3. **Ranking NCE = SNIS**: the K-way classification loss and gradient against the SNIS bound's.
4. **Trained bounds**: each module trained from scratch on linear-Gaussian data (the model
   learned too), its test bound beside the exact log-likelihood of the true model.

    python bench/unify_results.py                     # full settings (about 10 minutes on 2 cores)
    python bench/unify_results.py --smoke --output /tmp/r.md --images /tmp/img

From Python (``notebooks/03_unifications.ipynb`` uses these; put ``bench/`` on ``sys.path``)::

    from unify_results import iwae_vs_snis_posterior, plot_iwae_vs_snis_posterior, infonce_vs_mi, plot_infonce_vs_mi
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules import CorrelatedGaussianDataModule, LinearGaussianDataModule
from eim_lightning import CPC, IWAE, EIMPosteriorVAE, RankingNCE
from eim_lightning import densities as D
from eim_lightning.nn import MLP

REPO = Path(__file__).resolve().parents[1]
DT = torch.float64


def _mean_se(reps: torch.Tensor) -> tuple[float, float]:
    """Mean over points and replicas of ``reps [R, N]``, and its standard error over replicas."""
    per_replica = reps.mean(1)
    se = float(per_replica.std()) / math.sqrt(per_replica.numel()) if per_replica.numel() > 1 else math.nan
    return float(per_replica.mean()), se


def linear_gaussian_problem(
    data_dim: int = 8, latent_dim: int = 2, noise_scale: float = 0.5, encoder_steps: int = 300, seed: int = 0
) -> tuple[D.LinearGaussianModel, D.ConditionalNormal]:
    """The true model of ``LinearGaussianDataModule(seed)`` (float64, fixed) and a Gaussian encoder
    q0(z|x) fitted to it by the ELBO for ``encoder_steps`` Adam steps (diagonal, so not exact)."""
    dm = LinearGaussianDataModule(data_dim=data_dim, latent_dim=latent_dim, noise_scale=noise_scale, seed=seed)
    model = D.LinearGaussianModel(
        data_dim, latent_dim, weight=dm.weight.to(DT), bias=dm.bias.to(DT), noise_scale=noise_scale, learnable=False
    )
    torch.manual_seed(seed)
    encoder = D.ConditionalNormal(MLP(data_dim, [32], 2 * latent_dim), latent_dim).to(DT)
    _fit(D.EIMPosteriorVAE(model, encoder), encoder.parameters(), model, encoder_steps, lr=1e-2)
    return model, encoder


def _fit(density: D.Density, params, model: D.LinearGaussianModel, steps: int, lr: float, batch: int = 128) -> None:
    opt = torch.optim.Adam(list(params), lr=lr)
    for _ in range(steps):
        loss = -density.bound_and_diagnostics(model.sample(batch))[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def iwae_vs_snis_posterior(
    ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    num_points: int = 64,
    num_replicas: int = 100,
    encoder_steps: int = 300,
    energy_steps: int = 300,
    seed: int = 0,
) -> dict:
    """IWAE, the SNIS posterior with U = log w (same draws), U = 0 and a learned U, for each K.

    Returns ``{"ks", "log_p", "iwae", "snis_log_w", "snis_zero", "snis_learned"}`` (each bound a
    dict of ``mean``/``se`` lists, mean over ``num_points`` fixed x of the per-point bound, SE over
    ``num_replicas``), ``"max_abs_difference"`` (IWAE vs SNIS with U = log w, per K), settings, seconds."""
    began = time.time()
    model, encoder = linear_gaussian_problem(encoder_steps=encoder_steps, seed=seed)
    for p in encoder.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed + 1)
    x = model.sample(num_points)
    out: dict = {"ks": list(ks), "log_p": float(model.log_prob(x).mean()), "max_abs_difference": []}
    for name in ("iwae", "snis_log_w", "snis_zero", "snis_learned"):
        out[name] = {"mean": [], "se": []}
    for k in ks:
        iwae = D.IWAE(model, encoder, num_particles=k)
        torch.manual_seed(seed + 200 + k)
        energy = MLP(model.latent_dim, [32], 1, context_dim=model.event_shape[0]).to(DT)
        learned = D.EIMPosteriorVAE(model, D.SNIS(encoder, energy, num_proposals=k))
        if k > 1:
            _fit(learned, energy.parameters(), model, energy_steps, lr=3e-3, batch=64)
        variants = {
            "iwae": iwae,
            "snis_log_w": iwae.as_snis_posterior(),
            "snis_zero": D.EIMPosteriorVAE(model, D.SNIS(encoder, _ZeroEnergy(), num_proposals=k)),
            "snis_learned": learned,
        }
        reps = {}
        for name, density in variants.items():
            torch.manual_seed(seed + 100 + k)  # the same particles for every variant
            with torch.no_grad():
                reps[name] = density.log_prob_replicas(x, num_replicas)
            mean, se = _mean_se(reps[name])
            out[name]["mean"].append(mean)
            out[name]["se"].append(se)
        out["max_abs_difference"].append(float((reps["iwae"] - reps["snis_log_w"]).abs().max()))
    out["settings"] = dict(
        num_points=num_points,
        num_replicas=num_replicas,
        encoder_steps=encoder_steps,
        energy_steps=energy_steps,
        seed=seed,
    )
    out["seconds"] = time.time() - began
    return out


class _ZeroEnergy(torch.nn.Module):
    def forward(self, z, context):
        return torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)


LABELS = {
    "iwae": "IWAE",
    "snis_log_w": "SNIS posterior, U = log w",
    "snis_zero": "SNIS posterior, U = 0 (ELBO)",
    "snis_learned": "SNIS posterior, learned U",
}


def iwae_table(result: dict) -> str:
    names = ["snis_zero", "snis_learned", "iwae", "snis_log_w"]
    lines = [
        "| K | " + " | ".join(LABELS[n] for n in names) + " | max abs difference IWAE vs U = log w | exact log p(x) |",
        "|---:|" + "---:|" * (len(names) + 2),
    ]
    for i, k in enumerate(result["ks"]):
        cells = [f"{result[n]['mean'][i]:.4f} ± {result[n]['se'][i]:.4f}" for n in names]
        lines.append(
            f"| {k} | " + " | ".join(cells) + f" | {result['max_abs_difference'][i]:.1e} | {result['log_p']:.4f} |"
        )
    return "\n".join(lines)


def plot_iwae_vs_snis_posterior(result: dict, path: str | Path | None = None):
    """Bounds against K (± 2 SE) with the exact log p(x); returns the figure (saved if ``path``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = {"snis_zero": ("s", "-"), "snis_learned": ("^", "-"), "iwae": ("o", "-"), "snis_log_w": ("x", "--")}
    for name, (marker, line) in styles.items():
        rows = result[name]
        ax.errorbar(
            result["ks"],
            rows["mean"],
            yerr=[2 * s for s in rows["se"]],
            marker=marker,
            linestyle=line,
            capsize=3,
            label=LABELS[name],
        )
    ax.axhline(result["log_p"], color="k", linestyle=":", label="exact log p(x)")
    ax.set(
        xscale="log",
        xlabel="K (particles of the SNIS posterior)",
        ylabel="mean bound (nats)",
        title="IWAE is the SNIS posterior with U = log w",
    )
    ax.set_xticks(result["ks"], [str(k) for k in result["ks"]])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


class OptimalCritic(torch.nn.Module):
    """``f(x, c) = log p(c | x) - log p(c)`` of a correlated-Gaussian datamodule."""

    def __init__(self, dm: CorrelatedGaussianDataModule) -> None:
        super().__init__()
        self.dm = dm

    def forward(self, x, context):
        return self.dm.log_density_ratio(x, context)


def _estimates(
    module: CPC, dm: CorrelatedGaussianDataModule, k: int, num_batches: int, gen: torch.Generator
) -> tuple[float, float]:
    x, c = dm.sample(k * num_batches, gen)
    dtype = module.density.data_mean.dtype
    with torch.no_grad():
        est = torch.stack(
            [
                module.mutual_information_lower_bound(xb.to(dtype), cb.to(dtype))
                for xb, cb in zip(x.split(k), c.split(k))
            ]
        )
    return float(est.mean()), float(est.std()) / math.sqrt(num_batches) if num_batches > 1 else math.nan


def infonce_vs_mi(
    mis: Sequence[float] = (1.0, 2.0, 4.0),
    ks: Sequence[int] = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    pairs_per_k: int = 16384,
    train_steps: int = 600,
    batch_size: int = 256,
    dim: int = 2,
    seed: int = 0,
) -> dict:
    """Mean InfoNCE (± SE over batches) for each true MI and K, with the optimal critic and with a
    CPC critic trained for ``train_steps`` on batches of ``batch_size`` (0 steps: optimal only)."""
    import lightning as L

    began = time.time()
    out: dict = {"ks": list(ks), "mis": list(mis), "optimal": {}, "trained": {}}
    for mi in mis:
        dm = CorrelatedGaussianDataModule(
            dim=dim, mutual_information=mi, batch_size=batch_size, steps_per_epoch=max(train_steps, 1), seed=seed
        )
        optimal = CPC(x_dim=dim, c_dim=dim, critic=OptimalCritic(dm)).to(DT)
        gen = torch.Generator().manual_seed(seed + 1)
        out["optimal"][mi] = [_estimates(optimal, dm, k, max(2, pairs_per_k // k), gen) for k in ks]
        if train_steps:
            L.seed_everything(seed, verbose=False)
            cpc = CPC(x_dim=dim, c_dim=dim, hidden_sizes=[64, 64], embedding_dim=32, lr=3e-3)
            trainer = L.Trainer(
                accelerator="cpu",
                devices=1,
                max_steps=train_steps,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=0,
            )
            trainer.fit(cpc, datamodule=dm)
            gen = torch.Generator().manual_seed(seed + 2)
            out["trained"][mi] = [_estimates(cpc, dm, k, max(2, pairs_per_k // k), gen) for k in ks]
    out["settings"] = dict(dim=dim, pairs_per_k=pairs_per_k, train_steps=train_steps, batch_size=batch_size, seed=seed)
    out["seconds"] = time.time() - began
    return out


def infonce_table(result: dict) -> str:
    cols = [(mi, kind) for mi in result["mis"] for kind in ("optimal", "trained") if result[kind].get(mi)]
    head = "| K | log K | " + " | ".join(f"I = {mi:g}, {kind} critic" for mi, kind in cols) + " |"
    lines = [head, "|---:|---:|" + "---:|" * len(cols)]
    for i, k in enumerate(result["ks"]):
        cells = [f"{result[kind][mi][i][0]:.3f} ± {result[kind][mi][i][1]:.3f}" for mi, kind in cols]
        lines.append(f"| {k} | {math.log(k):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_infonce_vs_mi(result: dict, path: str | Path | None = None):
    """InfoNCE against K for each true MI (dotted) with the log K cap; returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ks = result["ks"]
    ax.plot(ks, [math.log(k) for k in ks], color="gray", linestyle="--", label="log K")
    for i, mi in enumerate(result["mis"]):
        color = f"C{i}"
        ax.axhline(mi, color=color, linestyle=":", linewidth=1)
        for kind, marker in (("optimal", "o"), ("trained", "^")):
            rows = result[kind].get(mi)
            if rows:
                ax.errorbar(
                    ks,
                    [m for m, _ in rows],
                    yerr=[2 * s for _, s in rows],
                    color=color,
                    marker=marker,
                    linestyle="-" if kind == "optimal" else "-.",
                    capsize=2,
                    label=f"I = {mi:g}: {kind} critic",
                )
    ax.set(
        xscale="log",
        xlabel="K (batch size: the positive and K - 1 negatives)",
        ylabel="InfoNCE (nats)",
        title="InfoNCE <= min(I, log K); dotted: the true I",
    )
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def ranking_nce_equivalence(num_classes: int = 64, batch: int = 128, seed: int = 0) -> dict:
    """Largest differences between ranking NCE and SNIS on the same noise: the loss against
    ``-L_SNIS + log pi(x) + log K``, and the energy gradients of the two objectives."""
    torch.manual_seed(seed)
    module = RankingNCE(data_dim=2, num_classes=num_classes).to(DT)
    snis = module.density
    x = torch.randn(batch, 2, dtype=DT)
    params = list(snis.energy.parameters())
    torch.manual_seed(seed + 1)
    loss = module.nce_loss(x, module.noise_samples(batch))
    g_nce = torch.autograd.grad(loss.mean(), params)
    torch.manual_seed(seed + 1)
    bound, _ = snis.bound_and_diagnostics(x)
    g_snis = torch.autograd.grad(-bound.mean(), params)
    constant = snis.proposal.log_prob(x) + math.log(num_classes)
    return {
        "num_classes": num_classes,
        "loss_difference": float((loss - (-bound + constant)).detach().abs().max()),
        "gradient_difference": max(float((a - b).abs().max()) for a, b in zip(g_nce, g_snis)),
        "gradient_scale": max(float(b.abs().max()) for b in g_snis),
        "mean_loss": float(loss.detach().mean()),
        "log_K": math.log(num_classes),
    }


def trained_bounds(steps: int = 3000, test_samples: int = 100, seed: int = 0) -> dict:
    """Train each module from scratch (model and posterior) on linear-Gaussian data; its test bound
    (``test_samples`` replicas per point, 10,000 points) beside the true model's exact log-likelihood."""
    import lightning as L

    began = time.time()
    runs = {
        "VAE (Gaussian posterior)": lambda: EIMPosteriorVAE(posterior_family="gaussian"),
        "IWAE, K = 16": lambda: IWAE(num_particles=16),
        "IWAE, K = 16, DReG": lambda: IWAE(num_particles=16, gradient_estimator="dreg"),
        "SNIS posterior, K = 16": lambda: EIMPosteriorVAE(posterior_family="snis", num_proposals=16),
        "HIS posterior (HVAE), T = 5": lambda: EIMPosteriorVAE(posterior_family="his", T=5),
        "SIVI posterior, K = 16": lambda: EIMPosteriorVAE(posterior_family="sivi", num_proposals=16),
        "IWHVI posterior, K = 16": lambda: EIMPosteriorVAE(posterior_family="iwhvi", num_proposals=16),
    }
    out: dict = {"runs": {}}
    for name, build in runs.items():
        L.seed_everything(seed, verbose=False)
        dm = LinearGaussianDataModule(seed=seed, steps_per_epoch=steps)
        module = build()
        module.lr, module.num_test_samples = 3e-3, test_samples
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        t0 = time.time()
        trainer.fit(module, datamodule=dm)
        (result,) = trainer.test(module, datamodule=dm, verbose=False)
        out["runs"][name] = {"test_bound": result["test/bound"], "seconds": time.time() - t0}
    dm = LinearGaussianDataModule(seed=seed)
    truth = D.LinearGaussianModel(
        dm.weight.shape[0],
        dm.latent_dim,
        weight=dm.weight.to(DT),
        bias=dm.bias.to(DT),
        noise_scale=dm.noise_scale,
        learnable=False,
    )
    x = torch.cat([b[0] for b in dm.test_dataloader()]).to(DT)
    out["true_log_likelihood"] = float(truth.log_prob(x).mean())
    out["settings"] = dict(steps=steps, test_samples=test_samples, seed=seed)
    out["seconds"] = time.time() - began
    return out


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings (seconds), for checking the script")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "RESULTS_UNIFY.md")
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images" / "unify")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe  # bench/machine.py

    if args.smoke:
        iw = iwae_vs_snis_posterior(ks=(1, 4), num_points=8, num_replicas=4, encoder_steps=5, energy_steps=5)
        nce = infonce_vs_mi(mis=(1.0,), ks=(4, 16), pairs_per_k=64, train_steps=5, batch_size=16)
        trained = trained_bounds(steps=5, test_samples=2)
    else:
        iw = iwae_vs_snis_posterior()
        nce = infonce_vs_mi()
        trained = trained_bounds()
    rank = ranking_nce_equivalence()
    import matplotlib

    matplotlib.use("Agg")
    plot_iwae_vs_snis_posterior(iw, args.images / "iwae_vs_snis_posterior.png")
    plot_infonce_vs_mi(nce, args.images / "infonce_vs_mi.png")

    def rel(path: Path) -> Path:
        path, base = path.resolve(), args.output.parent.resolve()
        return path.relative_to(base) if path.is_relative_to(base) else path

    text = RESULTS_TEMPLATE.format(
        machine=describe(),
        command="python bench/unify_results.py" + (" --smoke" if args.smoke else ""),
        iwae_table=iwae_table(iw),
        iwae_png=rel(args.images / "iwae_vs_snis_posterior.png"),
        iwae_settings=iw["settings"],
        iwae_seconds=iw["seconds"],
        log_p=iw["log_p"],
        max_diff=max(iw["max_abs_difference"]),
        nce_table=infonce_table(nce),
        nce_png=rel(args.images / "infonce_vs_mi.png"),
        nce_settings=nce["settings"],
        nce_seconds=nce["seconds"],
        rank=rank,
        trained_table="\n".join(
            ["| module | test bound (nats) | gap to the true log-likelihood | seconds |", "|---|---:|---:|---:|"]
            + [
                f"| {name} | {r['test_bound']:.4f} | {trained['true_log_likelihood'] - r['test_bound']:.4f} "
                f"| {r['seconds']:.0f} |"
                for name, r in trained["runs"].items()
            ]
        ),
        true_ll=trained["true_log_likelihood"],
        trained_settings=trained["settings"],
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return text


RESULTS_TEMPLATE = """# The unification: numbers and figures

Produced by `{command}` ({machine}). Known bounds as EIM bounds (ALGORITHMS.md section 4); each
equivalence is checked by a test under `tests/` against an exact oracle, and shown here at larger
settings. FIVO against the Kalman filter has its own script, `python bench/unify_fivo.py`; all of
them are demonstrated together in `notebooks/03_unifications.ipynb`. The same bounds on the image VAE
(static MNIST: IWAE, the SNIS and HIS posteriors) are in [RESULTS_UNIFY_IMAGES.md](RESULTS_UNIFY_IMAGES.md).

## IWAE is the SNIS posterior with energy log w

Linear-Gaussian latent model (8-d x, 2-d z, the true model of `LinearGaussianDataModule(seed=0)`,
held fixed); a diagonal Gaussian encoder q0(z|x) fitted by the ELBO and held fixed (the exact
posterior has a full covariance, so q0 is not exact and K matters). Per K: the mean over
{iwae_settings[num_points]} fixed data points of the bound, ± its standard error over
{iwae_settings[num_replicas]} replicas; every variant sees the same particles.
"U = log w" evaluates the SNIS-posterior ELBO
E[sum_k s_k (log w_k - log s_k)] - log K on the very draws IWAE used: the largest difference over
all K, points and replicas is {max_diff:.1e} nats (float64 rounding). A learned energy
(MLP of (z, x), {iwae_settings[energy_steps]} Adam steps on the SNIS-posterior bound at each K)
lies between the ELBO (U = 0) and IWAE (U = log w, the optimal energy), and every bound stays
below the exact log p(x) = {log_p:.4f}. ({iwae_seconds:.0f} s)

{iwae_table}

![IWAE vs the SNIS posterior]({iwae_png})

## InfoNCE is the conditional SNIS bound minus log p(x)

Correlated Gaussian pairs (2-d x and c, per-coordinate correlation set by the true MI). For each
K, the mean over batches of the InfoNCE estimate with the batch's other K - 1 points as negatives
(± standard error over batches; {nce_settings[pairs_per_k]} pairs per K): the Bayes-optimal
critic log p(c|x) - log p(c), and a CPC critic (separable, 64-64 tanh, 32-d embeddings) trained
for {nce_settings[train_steps]} Adam steps on batches of {nce_settings[batch_size]}. Every estimate
is at most log K; in expectation it is below min(I, log K), and it approaches I once K >> e^I.
({nce_seconds:.0f} s)

{nce_table}

![InfoNCE vs the true mutual information]({nce_png})

## Ranking NCE is SNIS maximum likelihood

A K = {rank[num_classes]} ranking-NCE module on one batch of 128 2-d points, with the same noise
as the SNIS bound: the largest difference between the classification loss and
-L_SNIS + log pi(x) + log K is {rank[loss_difference]:.1e} nats, between the energy gradients
{rank[gradient_difference]:.1e} (largest gradient entry {rank[gradient_scale]:.2e}); mean loss
{rank[mean_loss]:.3f} at initialisation (log K = {rank[log_K]:.3f}).

## Trained from scratch

Each module with its defaults (linear-Gaussian model, Gaussian encoder, MLPs 32-32 tanh; Adam 3e-3,
batch 128, {trained_settings[steps]} steps) on `LinearGaussianDataModule(seed=0)`; test bound with
{trained_settings[test_samples]} replicas per point on 10,000 test points, beside the exact mean
log-likelihood of the true model, {true_ll:.4f}. With {trained_settings[test_samples]} replicas the
evaluation bounds are all tight, so the gaps mostly reflect how well each model and posterior were
fitted in the given steps, not the tightness of the one-sample training bounds.

{trained_table}
"""


if __name__ == "__main__":
    main()
