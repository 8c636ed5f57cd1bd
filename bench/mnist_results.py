"""docs/RESULTS_IMAGES.md: Table 1 of the EIM paper, as far as this machine allows, from the records
in ``docs/results_images.jsonl`` beside the papers' numbers.

The records are written by ``bench/reproduce.py`` (``make reproduce ROWS=...``), which trains each
row of ``configs/images/`` resumably and evaluates it; the records from before it (no ``seed`` or
``command`` field) were written by this script's former ``--rows`` mode, the same protocol without
resume (git history).

    python bench/mnist_results.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
    ("dynamic_mnist", "convhvae_gaussian_prior"): 81.21,
    ("dynamic_mnist", "convhvae_lars_prior"): 80.30,
    ("fashion_mnist", "convhvae_lars_prior"): 225.92,
    ("dynamic_mnist", "lars_vae_proposal"): 83.63,
}


# the authors' TF1 code after 50,000 steps on static MNIST (K = T = 1024, LARS T = 100), test bound
# with 1000 importance samples on all 10,000 test images, LARS with Z from 1e8 samples; measured on
# these machines with ../shared/tfref/mnist/run_all.sh (the issue and ../shared/tfref/README.md)
TF_50K = {"vae_gaussian_prior": -91.07, "vae_snis_prior": -88.44, "vae_trs_prior": -88.63, "vae_lars_prior": -89.53}
TF_NAMES = {"vae_gaussian_prior": "vae_gauss", "vae_snis_prior": "vae_nis", "vae_trs_prior": "vae_trs"}
TF_NAMES["vae_lars_prior"] = "vae_lars"
TF_CURVES = REPO / "docs" / "results_tf_mnist.json"
FIGURE = REPO / "docs" / "images" / "elbo_static_mnist_50k.png"
EIMREF = Path(os.environ.get("EIMREF", Path.home() / ".cache" / "eimref"))


def tf_curves() -> dict[str, list[list[float]]]:
    """The authors' training ELBO every 5,000 steps per row: read from their run folders
    (``$EIMREF/results/mnist/<name>/parsed.json``, written by ``run_all.sh``) into
    ``docs/results_tf_mnist.json``, which keeps them for later runs of this script."""
    kept = json.loads(TF_CURVES.read_text()) if TF_CURVES.exists() else {}
    for row, name in TF_NAMES.items():
        parsed = EIMREF / "results" / "mnist" / name / "parsed.json"
        if parsed.exists():
            logged = json.loads(parsed.read_text()).get("train_elbo_logged", {})
            curve = sorted([int(step), value] for step, value in logged.items())
            if curve and curve[-1][0] >= 45_000:
                kept[row] = curve
    if kept:
        TF_CURVES.write_text(json.dumps(kept, indent=1) + "\n")
    return kept


def equal_steps_section(rows: list[dict]) -> list[str]:
    """Section 1 of the reproduction issue: our 50,000-step rows beside the authors' code."""
    ours = {r["row"]: r for r in rows if r["dataset"] == "static_mnist" and r["steps"] == 50_000 and "seed" in r}
    ours = {k: v for k, v in ours.items() if k in TF_50K and v["test_points"] == 10_000}
    if not ours:
        return []
    lines = [
        "## Static MNIST at equal steps beside the authors' code",
        "",
        "VAE 784-300-300-50, batch 128, Adam 3e-4, K = T = 1024 (LARS T = 100), 50,000 steps, seed 0; test bound",
        "with 1000 importance samples on all 10,000 test images (LARS: an estimate, Z from 1e8 samples). TF:",
        "the authors' code run the same way on these machines (`../shared/tfref/mnist/run_all.sh`). The issue's",
        "bar: within 0.3 nat of TF or better.",
        "",
        "| prior | ours (nats) | TF (nats) | ours - TF | within 0.3 nat or better | train (min) | test (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in TF_50K:
        if row not in ours:
            continue
        r, tf = ours[row], TF_50K[row]
        diff = r["test_value"] - tf
        lines.append(
            f"| {row.removeprefix('vae_').removesuffix('_prior')} | {r['test_value']:.2f} | {tf:.2f} | {diff:+.2f} "
            f"| {'yes' if diff >= -0.3 else 'no'} | {60 * r['train_hours']:.1f} | {r['test_minutes']:.1f} |"
        )
    curves = tf_curves()
    figure(ours, curves)
    lines += [
        "",
        f"![training ELBO](images/{FIGURE.name})",
        "",
        "Training ELBO as both codes log it: the one-sample bound of the training minibatch every 5,000 steps",
        "(ours: `bench/reproduce.py` records it in each row; theirs: `docs/results_tf_mnist.json`, from their",
        "logs). "
        + (
            "TF curves drawn: " + ", ".join(sorted(curves)) + "."
            if curves
            else "The TF curves are not drawn yet: run `bash ../shared/tfref/mnist/run_all.sh 50000` first."
        ),
        "",
    ]
    return lines


MODEL_NAMES = {"vae": "VAE", "convhvae": "ConvHVAE"}


def dynamic_section(rows: list[dict]) -> list[str]:
    """Section 2 of the reproduction issue: dynamic MNIST rows of >= 50,000 steps beside the LARS
    paper's numbers after full training."""
    ours = [r for r in rows if r["dataset"] == "dynamic_mnist" and r["steps"] >= 50_000 and r["test_points"] == 10_000]
    if not ours:
        return []
    ours.sort(key=lambda r: (r["row"].split("_")[0], -r["test_value"]))
    gaussian = {r["row"].split("_")[0]: r for r in ours if r["row"].endswith("gaussian_prior")}
    lines = [
        "## Dynamic MNIST (binarised afresh at every read)",
        "",
        "Grayscale MNIST from `../shared/data/mnist/`, 50,000 training / 10,000 validation images of the 60,000,",
        "re-binarised each time an image is read (the test set binarised once, with a fixed seed). Each row: its",
        "config, `python bench/reproduce.py dynamic_mnist/ROW --steps 50000 --seed SEED`; test bound with 1000",
        "importance samples on all 10,000 test images (LARS: an estimate with Z from 1e8 samples). The LARS paper's",
        "numbers are after full training (their learning-rate step alone is at 1e6 steps), ours after 50,000 (128",
        "epochs), so",
        "the absolute gap is mostly training length; the prior's gain over N(0, I) at equal steps is the comparable",
        "part.",
        "",
        "| model | prior | steps | seed | test NLL | gain over N(0, I) | LARS paper NLL | paper's gain | train (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ours:
        model, prior = r["row"].split("_")[0], r["row"].split("_")[1]
        base = gaussian.get(model)
        gain = "" if base is None or base is r else f"{r['test_value'] - base['test_value']:.2f}"
        paper = PAPER.get(("dynamic_mnist", r["row"]))
        paper_base = PAPER.get(("dynamic_mnist", f"{model}_gaussian_prior"))
        paper_gain = f"{paper_base - paper:.2f}" if paper is not None and paper_base and paper != paper_base else ""
        lines.append(
            f"| {MODEL_NAMES[model]} | {'N(0, I)' if prior == 'gaussian' else prior.upper()} | {r['steps']:,} | "
            f"{r['seed']} | {-r['test_value']:.2f} | {gain} | {'' if paper is None else f'{paper:.2f}'} | "
            f"{paper_gain} | {60 * r['train_hours']:.1f} |"
        )
    return [*lines, ""]


PROPOSALS = REPO / "docs" / "results_pixel_proposals.jsonl"


def pixel_proposal_section(rows: list[dict]) -> list[str]:
    """Pixel-space EIMs split into their trained proposal's own bound and the energy's gain
    (``bench/pixel_proposals.py``), beside the VAE trained alone for the same steps."""
    if not PROPOSALS.exists():
        return []
    found = [json.loads(line) for line in PROPOSALS.read_text().splitlines() if line.strip()]
    lines = []
    for p in found:

        def match(row: str, extra: str, p=p) -> dict | None:
            # records without a seed used the configs' seed 0 (see the top of this page)
            hits = [r for r in rows if r["row"] == row and r["dataset"] == p["dataset"] and r["steps"] == p["steps"]]
            hits = [r for r in hits if r.get("seed", 0) == p["seed"] and r["test_points"] == p["test_points"]]
            hits = [r for r in hits if extra is None or overrides(r) == extra]
            return hits[-1] if hits else None

        extra = p["command"].split(" -- ", 1)[1] if " -- " in p["command"] else ""
        eim, alone = match(p["row"], extra), match("vae_gaussian_prior", None)
        if eim is None:
            continue
        gain = eim["test_value"] - p["proposal_test_value"]
        alone_nll = "" if alone is None else format(-alone["test_value"], ".2f")
        lines.append(
            f"| {p['dataset']} | {p['row']}{' (`' + extra + '`)' if extra else ''} | {p['steps']:,} | "
            f"{-eim['test_value']:.2f} | "
            f"{-p['proposal_test_value']:.2f} | {gain:+.2f} | {alone_nll} |"
        )
    if not lines:
        return []
    return [
        "## Pixel-space EIMs: the trained proposal and what the energy adds",
        "",
        "An EIM in pixel space trains its VAE proposal jointly, through the EIM's bound. Its test NLL splits into",
        "the trained proposal's own NLL (the same 1000-sample protocol, `bench/pixel_proposals.py` on the row's",
        "final checkpoint) minus the energy's gain; the last column is the VAE trained alone for the same steps",
        "and seed. A proposal worse than the VAE alone means the joint training cost the proposal more than",
        "the energy gives back.",
        "",
        "| dataset | row | steps | EIM NLL | its proposal's NLL | energy's gain (nats) | VAE alone, same steps |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]


BF16 = "--trainer.precision bf16-mixed"


def fashion_section(rows: list[dict]) -> list[str]:
    """The Fashion-MNIST VAE rows at 50,000 steps, seed 0, all test images: each prior's gain over N(0, I)."""
    found = {
        r["row"]: r
        for r in rows
        if r["dataset"] == "fashion_mnist" and r["steps"] == 50_000 and r.get("seed") == 0 and not overrides(r)
    }
    base = found.get("vae_gaussian_prior")
    if base is None or len(found) < 2:
        return []
    paper_gain = PAPER[("fashion_mnist", "vae_gaussian_prior")] - PAPER[("fashion_mnist", "vae_lars_prior")]
    lines = [
        "## Fashion-MNIST at 50,000 steps",
        "",
        f"Seed 0, all {base['test_points']:,} test images, the VAE's config with each prior (rows above). The LARS",
        f"paper's gain of a LARS prior over N(0, I) after full training: {paper_gain:.2f} nats.",
        "",
        "| prior | test NLL | gain over N(0, I) |",
        "|---|---:|---:|",
    ]
    for row, r in sorted(found.items()):
        lines.append(f"| {row} | {-r['test_value']:.2f} | {r['test_value'] - base['test_value']:.2f} |")
    return [*lines, ""]


def jittered_section(rows: list[dict]) -> list[str]:
    """The jittered (continuous-pixel) rows at 50,000 steps, one column per seed: the Gaussian-decoder
    VAE alone (with and without gradient clipping) beside the EIMs that take it as their proposal,
    so that the EIM paper's ordering can be read against what a seed or clipping moves."""
    lines = []
    for dataset in ("jittered_mnist", "jittered_fashion"):
        found: dict[str, dict[int, float]] = {}
        for r in rows:
            if r["dataset"] == dataset and r["steps"] == 50_000 and "seed" in r:
                name = r["row"] + (f" (`{overrides(r)}`)" if overrides(r) else "")
                found.setdefault(name, {})[r["seed"]] = -r["test_value"]
        if not found:
            continue
        seeds = sorted({seed for by_seed in found.values() for seed in by_seed})
        lines += [
            f"| {dataset} | model | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean |",
            "|---|---|" + "---:|" * (len(seeds) + 1),
        ]
        for name, by_seed in sorted(found.items()):
            cells = [f"{by_seed[seed]:.2f}" if seed in by_seed else "" for seed in seeds]
            mean = f"{sum(by_seed.values()) / len(by_seed):.2f}" if len(by_seed) > 1 else ""
            lines.append(f"|  | {name} | " + " | ".join(cells) + f" | {mean} |")
        lines.append("")
    if not lines:
        return []
    return [
        "## Jittered MNIST and Fashion-MNIST at 50,000 steps, by seed",
        "",
        "Test NLL in nats on the 0-256 pixel scale (all 10,000 test images, 1000 samples; LARS an estimate);",
        "the mean where a row has more than one seed. Every EIM row takes the Gaussian-decoder VAE as its",
        "proposal and trains it jointly; SNIS can add at most log K = 6.9 nats to its proposal, LARS at most",
        "log T = 4.6 (the notes below). `--trainer.gradient_clip_val=50000` clips the total gradient norm.",
        "",
        *lines,
    ]


def overrides(record: dict) -> str:
    """The ``eim`` arguments a row was run with beyond its config ("" for none)."""
    command = record.get("command", "")
    return command.split(" -- ", 1)[1] if " -- " in command else ""


def bf16_section(rows: list[dict]) -> list[str]:
    """The speed issue's bf16 accuracy check: the SNIS-prior VAE, 20,000 steps, the same seed,
    float32 against bf16-mixed, test bounds within 0.2 nat."""
    pairs: dict[int, dict[str, dict]] = {}
    for r in rows:
        if r["dataset"] == "static_mnist" and r["row"] == "vae_snis_prior" and r["steps"] == 20_000 and "seed" in r:
            kind = {"": "fp32", BF16: "bf16"}.get(overrides(r))
            if kind and r["test_points"] == 10_000:
                pairs.setdefault(r["seed"], {})[kind] = r
    lines = []
    for seed, pair in sorted(pairs.items()):
        if len(pair) < 2:
            continue
        fp32, bf16 = pair["fp32"], pair["bf16"]
        diff = bf16["test_value"] - fp32["test_value"]
        lines.append(
            f"| {seed} | {fp32['test_value']:.2f} | {bf16['test_value']:.2f} | {diff:+.2f} | "
            f"{'yes' if abs(diff) <= 0.2 else 'no'} | {60 * fp32['train_hours']:.1f} | {60 * bf16['train_hours']:.1f} |"
        )
    if not lines:
        return []
    return [
        "## bf16-mixed against float32 (the speed issue's accuracy check)",
        "",
        "SNIS-prior VAE (K = 1024), static MNIST, 20,000 steps, the same seed for both; `bf16-mixed` runs the",
        "networks under bf16 autocast with every bound accumulated in float32. Test bound with 1000 importance",
        "samples on all 10,000 test images, each run evaluated at its own precision (`eim test` with the same",
        "arguments). The bar: within 0.2 nat. Commands:",
        "`python bench/reproduce.py static_mnist/vae_snis_prior --steps 20000 --seed S` and the same with",
        f"`-- {BF16}`. Seed 0 was trained before the VAE's training step was compiled by default (commit",
        "06bceb2), eagerly; seed 1 after it, so both of its runs trained compiled (20,000 steps reach",
        "`VAE.compile_min_steps`).",
        "",
        "| seed | float32 (nats) | bf16-mixed (nats) | bf16 - float32 | within 0.2 nat | train fp32 (min) "
        "| train bf16 (min) |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]


def figure(ours: dict[str, dict], curves: dict[str, list[list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, row in enumerate(TF_50K):
        color = f"C{i}"
        label = row.removeprefix("vae_").removesuffix("_prior")
        if row in ours and ours[row].get("train_elbo"):
            steps, values = zip(*ours[row]["train_elbo"])
            ax.plot(steps, values, "-o", color=color, label=f"{label}, ours", markersize=3)
        if row in curves:
            steps, values = zip(*curves[row])
            ax.plot(steps, values, "--s", color=color, label=f"{label}, TF", markersize=3, alpha=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("training ELBO (one sample, one minibatch)")
    ax.set_ylim(-130, -80)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


def report() -> str:
    rows = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()] if JSONL.exists() else []
    rows.sort(key=lambda r: (r["dataset"], r.get("test_every", 1), r["row"], r["steps"], r.get("seed", -1)))
    lines = [
        "# Image results (EIM paper Table 1, as far as 2 shared CPU cores allow)",
        "",
        "Written by `python bench/mnist_results.py` from `docs/results_images.jsonl`. Rows with a seed were",
        "produced by `make reproduce` (`bench/reproduce.py`; each record holds its command, commit, machine and",
        "training ELBO curve); the earlier rows, without one, by this script's former `--rows DATASET/ROW --steps N`",
        "mode with the configs' seed 0. Every row is the row's config under `configs/images/`, unchanged except",
        "`--trainer.max_steps`, one torch thread, while other jobs shared the machine. Test: the 1000-replica IWAE",
        "bound (LARS rows: the log-likelihood *estimate* with Z from 1e8 latent / 1e6 pixel proposal samples)",
        "averaged over the test images; NLL = minus that. Validation during training: the single-sample ELBO.",
        "Train (h) and test (min) are wall time; where a record has it, the training's CPU time follows in",
        "parentheses (the process's own, so it leaves out the time a run was paused while benchmarks ran).",
        "",
        "| dataset | model | steps | seed | epochs | train (h) | test points "
        "| test NLL (nats) | paper NLL | test (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = PAPER.get((r["dataset"], r["row"]))
        epochs = r["steps"] * 128 / 50_000
        train = "(the run above, retested)" if r["train_hours"] != r["train_hours"] else format(r["train_hours"], ".2f")
        train += f" (CPU {r['train_cpu_hours']:.2f})" if "train_cpu_hours" in r else ""
        every = " (every " + str(r.get("test_every")) + "th)" if r.get("test_every", 1) > 1 else ""
        lines.append(
            f"| {r['dataset']} | {r['row']}{' (`' + overrides(r) + '`)' if overrides(r) else ''} | {r['steps']} | "
            f"{r.get('seed', '')} | {epochs:.1f} | "
            f"{train} | "
            f"{r['test_points']}{every} | "
            f"{-r['test_value']:.2f} | {'' if paper is None else f'{paper:.2f}'} | {r['test_minutes']:.1f} |"
        )
    sections = [
        *equal_steps_section(rows),
        *dynamic_section(rows),
        *fashion_section(rows),
        *jittered_section(rows),
        *pixel_proposal_section(rows),
        *bf16_section(rows),
    ]
    lines += ["", *sections, HOW_TO_REPRODUCE, NOTES]
    return "\n".join(lines) + "\n"


HOW_TO_REPRODUCE = """## How to reproduce

```sh
make reproduce ROWS="static_mnist/vae_gaussian_prior static_mnist/vae_snis_prior" STEPS=50000 SEED=0
python bench/mnist_results.py        # this page, from docs/results_images.jsonl (make reproduce runs it too)
```

For each row, `bench/reproduce.py` trains the row's config (`eim fit`, seed SEED for the run and the
data) in a run folder outside the repository, `~/.cache/eim-runs/DATASET/ROW/seedSEED` (`RUNS=DIR`
moves it), writing `checkpoints/last.ckpt` every 5 minutes and at the end: killed at any point, the
same command resumes from there (exactly: a resumed run equals an uninterrupted one). It then
evaluates the final checkpoint (`eim test`: 1000 importance samples on all 10,000 test images, LARS
with Z from the config's 1e8 samples) and appends one record to `docs/results_images.jsonl` (steps,
seed, test points and samples, value, training and test wall time, the training ELBO of the minibatch
every 5,000 steps as the authors' code logs it, the validation curve (records from 2026-12-04 on),
machine, commit, command). A row whose command is
already recorded is skipped; more STEPS continue a finished run. 2-D rows (`ROWS=toy2d/snis_nine_gaussians`,
K = 128) go to `docs/results_toy2d.jsonl` with the mean of single-replica bounds over 2 million fresh
points beside the 1000-replica bound. `python bench/reproduce.py --help` has the options.
"""

NOTES = """## What this is, and what falls short

* **Training length.** The papers trained for millions of steps (the learning-rate step alone is at
  1e6); the rows here ran 10,000 to 50,000 steps (26 to 128 epochs; the first ones 10,000 each, and
  the static and Fashion-MNIST VAE rows with N(0, I) and SNIS priors also 30,000), on a CPU shared
  with other jobs. The gap to the
  paper's NLL is mostly that: from 10k to 30k steps the static test NLL fell by 5.1 (N(0, I) prior)
  and 5.6 nats (SNIS prior), the Fashion-MNIST one by 4.5 and 4.2, and it had not levelled off:
  the single-sample validation ELBO on static MNIST went -104.26, -100.66, -99.04 (N(0, I)) and
  -102.07, -98.02, -96.18 (SNIS) at 10k, 20k, 30k steps (the 10k values equal those of the 10k-step
  runs: the runs are deterministic given the seed). The numbers show that every row trains and is
  evaluated with the paper's protocol, not where the models converge. What they do show already:
  every EIM prior beats the N(0, I) prior at equal steps (by about 2 nats at 10k steps on static
  MNIST and Fashion-MNIST; at 30k by 2.5 nats on static MNIST and 1.7 on Fashion-MNIST), the
  direction and size of the improvement the LARS paper reports for its prior (2.6 / 1.2 nats).
* **Pixel space and ConvHVAE** (static MNIST): SNIS with a VAE proposal (K = 1024, the proposal
  trained jointly through the SNIS bound, as in the authors' code) did *not* beat the VAE trained
  alone: 98.00 against 97.55 nats at 10k steps (every 5th test image), 91.39 against 90.91 at 50k
  (all test images). The section "Pixel-space EIMs" above says why: the energy gains about 7 nats
  over its own proposal, but the proposal, trained through the SNIS normaliser with the Gumbel
  straight-through sampler (a biased gradient; it pushes proposal samples away from where the energy
  is high), ends about 7 nats worse than a VAE trained on its data term alone. With
  `reparameterize_proposal_samples=false` (the authors' `--reparameterize_proposal=false`) the proposal
  is trained by its data term only: at 10k steps it then matches the VAE alone (97.59 against 97.66)
  and SNIS beats the VAE by 3.3 nats (94.37), the energy's gain on top of a sound proposal; at 50k
  steps (all test images) it reached 88.40 against 90.91 for the VAE alone, 2.5 nats better. LARS with
  a VAE proposal (T = 100, Z from 1e6 samples at test; its
  training Z fell to about 0.004) reached 96.54 at 10k steps, 1.0 nat better than the VAE; the EIM
  paper reports both improving on their proposal after full training. Each pixel-space step costs
  about 80 ms against about 20 ms for the VAE (1024 decoded proposal samples per step). The ConvHVAE
  (two stochastic layers, convolutional) reached 91.06 nats with an N(0, I) prior at 10k steps, and
  with an EIM or LARS prior on its top latent 88.19 (SNIS), 87.50 (TRS) and 87.71 (LARS, an
  estimate): 2.9 to 3.6 nats from the learned prior (about 115-140 ms a step).
* **A collapsed ConvHVAE seed.** The dynamic-MNIST ConvHVAE with an N(0, I) prior, seed 0, sat on the
  posterior-collapse plateau for all of its first 8,600 steps (KL of both latent layers 0.03-0.06
  nats, single-sample training bound about -206 nats, the likelihood of a decoder that ignores z)
  and was stopped there. Seed 1 left the same plateau at step ~1,500 (KL 25 nats and bound -105 by
  step 2,500), and the LARS-prior run (seed 0) never sat on it (KL 25 by step 1,100). The configs
  have no KL warm-up (ALGORITHMS.md section 3: optional, off by default), which is the usual cure;
  the dynamic N(0, I) ConvHVAE row is therefore seed 1, as the issue's "second seed decides" allows.
* **Test set.** Rows marked "every 5th" were evaluated on every 5th test image (2,000 of 10,000, a
  spread-out subset: static MNIST's first test images are much easier than its last, so a prefix
  would be biased); the static VAE row was evaluated on both, so the two can be compared.
* **ConvHVAE on dynamic MNIST at 50,000 steps**: N(0, I) prior (seed 1) 84.40 nats, LARS prior
  (seed 0) 83.35, a gain of 1.05 nats from the learned prior against the LARS paper's 0.91 (81.21
  and 80.30 after full training). Each trained for about 3.5-3.9 hours of wall time here, resumed
  across sessions and including hours paused while benchmarks ran; the LARS row's test took 88
  minutes, most of it the evaluation Z from 1e8 proposal samples (34 minutes). The SNIS prior
  (K = 1024, seed 0) reached 83.47, a gain of 0.94 nats over the N(0, I) row, a little short of the
  LARS prior's 1.05 (one seed each; the LARS paper has no SNIS-prior ConvHVAE). It trained for
  about 3.0 hours here, resumed across three sessions; its 102-minute test includes the time it was
  paused (SIGSTOP) while benchmarks ran.
* **Jittered MNIST at 10,000 steps** (nats on the 0-256 pixel scale, all 10,000 test images): the
  Gaussian-decoder VAE alone 2161.50; SNIS with that VAE as its proposal 2155.41 (6.1 nats better);
  LARS with it (T = 100, an estimate, Z from 1e6 proposal samples: 9.7e-5, so (1 - Z)^99 is about
  0.99 and most samples are the truncation's forced last proposal) 2143.21 (18.3 better);
  HIS with it (T = 5) 2142.28 (19.2 better; its test took 54 minutes, 18 of them paused while
  benchmarks ran). The EIM paper's Table 2 trained far longer; these rows show the ordering only.
  LARS can add at most log T to its proposal's log-density whatever Z and the acceptance
  (`q_T / pi = a sum_{t<T-1} (1-Z)^t + (1-Z)^{T-1} <= a (T - 1) + 1 <= T`; tested in
  `tests/test_lars.py`), and SNIS at most log K (`tests/test_snis.py`). So at most log 100 = 4.6 of
  the LARS row's 18.3 nats can come from its acceptance function (its test figure is its proposal's
  1000-sample bound on the same draws plus the mean of `log(q_T / pi)`): the VAE trained inside LARS
  is itself at least 13.7 nats better (NLL bound at most 2147.8) than the same VAE trained alone for
  the same steps. Measured: the LARS row rerun (same command with `--runs R --docs D` outside the
  repository) gave the same 2143.21, and its proposal alone, `eim test --config
  configs/images/jittered_mnist/lars_vae_proposal.yaml
  --ckpt_path R/jittered_mnist/lars_vae_proposal/seed0/checkpoints/last.ckpt
  --model.init_args.density.init_args.T=1` with the runner's data arguments (`--seed_everything=0
  --data.init_args.seed=0 --data.init_args.root ...`; T = 1 gives log pi exactly), scored 2147.80: the
  acceptance adds 4.59 of its possible log 100 = 4.61 nats (Z is 9.7e-5: it accepts the data and
  rejects nearly every proposal sample), and the VAE trained inside LARS is 13.7 nats better than the VAE
  trained alone. The VAE alone varies between seeds: with seed 1 (same command, `--seed 1`) it reached
  2169.02, 7.5 nats worse than with seed 0. LARS with seed 1 (`--seed 1`) reached 2155.94, and its
  proposal alone (the same T = 1 test with seed 1) 2160.53: 4.59 nats from the acceptance again, and a
  VAE 8.5 nats better than seed 1's VAE alone. So in both seeds the VAE trained inside LARS beat the
  VAE trained alone (by 13.7 and 8.5 nats). What that gap is made of (measured 2026-12-04 on an Intel
  Xeon): rerun there at commit 2247ad4 (`--runs R --docs D` outside the repository), the VAE alone
  reproduced 2161.50 to the digit, but the LARS row gave 2149.60, not 2143.21 (the same command and seed,
  first run on an AMD EPYC at an earlier commit; Z 9.0e-5). Its proposal, scored image by image with
  1000 samples (`python bench/bound_tail.py --config configs/images/jittered_mnist/lars_vae_proposal.yaml
  --proposal --ckpt_path R/jittered_mnist/lars_vae_proposal/seed0/checkpoints/last.ckpt --samples 1000`,
  [BOUND_TAIL.md](BOUND_TAIL.md)), is 7.2 nats better in the mean than the VAE alone (2154.45 against
  2161.61), 11.6 better at the median test image (2125.79 against 2137.36), with the same tail (the
  worst 1% of test images make 38.6 and 38.7 nats of the means): the whole distribution moved, not a
  few images. That LARS causes it is not shown: `python bench/lars_proposal_probe.py --dataset
  jittered_mnist --proposal vae --steps 5000 --every 500 --variants alone lars no_z_gradient t1`
  ([LARS_PROPOSAL_PROBE.md](LARS_PROPOSAL_PROBE.md)) also trains the proposal inside LARS with T = 1,
  whose objective is exactly the VAE's own ELBO and which differs from the VAE alone only in its random
  stream (LARS's 1024 Z samples a step). Its one-sample ELBO on 1,000 training images was 10.6 nats
  ahead of the VAE alone's at step 5,000, more than half of LARS's lead there (18.4), and 283 nats
  behind at step 2,000; without the gradient of Z into the proposal it matched T = 1 at every
  checkpoint, so at most the difference between LARS and T = 1 (7.8 nats at step 5,000, of either
  sign earlier) can be Z's gradient. The gap is of the size that a different random stream, seed (7.5
  nats between the VAE alone's two seeds) or machine (6.4 nats for this LARS row) makes at 10,000
  steps; more seeds would decide it, and they have not been run.
* **Jittered Fashion-MNIST at 10,000 steps**: the Gaussian-decoder VAE alone 2919.67; LARS with it
  as its proposal (T = 100, an estimate, Z from 1e6 proposal samples: 2.2e-4, so (1 - Z)^99 is about
  0.98 and nearly every sample is the truncation's forced last proposal) 2920.36, 0.69 nats *worse*,
  where on jittered MNIST the same setup was 18.3 better. Not investigated yet (one seed, 10,000
  steps). SNIS with it (K = 1024) reached 2907.01, 12.7 nats better than the VAE alone (on jittered
  MNIST 6.1): the same proposal leaves room that SNIS uses and LARS did not. That row trained on an AVX2 machine,
  and its 0.99 h of training and 28-minute test include about 45 minutes paused (SIGSTOP) while
  benchmarks ran. Its record's machine line predates the ISA tag (the runner process had started
  before it). HIS with it (T = 5) reached 2916.97, 2.7 nats better than the VAE alone: between LARS and SNIS
  here, where on jittered MNIST it was the best of the three (19.2 better). It trained for 0.46 h and tested
  for 27 minutes on an AVX-512 machine; about 11 and 6 minutes of those it was paused (SIGSTOP) while
  benchmarks ran (its process started before records kept CPU time).
* **ConvHVAE with an HIS prior** (static MNIST, T = 5, 10,000 steps, seed 0): 88.11 nats on all 10,000
  test images. The other static ConvHVAE rows at 10,000 steps were evaluated on every 5th test image:
  N(0, I) 91.06, SNIS 88.19, TRS 87.50, LARS 87.71. It trained for 0.38 h and tested for 47 minutes on an
  AVX2 machine. The N(0, I) ConvHVAE, rerun by `make reproduce` (seed 0, 10,000 steps) and tested on all
  10,000 images, reached 92.36 (the earlier 91.06 was another run, on every 5th image); so on
  the same test set the HIS prior gains about 4.3 nats over N(0, I) (one seed each). That rerun trained for
  0.18 h (0.18 h of CPU) and tested for 34 minutes on an AVX-512 machine.
* **SNIS with a ConvHVAE proposal** (static MNIST, K = 1024, 10,000 steps, seed 0; the proposal trained
  jointly through the SNIS bound, as in the authors' code): 90.01 nats on all 10,000 test images, 2.35
  better than the ConvHVAE trained alone with an N(0, I) prior (92.36, same test set), and 1.9 short of
  the HIS-prior ConvHVAE (88.11). Each of its 1000 test replicas bounds the proposal on every test image
  and decodes 1023 negatives, so its test took 56 minutes on 2 threads (106 CPU minutes), after 1.14 h of
  CPU training on one thread (1.40 h of wall time, including about 15 minutes paused while benchmarks
  ran; the record's machine line shows the 2 threads of the test process). Unlike SNIS with a plain VAE
  proposal at 10,000 steps (98.00 against the VAE alone's 97.55, above), SNIS with the ConvHVAE proposal
  beats that proposal's model trained alone (one seed each).
* **Static ConvHVAE with an N(0, I) prior at 50,000 steps** (seed 0, all 10,000 test images): 87.75 nats,
  against 92.36 at 10,000 steps and 90.91 for the VAE with the same prior at 50,000 (one seed each). It
  trained for 1.0 h of wall time (1.7 h of CPU: it switched from one thread to two at step 4,275, when
  it was resumed from its checkpoint, so it is not bit-identical to an uninterrupted one-thread run) and
  tested for 22 minutes on 2 threads.
* **Static ConvHVAE with SNIS and TRS priors at 50,000 steps** (K = T = 1024, seed 0, all 10,000 test
  images): SNIS 83.82 and TRS 83.46 nats, 3.9 and 4.3 better than the N(0, I) prior at the same steps
  (87.75; at 10,000 steps the EIM priors gained 2.9-3.6 on every 5th test image). One seed each. Both
  trained side by side, one thread each, for 1.19 h of CPU (1.48 h of wall time, about 14 minutes
  of it paused (SIGSTOP) while speed experiments ran) and tested for 42-44 CPU minutes (48-51 minutes
  of wall time, about 12 of them beside a CI run on the same 2 cores).
* **Static ConvHVAE with a LARS prior at 50,000 steps** (T = 100, 1024 samples for Z per step, seed 0,
  all 10,000 test images, Z from 1e8 samples): 83.53 nats, 4.2 better than the N(0, I) prior at the same
  steps (87.75), between the SNIS (83.82) and TRS (83.46) priors; the LARS paper's 81.70 is after full
  training. One seed. It trained for 1.37 h of CPU on one thread, resumed four times from its checkpoint
  across sessions (its 6.5 h of wall time include those gaps and pauses while benchmarks ran), and tested
  for 56 minutes (47 of CPU; the Z estimate 4.5 of them).
* **Static ConvHVAE with an HIS prior at 50,000 steps** (T = 5, seed 0, all 10,000 test images): 83.91
  nats, 3.8 better than the N(0, I) prior at the same steps (87.75), within 0.5 nat of the SNIS, TRS and
  LARS priors (83.46-83.82; at 10,000 steps it led them, 88.11 on all test images). One seed. It trained
  for 1.66 h of CPU on one thread, resumed three times across sessions (6.9 h of wall time with the gaps
  and benchmark pauses); its compiled steps drew their proposals from inductor's random number generator
  up to step 28,937 and from torch's after (commit 22d286d), the same distribution but not a bit-identical
  continuation. Tested for 50 minutes.
* **LARS with a ConvHVAE proposal** (static MNIST, T = 100, 1024 samples for Z per step, 10,000 steps,
  seed 0, all 10,000 test images, Z from 1e6 pixel-space proposal samples): **201.20 nats**, far behind
  everything else here: the ConvHVAE trained alone reached 92.36 at these steps and SNIS with the same
  proposal 90.01. Its training ELBO (the proposal's, one sample) was -231.8 at step 0 and still -199.4 at
  step 5,000, so the proposal barely trained inside LARS, and the evaluation Z is 7.4e-6: (1 - Z)^99 is
  about 0.9993, so nearly every sample is the truncation's forced last proposal and the model is its
  proposal. LARS with a plain VAE proposal trained (96.54 at 10,000 steps, every 5th test image). It
  trained for 0.65 h of wall time (1.0 h of CPU; one thread to step 1,450, two after, so not
  bit-identical to an uninterrupted run) and tested for 36 minutes on 2 threads, on an Intel Xeon.
  Why (`python bench/lars_proposal_probe.py`, [LARS_PROPOSAL_PROBE.md](LARS_PROPOSAL_PROBE.md)): the
  ConvHVAE starts on a plateau at an ELBO of about -207 nats (its decoder ignoring the latents, the
  pixels at the data mean) and leaves it at a step that depends on the random stream: alone at about
  2,000-2,250 steps with seeds 0 and 1, inside LARS with seed 0 not by 3,000 steps (nor by 10,000 in
  this row), with seed 1 at about 1,250. LARS's own terms are not the cause: without the gradient of Z
  into the proposal (`reparameterize_z_samples: false`, as the authors' code trains its ConvHVAE
  proposal) and with T = 1 (the estimate is log pi) the proposal's ELBO follows LARS's to 0.01 nat.
  Seed 1 (the second seed that decides; `--seed 1`, 10,000 steps, all 10,000 test images, Z from 1e6
  samples 0.018): **88.02 nats**, ahead of the ConvHVAE alone at these steps (92.36) and of SNIS with it
  (90.01); its proposal left the plateau at about step 1,200 (training ELBO -96.4 at step 5,000).
  Trained 0.37 h, tested 35 minutes, 2 threads, Intel Xeon.
* **Jittered MNIST at 50,000 steps** (seed 0, all 10,000 test images): the Gaussian-decoder VAE alone
  2215.67, *worse* than after 10,000 steps (2161.50). Its training log says why (`python
  bench/tb_scalars.py R/jittered_mnist/vae_gaussian_decoder/seed0/logs --tags val/bound
  train/bound_epoch`, R the runner's `--runs` folder): the single-sample validation ELBO was -2221.1,
  -2027.6, -2017.5 and -1991.6 after 10,000, 20,000, 30,000 and 40,000 steps and -2335.9 after 50,000.
  Between steps 46,000 and 46,100 the logged training ELBO fell from about -1,830 to -9,377 and its KL
  rose from about 100 to 200 nats (a training instability of the decoder with learned pixel scales),
  and by step 50,000 it had recovered only to about -2,270; the runner tests the last checkpoint, not
  the best. Scored image by image (`bench/bound_tail.py`, [BOUND_TAIL.md](BOUND_TAIL.md)), the 50,000-step
  model's median test image (2133.15) is about the 10,000-step model's (2137.36), but its tail is
  heavier: its worst test image scores -83,079 nats (8.3 nats of the mean on its own; at 10,000 steps
  -14,548), and its worst 1% of test images make 79.5 nats of the mean against 35.8 for as many
  training images. Before the spike the training bound (epoch mean -1,775 at 40,000 steps) was already
  about 200 nats above the validation ELBO (-1,992): the VAE also overfits the 50,000 training images.
  Trained 0.14 h on one thread, tested 3.8 minutes, Intel Xeon. With gradient clipping the same seed
  ended at 1779.12 (next bullet); a larger minimum decoder scale or testing the best validation
  checkpoint were not tried.
* **Jittered MNIST SNIS at 50,000 steps** (seed 0, VAE proposal, K = 1024, `-- --data.init_args.eval_batch_size=2000`
  as at 10,000 steps): **1777.98 nats**, the best jittered-MNIST row at 50,000 steps, 1.1 ahead of the
  clipped VAE alone below (1779.12) and 6.9 ahead of HIS (1784.91); SNIS can add at most log K = 6.9 nats
  to its proposal. Its training ELBO had no lasting spike (logged every 5,000 steps: -1881, -1770, -1747
  at 35,000 to 45,000). Trained 1.56 h (1.16 h of CPU, one thread, other runs sharing the cores), tested
  8.3 minutes, Intel Xeon.
* **Jittered MNIST VAE alone at 50,000 steps with gradient clipping** (seed 0, `-- --trainer.gradient_clip_val=50000`,
  the total gradient norm clipped at 50,000; the trained VAE's norms were about 11,000 (seed 1) and
  30,000 (seed 0 after its spike) on training batches): **1779.12 nats**, where the same seed without
  clipping ended at 2215.67 after its spike. Its logged training ELBO still dipped (to -2868 at step
  22,099, -3285 at 36,099, -2782 at 48,299) but each time recovered within a few hundred steps
  (`bench/tb_scalars.py`), and its single-sample validation ELBO was -2211, -2027, -1978, -2012 and -1994
  after 10,000 to 50,000 steps. Clipping changes the run from the first steps (training ELBO -3709 at step
  99 against -3707 unclipped), so this is another trajectory, not the same one kept stable.
  It is ahead of LARS (1795.93), HIS (1784.91) and the unclipped VAE with seed 1 (1801.09) at 50,000
  steps; only SNIS (1777.98, recorded later) is ahead of it. So at 50,000 steps the EIM rows' lead over
  the VAE alone is smaller than what training stability and seed move; the EIM paper's ordering is not
  shown at this length. Trained 0.44 h (0.29 h of CPU, one thread, other runs sharing the cores; with clipping,
  training takes Lightning's automatic optimisation), tested 7.5 minutes, Intel Xeon.
  The same with seed 1 (`--seed 1 -- --trainer.gradient_clip_val=50000`): **1809.55 nats**, 8.5 worse than
  seed 1 unclipped (1801.09) and 30.4 worse than seed 0 clipped. No spike (worst logged training ELBO
  after step 5,000: -2592 at 26,299; validation ELBO -2217, -2047, -2021, -2022, -2004 after 10,000 to
  50,000 steps, as unclipped seed 1's -2008 at the end). So the clipped VAE alone spans 1779-1810 over
  two seeds (mean 1794.3), a spread wider than the gaps between the EIM rows (SNIS 1777.98, HIS 1784.91,
  LARS 1795.93, one seed each), which all lie inside or below it: at 50,000 steps SNIS and HIS are ahead
  of the VAE's two-seed mean (by 16.4 and 9.4 nats), LARS about level with it. Trained 0.75 h (0.73 h of
  CPU, one thread, beside another run), tested 14 minutes, AMD EPYC.
* **Jittered MNIST LARS at 50,000 steps** (seed 0, VAE proposal, T = 100, Z from 1e6 proposal samples:
  3.6e-6): **1795.93 nats**, 347 better than its 10,000-step row (2143.21) and 420 better than the VAE
  alone after 50,000 (2215.67). Its proposal's own 1000-sample bound, scored image by image
  (`bench/bound_tail.py --proposal`, [BOUND_TAIL.md](BOUND_TAIL.md)), is 1795.90 on other draws: with Z
  this small the acceptance adds nothing measurable now (4.59 nats after 10,000 steps). Its training had
  no lasting spike (validation estimate -2219, -2022, -2057, -2030 and -1964 after 10,000 to 50,000
  steps; the training estimate dipped at one logged step, 44,000), and before the VAE alone's spike the
  two validation figures were close (after 40,000 steps -1992 alone, -2030 in LARS). So most of the 420
  nats between the two rows is the VAE alone's spike, not LARS. The VAE alone with seed 1 (`--seed 1`,
  50,000 steps; its training dipped at steps 29,000 and 38,000 but recovered, validation ELBO -2008.2 at
  the end) reached **1801.09**: LARS (seed 0) is 5.2 nats better than that, and since its acceptance
  adds nothing measurable here, those 5.2 nats lie between two VAEs, one trained inside LARS, of
  different seeds: within what a seed changes at 10,000 steps (7.5 nats; one seed each here; trained
  0.19 h, tested 4.6 minutes). Its median test image scores 1677.77 (training images 1663.27); its worst
  test image -149,015 nats (14.9 nats of the mean on its own), and its worst 1% of test images make
  136.8 nats of the mean against 24.7 for as many training images. Trained 1.38 h (0.90 h of CPU, one
  thread), tested 3.7 minutes, Intel Xeon.
* **Jittered MNIST HIS at 50,000 steps, trained on a GPU** (seed 0, VAE proposal, T = 5): **1784.91
  nats**, ahead of LARS (1795.93) and of both VAEs alone at 50,000 steps (2215.67, 1801.09). Its first
  46,986 steps ran on an NVIDIA H200 in 300 s (about 156 steps/s with its validations and images; the
  step replayed from a CUDA graph) in a 330-second slot of lent GPU time, the same command
  (`bench/reproduce.py`, `--runs` a folder there); the last checkpoint came back, and the same command
  here resumed it at step 46,986 (the record's `resumed_at_steps`), trained the last 3,014 steps on the
  CPU and tested there (34 minutes, one thread, Intel Xeon). So the record's `machine` line is the test
  machine's, and its 0.15 h of training are 300 s on the GPU and the rest on the CPU. Its `commit`
  (21a49f8) is that of the checkout when the record was written; both parts trained at af87bdb, and
  nothing between the two changes what training or evaluation compute. The GPU part ran torch 2.11.
* **Jittered Fashion-MNIST at 50,000 steps** (seed 0): the Gaussian-decoder VAE alone 2700.48, 219 nats
  better than after 10,000 steps (2919.67). No spike (`bench/tb_scalars.py`: validation ELBO -2970.9,
  -2900.8, -2838.9, -2803.5 and -2775.8 after 10,000 to 50,000 steps; no training ELBO logged (every 100
  steps) below -4,000). Trained 0.28 h (0.18 h of CPU, one thread), tested 4.7 minutes, Intel Xeon.
  LARS with it as its proposal (T = 100, Z from 1e6 proposal samples: 4.7e-6): **2684.52 nats**, 16.0
  better than the VAE alone, of which its acceptance can add at most log 100 = 4.6. Scored image by image
  with 1000 samples (`bench/bound_tail.py`, [BOUND_TAIL.md](BOUND_TAIL.md)), its proposal alone reaches
  2689.34 (median test image 2642.14) and the VAE alone 2700.21 (median 2653.51), with the same tail (the
  worst 1% of test images make 45.2 and 45.6 nats of the means): the acceptance adds about its log T (4.8
  on other draws), and the VAE trained inside LARS is 10.9 nats better than the VAE alone over the whole
  distribution, as on jittered MNIST at 10,000 steps. Its single-sample validation
  estimate was ahead of the VAE alone's from 20,000 steps on (-2972.5, -2875.3, -2814.8, -2777.2 and
  -2751.3 after 10,000 to 50,000 steps, against -2970.9 to -2775.8 above), with no spike. On both data
  sets, then, the VAE trained inside LARS ended ahead of the VAE trained alone (one seed each here;
  jittered MNIST: 5.2 nats ahead of seed 1's VAE at 50,000 steps, 13.7 and 8.5 at 10,000 with two
  seeds); the Fashion 10,000-step row (0.69 worse) is the exception. Trained 1.03 h (0.99 h of CPU, one
  thread; resumed once, at step 37,513), tested 4.9 minutes, Intel Xeon.
  The VAE alone with gradient clipping (seed 0, `-- --trainer.gradient_clip_val=50000`, as on jittered
  MNIST): **2707.27 nats**, 6.8 worse than unclipped (2700.48), which had no spike to avoid; no spike
  either (worst logged training ELBO after step 5,000: -3153 at 5,799; validation ELBO -2975, -2906,
  -2821, -2810, -2790 after 10,000 to 50,000 steps). LARS is 16.0-22.8 nats ahead of seed 0's VAE alone,
  clipped or not (one LARS seed); clipping is no remedy the Fashion VAE needs. Trained 0.93 h (0.82 h of CPU,
  one thread, beside another run), tested 14 minutes, AMD EPYC. With seed 1 (clipped likewise):
  **2689.04 nats**, 18.2 better than seed 0 clipped and only 4.5 behind LARS (2684.52, seed 0); no spike
  (validation ELBO -2996, -3000, -2820, -2784, -2756 after 10,000 to 50,000 steps). So on Fashion too the
  VAE alone moves by about 18 nats between seeds at 50,000 steps, as much as LARS's lead over seed 0's VAE:
  one LARS seed cannot show the paper's ordering. Trained 1.19 h (0.79 h of CPU, one thread, paused for
  30 minutes while a CI run took the cores), tested 16 minutes, AMD EPYC. Seed 1 unclipped: **2694.05**
  (5.0 worse than clipped; trained 0.72 h, tested 15 minutes): the Fashion VAE alone spans 2689-2707 over
  four runs (two seeds, with and without clipping), LARS's 2684.52 just below that range.
* **Not run here**: jittered Fashion-MNIST SNIS and HIS (VAE proposals) beyond 10,000 steps. Each is
  about 5 hours of training on two cores at 50,000 steps (SNIS about 0.24 s a step on the AMD EPYC of
  2026-12-04 evening, the same at commits 2247ad4 and 0df3696 over 300 steps: no slowdown in the code); an
  HIS run at 50,000 steps was started and lost with its machine between sessions (run folders live outside
  the repository, on the machine). Their configs are in `configs/images/` and train in the tests on small
  slices.
* **Paper column**: the LARS paper's numbers as quoted in ALGORITHMS.md section 5 (VAE with N(0, I)
  and with a LARS prior); the EIM paper's own numbers for the TRS/SNIS/HIS priors are not quoted
  there, so those cells are empty (the EIM paper reports them better than or comparable to LARS).
* **Train (h)** is wall-clock time on a machine whose load from other jobs varied from 2 to 9 on 2
  cores during these runs, so it compares poorly across rows; `docs/BENCHMARKS_IMAGES.md` has
  interleaved step timings. The Fashion-MNIST HIS-prior row's 1.33 h includes about 50 minutes
  during which it was paused (SIGSTOP) while benchmarks ran.
* **LARS** rows report a log-likelihood *estimate* (Z from 1e8 proposal samples in latent space, not
  the LARS paper's 1e10), not a bound.
* **Fashion-MNIST** trains on 50,000 images (the last 10,000 of the training file are the validation
  split, which the authors' code does not hold out), so its numbers are slightly pessimistic.
"""


def main() -> None:
    REPORT.write_text(report())
    print(f"wrote {REPORT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
