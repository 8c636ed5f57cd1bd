"""The GPU tier (``pytest -m gpu``, ``make test-gpu``): every kind of module trains on CUDA in
float32 and bf16-mixed through the step engine; the training step is captured into a CUDA graph
and replayed without host synchronisations, to exactly the parameters of eager steps; and a run
interrupted and resumed on CUDA (with deterministic algorithms on) ends with exactly the
parameters of an uninterrupted run, the CUDA random state included. Every test here skips where
no CUDA device exists.
"""

from __future__ import annotations

import math
import os

import lightning as L
import pytest
import torch

from conftest import quiet_trainer
from datamodules import Toy2DDataModule
from eim_lightning import HIS, LARS, SNIS, TRS, VAE, Gaussian
from eim_lightning.modules.graphed import GraphedStep
from jobs.shrink import EVERY_KIND_OF_CONFIG, short_fit_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU tier runs on a GPU machine"),
]


TOY = {
    "snis": lambda: SNIS(num_proposals=256),
    "trs": lambda: TRS(T=256),
    "his": lambda: HIS(T=3),
    "lars": lambda: LARS(T=64, num_z_samples=256, num_z_val_samples=10_000, num_z_eval_samples=100_000),
    "gaussian": lambda: Gaussian(),
}


def _trainer(tmp_path, precision: str, **kwargs) -> L.Trainer:
    return quiet_trainer(tmp_path, accelerator="gpu", precision=precision, **kwargs)


class _TrainedOnCuda(L.Callback):
    """Whether every parameter was on CUDA and finite when training ended (Lightning moves the
    module back to the CPU after ``fit``)."""

    def __init__(self) -> None:
        self.ok = None

    def on_train_end(self, trainer, pl_module) -> None:
        self.ok = all(p.device.type == "cuda" and bool(torch.isfinite(p).all()) for p in pl_module.parameters())


def _graph_served(model) -> bool:
    """Whether the module's steps were replayed from a CUDA graph (none failed to capture)."""
    graphed = model._graphed_step
    return graphed is not None and not graphed.failed and graphed.replays > 0


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("name", sorted(TOY))
def test_every_2d_module_trains_and_evaluates_on_cuda(name, precision, tmp_path):
    model = TOY[name]()
    on_cuda = _TrainedOnCuda()
    trainer = _trainer(
        tmp_path,
        precision,
        callbacks=[on_cuda],
        max_steps=100,
        val_check_interval=50,
        check_val_every_n_epoch=None,
        log_every_n_steps=10,
        limit_val_batches=1,
    )
    dm = Toy2DDataModule("two_rings", steps_per_epoch=100, val_size=500, test_size=1000, eval_batch_size=500)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 100 and model._block_size == 10
    assert on_cuda.ok
    assert _graph_served(model)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert math.isfinite(result[f"test/{model.bound_name}"])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("config", EVERY_KIND_OF_CONFIG)
def test_every_other_kind_of_module_trains_on_cuda_from_its_config(config, precision, tmp_path):
    from conftest import real_data_dir

    cli = short_fit_cli(config, tmp_path, "gpu", precision, real_data_dir())
    on_cuda = _TrainedOnCuda()
    cli.trainer.callbacks.append(on_cuda)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 20
    assert on_cuda.ok
    graphed = getattr(cli.model, "_graphed_step", None)
    assert graphed is None or not graphed.failed  # where a graph applies, it was captured


def _strict_replays(monkeypatch) -> None:
    """Make any host synchronisation inside a replay (after the capture) an error."""
    call = GraphedStep.__call__

    def strict(self, batch, optimizer):
        if self._graph is None:
            return call(self, batch, optimizer)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return call(self, batch, optimizer)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(GraphedStep, "__call__", strict)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("name", sorted(TOY))
def test_the_step_is_a_cuda_graph_replayed_without_host_syncs_to_the_eager_steps_parameters(
    name, precision, tmp_path, monkeypatch
):
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _strict_replays(monkeypatch)
    runs = {}
    for graphs in (True, False):
        L.seed_everything(0, verbose=False)
        model = TOY[name]()
        model.cuda_graphs = graphs
        trainer = _trainer(tmp_path / str(graphs), precision, max_steps=60, log_every_n_steps=20, deterministic=True)
        trainer.fit(model, datamodule=Toy2DDataModule("two_rings", steps_per_epoch=60))
        runs[graphs] = model
    # blocks of 20 steps; the last step of each (19, 39, 59) logs its diagnostics and runs eagerly
    assert _graph_served(runs[True]) and runs[True]._graphed_step.replays == 57
    assert runs[False]._graphed_step is None
    assert all(torch.equal(p, q) for p, q in zip(runs[True].parameters(), runs[False].parameters()))
    assert all(torch.equal(p, q) for p, q in zip(runs[True].buffers(), runs[False].buffers()))


def test_a_vae_in_its_kl_warm_up_steps_eagerly_then_a_graph_replays_the_eager_steps(tmp_path, monkeypatch):
    from conftest import real_data_dir
    from datamodules import BinarizedMNISTDataModule

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _strict_replays(monkeypatch)
    runs = {}
    for graphs in (True, False):
        L.seed_everything(0, verbose=False)
        model = VAE(latent_dim=8, hidden_sizes=(64,), kl_warmup_steps=6, cuda_graphs=graphs)
        dm = BinarizedMNISTDataModule("static", root=str(real_data_dir()), train_subset=320, batch_size=16)
        _trainer(tmp_path / str(graphs), "32-true", max_steps=20, log_every_n_steps=50, deterministic=True).fit(
            model, datamodule=dm
        )
        runs[graphs] = model
    assert _graph_served(runs[True]) and runs[True]._graphed_step.replays == 14  # steps 6-19 (beta = 1)
    assert all(torch.equal(p, q) for p, q in zip(runs[True].parameters(), runs[False].parameters()))


def _resumable_fit(tmp_path, steps: int, ckpt_path=None, stop_at: int | None = None):
    """SNIS on CUDA with deterministic algorithms; optionally stopped (as if killed) at ``stop_at``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Stop(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if stop_at is not None and trainer.global_step >= stop_at:
                trainer.should_stop = True

    L.seed_everything(0, verbose=False)
    model = SNIS(num_proposals=256, steps_per_block=5)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=10, save_top_k=-1, filename="{step}")
    trainer = _trainer(
        tmp_path,
        "32-true",
        max_steps=steps,
        enable_checkpointing=True,
        callbacks=[ckpt, Stop()],
        log_every_n_steps=10,
        deterministic=True,
    )
    trainer.fit(model, datamodule=Toy2DDataModule("nine_gaussians", steps_per_epoch=40), ckpt_path=ckpt_path)
    return model


def test_a_resumed_cuda_run_equals_an_uninterrupted_one(tmp_path):
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    full = _resumable_fit(tmp_path / "full", 60)
    _resumable_fit(tmp_path / "part", 60, stop_at=30)
    resumed = _resumable_fit(tmp_path / "part", 60, ckpt_path=tmp_path / "part" / "ckpt" / "step=30.ckpt")
    assert _graph_served(full) and _graph_served(resumed)
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))
