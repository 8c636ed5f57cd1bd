"""The step engine (eim_lightning/modules/engine.py) and the lean Adam (eim_lightning/optim.py).

Several optimiser steps per Lightning batch must not change what a run computes or when it
logs, validates and checkpoints: every test compares a run with blocks of N steps to the same
run with one step per batch, or to torch.optim.Adam itself.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from conftest import quiet_trainer
from datamodules import Toy2DDataModule
from datamodules.synthetic import batch_seed
from eim_lightning import LARS, SNIS
from eim_lightning.callbacks import DensityImageCallback
from eim_lightning.modules.engine import MAX_STEPS_PER_BLOCK, choose_steps_per_block
from eim_lightning.modules.randomness import rank_seed
from eim_lightning.optim import Adam


def _trainer(tmp_path, **kwargs):
    return quiet_trainer(tmp_path, **kwargs)


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


# -- lean Adam -----------------------------------------------------------------------------------


def _twin_linears():
    torch.manual_seed(1)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    return a, b


def test_lean_adam_is_bit_identical_to_torch_fused_adam_and_shares_its_state_dict():
    a, b = _twin_linears()
    ref = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True)
    lean = Adam(b.parameters(), lr=1e-2)
    for i in range(7):
        x = torch.randn(5, 3)
        for module, opt in ((a, ref), (b, lean)):
            opt.zero_grad()
            module(x).square().sum().backward()
            opt.step()
        if i == 3:  # a scheduler's lr change is honoured
            for opt in (ref, lean):
                opt.param_groups[0]["lr"] = 3e-3
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    sa, sb = ref.state_dict(), lean.state_dict()
    for k in sa["state"]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][k][name], sb["state"][k][name])
    restored = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True)
    restored.load_state_dict(sb)  # a checkpoint of ours loads into torch's Adam


def test_lean_adam_step_unless_skips_exactly_and_without_side_effects():
    a, b = _twin_linears()
    ref, lean = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True), Adam(b.parameters(), lr=1e-2)
    for i in range(5):
        x = torch.randn(5, 3)
        for module, opt in ((a, ref), (b, lean)):
            opt.zero_grad()
            module(x).square().sum().backward()
        lean.step_unless(torch.tensor(1.0 if i == 2 else 0.0))  # step 2 skipped
        if i != 2:
            ref.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert lean.state[next(iter(b.parameters()))]["step"].item() == 4


# -- choosing N ------------------------------------------------------------------------------------


def test_the_automatic_block_divides_every_step_interval(tmp_path):
    trainer = _trainer(
        tmp_path,
        log_every_n_steps=50,
        val_check_interval=1000,
        check_val_every_n_epoch=None,
        enable_checkpointing=True,
        callbacks=[DensityImageCallback(every_n_steps=5000), ModelCheckpoint(every_n_train_steps=300)],
    )
    dm = Toy2DDataModule(steps_per_epoch=1000)
    n = choose_steps_per_block(None, trainer, dm)
    assert n == 50 and n <= MAX_STEPS_PER_BLOCK  # gcd(50, 1000, 5000, 300, 1000) = 50
    assert (
        choose_steps_per_block(None, _trainer(tmp_path, log_every_n_steps=7), Toy2DDataModule(steps_per_epoch=49)) == 7
    )
    assert choose_steps_per_block(None, _trainer(tmp_path, limit_train_batches=5), dm) == 1


def test_an_explicit_block_that_does_not_divide_a_step_interval_is_rejected_by_name(tmp_path):
    model = SNIS(num_proposals=8, steps_per_block=8)
    trainer = _trainer(tmp_path, max_steps=10, log_every_n_steps=50)
    with pytest.raises(ValueError, match=r"steps_per_block=8 must divide log_every_n_steps=50"):
        trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=64))
    with pytest.raises(ValueError, match="steps_per_block"):
        SNIS(steps_per_block=0)


# -- what a run computes ------------------------------------------------------------------------


class _StepRecorder(L.Callback):
    """global_step at every per-step hook, and the steps at which checkpoints and validation ran."""

    def __init__(self):
        self.before_step, self.val_steps = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_step.append(trainer.global_step)

    def on_validation_start(self, trainer, pl_module):
        self.val_steps.append(trainer.global_step)


def fit_in_blocks(tmp_path, cls, n, max_steps=37, recorder=None, name=None, **model_kwargs):
    """37 steps in blocks of ``n``: logs every 8 steps (CSV), validation every 16, checkpoints every
    8; returns the model, trainer, recorder and checkpoint names (``name`` names the run's folders)."""
    L.seed_everything(0, verbose=False)
    model = cls(steps_per_block=n, **model_kwargs)
    recorder = _StepRecorder() if recorder is None else recorder
    name = name or f"n{n}"
    ckpt = ModelCheckpoint(dirpath=tmp_path / f"ckpt_{name}", every_n_train_steps=8, save_top_k=-1, filename="{step}")
    trainer = _trainer(
        tmp_path,
        max_steps=max_steps,
        log_every_n_steps=8,
        val_check_interval=16,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[recorder, ckpt],
        logger=CSVLogger(tmp_path, name=name),
    )
    trainer.fit(
        model, datamodule=Toy2DDataModule("nine_gaussians", steps_per_epoch=32, val_size=200, eval_batch_size=100)
    )
    return model, trainer, recorder, sorted(p.name for p in (tmp_path / f"ckpt_{name}").iterdir())


@pytest.mark.parametrize("cls, kwargs", [(SNIS, dict(num_proposals=32)), (LARS, dict(T=32, num_z_samples=32))])
def test_blocks_of_8_steps_train_bit_identically_to_one_step_per_batch(tmp_path, cls, kwargs):
    one, t1, r1, ck1 = fit_in_blocks(tmp_path, cls, 1, **kwargs)
    eight, t8, r8, ck8 = fit_in_blocks(tmp_path, cls, 8, **kwargs)
    assert one._block_size == 1 and eight._block_size == 8
    assert t1.global_step == t8.global_step == 37  # the last block is cut short at max_steps
    assert all(torch.equal(p, q) for p, q in zip(one.parameters(), eight.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(one.buffers(), eight.buffers()))  # LARS's Z too
    assert r1.before_step == r8.before_step == list(range(37))  # global_step counts optimiser steps
    assert r1.val_steps == r8.val_steps == [16, 32]
    assert ck1 == ck8 == sorted(f"step={s}.ckpt" for s in (8, 16, 24, 32))
    assert torch.equal(t1.callback_metrics[f"val/{one.bound_name}"], t8.callback_metrics[f"val/{one.bound_name}"])
    logged = [_logged_steps(tmp_path / f"n{n}") for n in (1, 8)]
    assert logged[0] == logged[1] and logged[0][f"train/{one.bound_name}_step"] == [7, 15, 23, 31]


def _logged_steps(root):
    import csv

    (metrics,) = root.glob("version_*/metrics.csv")
    steps: dict[str, list[int]] = {}
    with open(metrics) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value:
                    steps.setdefault(key, []).append(int(row["step"]))
    return steps


class _StepDiagnostic(SNIS):
    """Reports the global step a training bound was computed at as a diagnostic."""

    def training_bound(self, batch):
        bound, diagnostics = super().training_bound(batch)
        return bound, {**diagnostics, "computed_at": torch.tensor(float(self.global_step))}


@pytest.mark.parametrize("n", [1, 5])
def test_diagnostics_are_those_of_the_step_they_are_logged_at(tmp_path, n):
    L.seed_everything(0, verbose=False)
    model = _StepDiagnostic(num_proposals=8, steps_per_block=n)
    trainer = _trainer(tmp_path, max_steps=30, log_every_n_steps=10, logger=CSVLogger(tmp_path, name="d"))
    trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=30))
    import csv

    (metrics,) = (tmp_path / "d").glob("version_*/metrics.csv")
    with open(metrics) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/computed_at")]
    assert [(int(r["step"]), float(r["train/computed_at"])) for r in rows] == [(9, 9.0), (19, 19.0), (29, 29.0)]


