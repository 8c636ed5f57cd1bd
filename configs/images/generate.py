"""Writes the image configs of Table 1 (binarized) and Table 2 (jittered) of the EIM paper.

    python configs/images/generate.py          # rewrites configs/images/<dataset>/<row>.yaml

One YAML per (row, dataset). The configs are plain data (LightningCLI ``class_path``/``init_args``);
this script only keeps the 53 of them consistent. Sizes are the authors' (ALGORITHMS.md 3, 5):
latent 50, MLPs 300-300 (VAE) and 100-100 (energies, acceptance, potential), SNIS K = 1024,
TRS T = 1024, HIS T = 5 with a 300-300 r-network and alpha 0.9995, LARS T = 100 with 1024 samples
for Z per step; Z at test from 1e8 proposal samples in latent space and 1e6 in pixel space (the
LARS paper: 1e10). Adam 3e-4, lr / 3 after 1e6 steps, batch 128, single-sample ELBO at
validation and the 1000-sample bound at test.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
LATENT = 50


def mlp(in_dim: int, hidden: list[int], out_dim: int = 1, scale: float | None = None) -> dict:
    net = {
        "class_path": "eim_lightning.nn.MLP",
        "init_args": {"in_dim": in_dim, "hidden_sizes": hidden, "out_dim": out_dim},
    }
    if scale is None:
        return net
    return {"class_path": "eim_lightning.densities.Rescaled", "init_args": {"net": net, "scale": scale}}


def normal(dim: int) -> dict:
    return {"class_path": "eim_lightning.densities.Normal", "init_args": {"dim": dim}}


def eim(
    kind: str, dim: int, proposal: dict, pixel: bool, scale: float | None = None, eval_chunk: int | None = None
) -> dict:
    """A layer-2 EIM density over ``[dim]`` with the authors' sizes."""
    net = mlp(dim, [100, 100], 1, scale)
    if kind == "snis":
        args = {"proposal": proposal, "energy": net, "num_proposals": 1024}
    elif kind == "trs":
        args = {"proposal": proposal, "accept_logit": net, "T": 1024}
    elif kind == "his":
        args = {
            "proposal": proposal,
            "potential": net,
            "momentum_net": mlp(dim, [300, 300], 2 * dim, scale),
            "T": 5,
            "step_size_init": 0.1,
            "alpha_init": 0.9995,
        }
    elif kind == "lars":
        args = {
            "proposal": proposal,
            "accept_logit": net,
            "T": 100,
            "num_z_samples": 1024,
            "num_z_val_samples": 10_000 if pixel else 100_000,
            "num_z_eval_samples": 1_000_000 if pixel else 100_000_000,
            "z_eval_chunk_size": 4096 if pixel else 32768,
        }
    else:
        raise ValueError(kind)
    if eval_chunk is not None:
        args["eval_chunk_size"] = eval_chunk
    return {"class_path": f"eim_lightning.densities.{kind.upper()}", "init_args": args}


def latent_model(
    kind: str,
    prior: str,
    likelihood: str = "bernoulli",
    data_scale: float = 1.0,
    layer2: bool = False,
    eval_chunk: int | None = None,
) -> dict:
    args: dict = {}
    if prior != "gaussian":
        args["prior"] = eim(prior, LATENT, normal(LATENT), pixel=False)
    if likelihood != "bernoulli":
        args.update(likelihood=likelihood, data_scale=data_scale)
    if eval_chunk is not None:
        args["eval_chunk_size"] = eval_chunk
    name = {"vae": "VAE", "convhvae": "ConvHVAE"}[kind]
    return {"class_path": f"eim_lightning.{'densities.' if layer2 else ''}{name}", "init_args": args}


def estimator(bound: str) -> dict:
    return {
        "lr": 0.0003,
        "lr_milestones": [1_000_000],
        "lr_gamma": 1 / 3,
        "num_val_samples": 1,
        "num_test_samples": 1000,
    }


BINARY = {
    "static_mnist": {"class_path": "datamodules.BinarizedMNISTDataModule", "init_args": {"variant": "static"}},
    "dynamic_mnist": {"class_path": "datamodules.BinarizedMNISTDataModule", "init_args": {"variant": "dynamic"}},
    "fashion_mnist": {"class_path": "datamodules.BinarizedMNISTDataModule", "init_args": {"variant": "fashion"}},
}
JITTERED = {
    "jittered_mnist": {"class_path": "datamodules.JitteredMNISTDataModule", "init_args": {"dataset": "mnist"}},
    "jittered_fashion": {"class_path": "datamodules.JitteredMNISTDataModule", "init_args": {"dataset": "fashion"}},
}


