"""Shrink a config's costly sizes so a few test steps are quick: the DDP job (beside this file), the
GPU tier (tests/test_gpu.py) and the host-read check of tests/test_graphed.py."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: a config of every kind of module that is not a 2-D EIM (the GPU tier trains each)
EVERY_KIND_OF_CONFIG = [
    "images/static_mnist/vae_snis_prior.yaml",
    "images/static_mnist/vae_lars_prior.yaml",
    "images/static_mnist/convhvae_gaussian_prior.yaml",
    "images/static_mnist/snis_vae_proposal.yaml",
    "unify/iwae_linear_gaussian.yaml",
    "unify/hvae_linear_gaussian.yaml",
    "unify/fivo_linear_gaussian.yaml",
    "unify/fivo_vrnn_sines.yaml",
    "unify/snis_posterior_linear_gaussian.yaml",
    "unify/ranking_nce_two_rings.yaml",
    "unify/cpc_correlated_gaussian.yaml",
]


def shrink_config(node, z_samples: int, size: int) -> None:
    """In place: LARS's Z-sample counts at most ``z_samples``, K / T / Z samples per step at most ``size``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("num_z_val_samples", "num_z_eval_samples"):
                node[key] = min(value, z_samples)
            elif key in ("num_proposals", "T", "num_z_samples") and isinstance(value, int) and value > size:
                node[key] = size
            else:
                shrink_config(value, z_samples, size)
    elif isinstance(node, list):
        for item in node:
            shrink_config(item, z_samples, size)


def shrunk_config(config: str, z_samples: int, size: int) -> dict:
    """``configs/<config>`` as a dict without its callbacks and logger, shrunk (:func:`shrink_config`)."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / config).read_text())
    cfg["trainer"].pop("callbacks", None)
    cfg["trainer"].pop("logger", None)
    shrink_config(cfg, z_samples, size)
    return cfg


def short_fit_cli(config: str, root, accelerator: str, precision: str = "32-true", data_root=None):
    """An ``EIMCLI`` (not run) of ``configs/<config>`` shrunk for 20 quick steps on ``accelerator``:
    validation of one batch every 10 steps, no callbacks, logger, checkpoints or progress bar; image
    configs on 256 training images of ``data_root`` in batches of 32."""
    import yaml

    from eim_lightning.cli import EIMCLI

    cfg = shrunk_config(config, z_samples=10_000, size=128)
    args = [
        "--config",
        yaml.safe_dump(cfg),
        "--trainer.max_steps=20",
        "--trainer.limit_val_batches=1",
        "--trainer.val_check_interval=10",
        "--trainer.check_val_every_n_epoch=null",
        f"--trainer.accelerator={accelerator}",
        "--trainer.devices=1",
        f"--trainer.precision={precision}",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
    ]
    if config.startswith("images/"):
        args += [
            f"--data.init_args.root={data_root}",
            "--data.init_args.train_subset=256",
            "--data.init_args.batch_size=32",
        ]
    return EIMCLI(args=args, run=False)