def test_a_nan_inside_a_block_stops_at_the_end_of_the_block_naming_the_first_bad_step(tmp_path):
    class PoisonOnce(SNIS):
        def training_bound(self, batch):
            bound, diagnostics = super().training_bound(batch)
            if self.global_step == 11:
                bound = bound * math.nan
            return bound, diagnostics

    L.seed_everything(0, verbose=False)
    model = PoisonOnce(num_proposals=8, steps_per_block=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    trainer = _trainer(tmp_path, max_steps=40, log_every_n_steps=4, enable_checkpointing=True, callbacks=[ckpt])
    with pytest.raises(FloatingPointError, match=r"global step 11 \(train/bound = nan\)"):
        trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=40))
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step=4.ckpt", "step=8.ckpt"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_nan_batch_stops_before_its_block_runs_naming_its_step(tmp_path):
    """The block's batches are checked at once, before its first step: nothing of it trains."""
    dm = Toy2DDataModule(steps_per_epoch=40)
    sample = dm.target.sample

    def poisoned(n, generator=None):
        x = sample(n, generator)
        if generator is not None and generator.initial_seed() == batch_seed(0, 0, 13):
            x[3, 1] = math.nan  # the batch of step 13
        return x

    dm.target.sample = poisoned
    L.seed_everything(0, verbose=False)
    model = SNIS(num_proposals=8, steps_per_block=4)
    steps_run = []

    class Steps(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            steps_run.append(trainer.global_step)

    trainer = _trainer(tmp_path, max_steps=40, log_every_n_steps=4, callbacks=[Steps()])
    with pytest.raises(ValueError, match=r"the batch of training step 13 is not valid: SNIS got 1 non-finite"):
        trainer.fit(model, datamodule=dm)
    assert steps_run == list(range(12)) and trainer.global_step == 12  # block 12-15 never ran


def test_gradient_clipping_and_accumulation_take_lightnings_loop_with_fresh_batches(tmp_path):
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch.clone())

    model = SNIS(num_proposals=8)
    trainer = _trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2, gradient_clip_val=1.0, callbacks=[Record()])
    trainer.fit(model, datamodule=Toy2DDataModule(batch_size=16, steps_per_epoch=4))
    assert model.automatic_optimization and model._block_size == 1
    assert trainer.global_step == 4 and len(seen) == 8
    assert len({tuple(b.flatten().tolist()) for b in seen}) == 8  # every batch fresh


