"""A training job for the resume tests, run as a subprocess:

    python tests/jobs/train_job.py MODEL MAX_STEPS OUT [--kill-at N] [--resume CKPT] [--ckpt-dir DIR]

Trains ``MODEL`` on the checkerboard with validation every 4 steps and a checkpoint every 5
steps (``last.ckpt``), optionally SIGKILLs itself right after step ``N`` (a crash: no cleanup,
no final checkpoint), optionally resumes from ``CKPT``, and saves the final state dict plus an
evaluation bound on fixed points to ``OUT``.
"""

import argparse
import os
import signal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules import BinarizedMNISTDataModule, Toy2DDataModule
from eim_lightning import HIS, LARS, SNIS, TRS, VAE
from eim_lightning.densities import SNIS as SNISDensity
from eim_lightning.densities import Normal
from eim_lightning.nn import MLP


def small_vae_snis(**options) -> VAE:
    """The resume tests' VAE: one hidden layer of 32, a 4-d latent, a small SNIS prior."""
    return VAE(
        hidden_sizes=(32,),
        latent_dim=4,
        num_val_samples=2,
        prior=SNISDensity(Normal(4), MLP(4, [16], 1), num_proposals=16),
        **options,
    )


MODELS = {
    "snis": lambda: SNIS(num_proposals=32, num_val_samples=4),
    "trs": lambda: TRS(T=32, num_val_samples=4),
    "his": lambda: HIS(T=3, num_val_samples=4),
    "lars": lambda: LARS(T=32, num_z_samples=64, num_z_val_samples=500, num_val_samples=4),
    # a VAE with an SNIS prior (small), on a 96-image slice of static MNIST: 6 shuffled batches an
    # epoch, so the checkpoint at step 10 is in the middle of the second epoch
    "vae_snis": small_vae_snis,
}
# the same VAE on dynamically binarized Fashion-MNIST read by two DataLoader workers: fresh bits
# every epoch, keyed by (seed, epoch, image), so the resumed run, whose new workers start new
# random streams, must still read the bits the uninterrupted one read
MODELS["vae_snis_fashion"] = MODELS["vae_snis"]
# the same VAE with its training step compiled, as long runs of the VAE are by default: the
# compiled step's random draws must follow the restored random state too
MODELS["vae_snis_compiled"] = lambda: small_vae_snis(compile=True)


def datamodule(model: str):
    if model.startswith("vae"):
        root = os.environ.get(
            "EIM_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
        )
        fashion = model.endswith("fashion")
        return BinarizedMNISTDataModule(
            "fashion" if fashion else "static",
            root,
            batch_size=16,
            train_subset=96,
            val_subset=32,
            test_subset=32,
            num_workers=2 if fashion else 0,
        )
    return Toy2DDataModule("two_rings", batch_size=64, steps_per_epoch=7, val_size=100, eval_batch_size=100)


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("max_steps", type=int)
    p.add_argument("out")
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--resume", default=None)
    p.add_argument("--ckpt-dir", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0)
    model = MODELS[a.model]()
    callbacks = [ModelCheckpoint(dirpath=a.ckpt_dir, every_n_train_steps=5, save_last=True, save_top_k=0)]
    if a.kill_at:
        callbacks.insert(0, KillAt(a.kill_at))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=a.max_steps,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=a.ckpt_dir,
    )
    dm = datamodule(a.model)
    trainer.fit(model, datamodule=dm, ckpt_path=a.resume)
    model.eval()
    torch.manual_seed(123)
    x = next(iter(dm.val_dataloader()))
    x = x[0] if isinstance(x, (tuple, list)) else x
    bound = model.density.log_prob_lower_bound(x, num_samples=8).mean()
    torch.save({"state": model.state_dict(), "bound": bound, "step": trainer.global_step}, a.out)


if __name__ == "__main__":
    main()
