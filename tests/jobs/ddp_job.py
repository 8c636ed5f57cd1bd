"""Multi-process training job for the DDP test, run as a subprocess:

    python tests/jobs/ddp_job.py OUT

Trains every 2-D module under ``Trainer(strategy="ddp", accelerator="cpu", devices=2)``
(gloo) for a few steps, records LARS's moving-average Z on every process after every step,
tests each module, draws from every process's random stream, and on rank 0 writes to ``OUT``
the test values, the per-rank Z histories and draws and per-rank parameter checksums, plus
single-process evaluations of the same weights on the same test set for comparison. Then every
other kind of module (VAE with a LARS prior, ConvHVAE, SNIS with a VAE proposal, IWAE, an
EIM-posterior VAE, FIVO, ranking NCE) is built from its config and trained a few steps the same
way, with per-rank checksums and LARS Z values.
"""

import os
import sys
from pathlib import Path

import lightning as L
import torch
import yaml
from shrink import EVERY_KIND_OF_CONFIG, shrunk_config  # tests/jobs/shrink.py, beside this script

from datamodules import Toy2DDataModule
from eim_lightning import HIS, LARS, SNIS, TRS, Gaussian

MODELS = {
    "snis": lambda: SNIS(num_proposals=32, num_test_samples=16),
    "trs": lambda: TRS(T=32, num_test_samples=16),
    "his": lambda: HIS(T=2, num_test_samples=16),
    "lars": lambda: LARS(T=32, num_z_samples=64, num_z_eval_samples=200_000, num_test_samples=1),
    "gaussian": lambda: Gaussian(),
}


class ZHistory(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(pl_module.density.z_ema))


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    results = {}
    for name, make in MODELS.items():
        L.seed_everything(0)
        model = make()
        history = ZHistory()
        trainer = L.Trainer(
            accelerator="cpu",
            strategy="ddp",
            devices=2,
            max_steps=6,
            limit_val_batches=0,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[history] if name == "lars" else [],
        )
        dm = Toy2DDataModule("two_rings", batch_size=32, steps_per_epoch=6, test_size=1001, eval_batch_size=100)
        trainer.fit(model, datamodule=dm)
        (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
        checksum = torch.cat([p.detach().flatten() for p in model.parameters()]).double().sum()
        gathered = trainer.strategy.all_gather(torch.stack([checksum, torch.tensor(float(len(history.values)))]))
        z_hist = trainer.strategy.all_gather(torch.tensor(history.values or [0.0]))
        draws = trainer.strategy.all_gather(torch.rand(3))  # each rank's training stream, after fit
        if trainer.global_rank == 0:
            x = dm.test_dataloader().dataset.tensors[0]
            model.eval()
            lars_z = None
            if name == "lars":
                lars_z = float(model.density.z_eval)
            with torch.no_grad():
                single = model.density.log_prob_lower_bound(x, num_samples=model.num_test_samples)
            results[name] = {
                "test": metrics[f"test/{model.bound_name}"],
                "single_mean": float(single.mean()),
                "single_se": float(single.std() / len(single) ** 0.5),
                "checksums": gathered[:, 0].tolist(),
                "z_history": z_hist.tolist(),
                "lars_z_eval": lars_z,
                "world_size": trainer.world_size,
                "draws": draws.tolist(),
            }
    results["configs"] = train_configs()
    if results["configs"] is not None:
        torch.save(results, out)
    if torch.distributed.is_initialized():
        # an explicit, collective shutdown of gloo: left to interpreter exit, its threads once
        # aborted the process ("terminate called without an active exception") after all results
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


REPO = Path(__file__).resolve().parents[2]
#: the configs this job trains on two processes (of every kind but four)
CONFIGS = [
    c
    for c in EVERY_KIND_OF_CONFIG
    if c
    not in (
        "images/static_mnist/vae_snis_prior.yaml",
        "unify/fivo_vrnn_sines.yaml",
        "unify/snis_posterior_linear_gaussian.yaml",
        "unify/cpc_correlated_gaussian.yaml",
    )
]


def train_configs() -> dict | None:
    from eim_lightning.cli import EIMCLI

    root = os.environ.get("EIM_DATA_DIR", str(REPO.parent / "shared" / "data"))
    out, rank = {}, 0
    for name in CONFIGS:
        cfg = shrunk_config(name, z_samples=2000, size=64)
        args = [
            "--config",
            yaml.safe_dump(cfg),
            "--trainer.max_steps=3",
            "--trainer.limit_val_batches=0",
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
        if name.startswith("images/"):
            args += [
                f"--data.init_args.root={root}",
                "--data.init_args.train_subset=128",
                "--data.init_args.batch_size=32",
            ]
        cli = EIMCLI(args=args, run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        checksum = torch.cat([p.detach().flatten() for p in cli.model.parameters()]).double().sum()
        z = [float(m.z_ema) for m in cli.model.modules() if hasattr(m, "z_ema")]
        gathered = cli.trainer.strategy.all_gather(torch.tensor([float(checksum), *z], dtype=torch.float64))
        rank = cli.trainer.global_rank
        out[name] = {
            "per_rank": gathered.tolist(),
            "steps": cli.trainer.global_step,
            "world_size": cli.trainer.world_size,
        }
    return out if rank == 0 else None


if __name__ == "__main__":
    main()