def test_image_callbacks_do_not_perturb_training(tmp_path):
    def fit(callbacks):
        L.seed_everything(0, verbose=False)
        model = SNIS(num_proposals=16)
        _trainer(tmp_path, max_steps=6, callbacks=callbacks).fit(model, datamodule=Toy2DDataModule(steps_per_epoch=6))
        return _params(model)

    plain = fit([])
    drawn = fit([DensityImageCallback(every_n_steps=2, grid_size=8, num_samples=64, output_dir=tmp_path / "img")])
    assert all(torch.equal(p, q) for p, q in zip(plain, drawn))


def test_each_rank_draws_its_own_stream_derived_from_seed_and_rank():
    seeds = {rank_seed(0, r) for r in range(4)}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)
    assert rank_seed(7, 1) == rank_seed(7, 1) and rank_seed(7, 1) != rank_seed(8, 1)


def test_any_python_int_seeds_the_training_batches_and_small_seeds_keep_their_streams():
    assert batch_seed(3, 1, 17) == (3 * 1_000_003 + 1) * 1_000_000_007 + 17  # unchanged where it fit
    dm = Toy2DDataModule(seed=2**31 - 1, batch_size=4, steps_per_epoch=2)
    first = next(iter(dm.train_dataloader()))
    assert first.shape == (4, 2) and torch.isfinite(first).all()
    huge = Toy2DDataModule(seed=10**30, batch_size=4, steps_per_epoch=2, val_size=8)
    assert next(iter(huge.train_dataloader())).shape == (4, 2)
    assert next(iter(huge.val_dataloader()))[0].shape == (8, 2)


# -- compilation ----------------------------------------------------------------------------------


def _his_fit(tmp_path, steps: int, **kwargs):
    from eim_lightning import HIS

    L.seed_everything(0, verbose=False)
    model = HIS(T=2, **kwargs)
    _trainer(tmp_path, max_steps=steps, log_every_n_steps=5).fit(model, datamodule=Toy2DDataModule(steps_per_epoch=10))
    return model


def test_short_runs_are_not_compiled_by_default_and_a_failed_compilation_falls_back(tmp_path, monkeypatch):
    assert _his_fit(tmp_path, 4)._compiled_bound is None  # HIS pays for compilation only in long runs

    def broken(fn, **options):
        def call(*args, **kwargs):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="torch.compile of the training step failed"):
        model = _his_fit(tmp_path, 6, compile=True)
    assert model._compiled_bound is None and all(torch.isfinite(p).all() for p in model.parameters())


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("torch.compile with aot_autograd does not currently support double backward")