def rows_binary() -> dict[str, tuple[dict, str]]:
    rows = {}
    for kind in ("vae", "convhvae"):
        for prior in ("gaussian", "trs", "snis", "his", "lars"):
            rows[f"{kind}_{prior}_prior"] = (latent_model(kind, prior), f"{kind.upper()} with a {prior} prior")
    for proposal in ("vae", "convhvae"):
        for kind in ("snis", "lars"):
            chunk = 4 if proposal == "vae" else 1
            density = eim(kind, 784, latent_model(proposal, "gaussian", layer2=True), pixel=True, eval_chunk=chunk)
            model = {"class_path": f"eim_lightning.{kind.upper()}", "init_args": {"density": density}}
            rows[f"{kind}_{proposal}_proposal"] = (
                model,
                f"{kind.upper()} in pixel space with a {proposal.upper()} proposal",
            )
    return rows


def rows_jittered() -> dict[str, tuple[dict, str]]:
    proposal = latent_model("vae", "gaussian", "gaussian", 256.0, layer2=True)
    rows = {
        "vae_gaussian_decoder": (
            {"class_path": "eim_lightning.VAE", "init_args": {"likelihood": "gaussian", "data_scale": 256.0}},
            "VAE with a Gaussian decoder",
        )
    }
    for kind in ("snis", "his", "lars"):
        chunk = 1 if kind == "his" else 4
        density = eim(kind, 784, proposal, pixel=True, scale=1 / 256, eval_chunk=chunk)
        rows[f"{kind}_vae_proposal"] = (
            {"class_path": f"eim_lightning.{kind.upper()}", "init_args": {"density": density}},
            f"{kind.upper()} on jittered pixels with a Gaussian-decoder VAE proposal",
        )
    return rows


def rows_unify() -> dict[str, tuple[dict, str]]:
    """Known bounds as EIM bounds on the image VAE (ALGORITHMS.md 4), static MNIST only: the
    model is the VAE with an N(0, I) prior, q0(z|x) its own encoder."""
    vae = {"class_path": "eim_lightning.densities.VAE"}
    rows = {
        "iwae_vae": (
            {"class_path": "eim_lightning.IWAE", "init_args": {"model": vae, "num_particles": 5}},
            "IWAE (K = 5) of the VAE",
        )
    }
    for family, extra, what in (
        ("snis", {"num_proposals": 5}, "SNIS posterior (K = 5, learned energy U(z; x))"),
        ("his", {"T": 5}, "HIS posterior (T = 5, potential -log p(x, z), momentum N(0, I): the Hamiltonian VAE)"),
    ):
        args = {"model": vae, "posterior_family": family, **extra, "hidden_sizes": [100, 100]}
        rows[f"{family}_posterior_vae"] = (
            {"class_path": "eim_lightning.EIMPosteriorVAE", "init_args": args},
            f"The VAE with an {what}",
        )
    return rows


def config(dataset: str, row: str, model: dict, data: dict, pixel_range: float) -> dict:
    model = {"class_path": model["class_path"], "init_args": {**model["init_args"], **estimator(row)}}
    data = {
        "class_path": data["class_path"],
        "init_args": {**data["init_args"], "root": "../shared/data", "batch_size": 128, "eval_batch_size": 250},
    }
    return {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 3_000_000,
            "val_check_interval": 10_000,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 100,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs/images", "name": f"{dataset}/{row}"},
            },
            "callbacks": [
                {
                    "class_path": "eim_lightning.callbacks.ImageSampleCallback",
                    "init_args": {"every_n_steps": 10_000, "pixel_range": pixel_range},
                },
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
            ],
        },
        "model": model,
        "data": data,
    }


def header(dataset: str, row: str, what: str, source: str) -> str:
    path = f"configs/images/{dataset}/{row}.yaml"
    return (
        f"# {what} on {dataset.replace('_', ' ')} ({source}).\n"
        "# Generated by configs/images/generate.py: edit that, not this file.\n"
        "# Data: root ../shared/data (the project's shared data; override with --data.init_args.root DIR,\n"
        "#   or --data.init_args.download true with internet). Adam 3e-4, lr / 3 after 1e6 steps, batch 128;\n"
        "#   the paper trained for millions of steps: shorten with --trainer.max_steps.\n"
        f"#   eim fit  --config {path}\n"
        f"#   eim test --config {path} --ckpt_path runs/images/{dataset}/{row}/version_0/checkpoints/last.ckpt\n"
    )


def main() -> None:
    written = 0
    static = {"static_mnist": BINARY["static_mnist"]}
    for datasets, rows, pixel_range, source in (
        (BINARY, rows_binary(), 1.0, "EIM paper Table 1; ALGORITHMS.md sections 3 and 5"),
        (JITTERED, rows_jittered(), 256.0, "EIM paper Table 2; ALGORITHMS.md sections 3 and 5"),
        (static, rows_unify(), 1.0, "the unification of bounds, ALGORITHMS.md section 4"),
    ):
        for dataset, data in datasets.items():
            (HERE / dataset).mkdir(exist_ok=True)
            for row, (model, what) in rows.items():
                text = yaml.safe_dump(config(dataset, row, model, data, pixel_range), sort_keys=False, width=120)
                (HERE / dataset / f"{row}.yaml").write_text(header(dataset, row, what, source) + text)
                written += 1
    print(f"wrote {written} configs under {HERE}")


if __name__ == "__main__":
    main()