def test_a_compiled_step_whose_backward_fails_runs_again_eagerly(tmp_path, monkeypatch):
    """The jittered-MNIST HIS row compiled its forward and failed at its first backward: that
    step runs again eagerly, with a warning, and training goes on without compilation."""
    calls = []

    def forward_only(fn, **options):
        def call(batch):
            calls.append(1)
            return _NoBackward.apply(fn(batch))

        return call

    monkeypatch.setattr(torch, "compile", forward_only)
    with pytest.warns(UserWarning, match="torch.compile of the training step failed.*double backward"):
        model = _his_fit(tmp_path, 6, compile=True)
    assert len(calls) == 1 and model._compiled_bound is None and model.global_step == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_batch_of_another_shape_than_the_compiled_one_runs_eagerly(tmp_path, monkeypatch):
    """An epoch's last, partial batch does not recompile the step: it runs eagerly."""
    from eim_lightning import HIS

    shapes = []

    def recording_compile(fn, **options):
        def call(batch):
            shapes.append(tuple(batch[0].shape if isinstance(batch, (list, tuple)) else batch.shape))
            return fn(batch)

        return call

    monkeypatch.setattr(torch, "compile", recording_compile)
    data = DataLoader(TensorDataset(torch.randn(10, 2)), batch_size=4)  # batches of 4, 4, 2
    model = HIS(T=1, compile=True)
    _trainer(tmp_path, max_epochs=2, log_every_n_steps=100).fit(model, data)
    assert model.global_step == 6 and shapes == [(4, 2)] * 4


@pytest.mark.slow
def test_a_compiled_his_step_trains_and_matches_the_eager_bound(tmp_path):
    model = _his_fit(tmp_path, 10, compile=True)
    assert model._compiled_bound is not None
    x = Toy2DDataModule().sample(64, torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    eager = model.training_bound_only(x)
    compiled = model._compiled_bound(x)
    assert compiled.shape == eager.shape and torch.isfinite(compiled).all()
    # different random numbers (the compiled graph draws its own), same distribution of the bound
    assert abs(compiled.mean().item() - eager.mean().item()) < 1.0
    with pytest.raises(ValueError, match="compile must be"):
        SNIS(compile="yes")


# -- threads -------------------------------------------------------------------------------------


class _ThreadsAtSteps(L.Callback):
    def __init__(self):
        self.seen = set()

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.seen.add(torch.get_num_threads())

    def on_validation_start(self, trainer, module):
        self.seen.add(("validation", torch.get_num_threads()))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: SNIS(num_proposals=16), 1),  # closed form on the CPU: one thread (automatic)
        (lambda: LARS(T=8, num_z_samples=8), 1),
        (lambda: SNIS(num_proposals=16, closed_form=False), 2),  # autograd: torch's setting
        (lambda: SNIS(num_proposals=16, step_threads=3), 3),
    ],
)
def test_blocks_of_closed_form_steps_run_on_one_thread_and_torch_setting_is_restored(tmp_path, make, expected):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = _ThreadsAtSteps()
        trainer = _trainer(tmp_path, max_steps=20, limit_val_batches=1, callbacks=[threads])
        trainer.fit(make(), datamodule=Toy2DDataModule(steps_per_epoch=10))
        assert threads.seen == {expected, ("validation", 2)} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_step_threads_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="step_threads must be None"):
        SNIS(step_threads=value)


def test_step_interval_checkpoints_of_a_manually_optimised_module_bring_no_lightning_warning(tmp_path):
    """Lightning (>= 2.6) warns that such a checkpoint holds the state after the optimiser step; the
    engine means it to (the state at global_step, which exact resume continues from)."""
    import warnings

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    trainer = _trainer(tmp_path, max_steps=10, enable_checkpointing=True, callbacks=[ckpt])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(SNIS(num_proposals=8), datamodule=Toy2DDataModule(steps_per_epoch=10))
    assert len(list((tmp_path / "ckpt").iterdir())) == 2
    assert not [w for w in caught if "pre-optimization state" in str(w.message)]
