"""Layer 3: the LightningModules through a real Trainer, their logging, checkpoints and errors."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import oracles
from datamodules import Toy2DDataModule
from eim_lightning import CPC, HIS, LARS, SNIS, TRS, Gaussian, RankingNCE
from eim_lightning import densities as D
from eim_lightning.nn import MLP

SMALL = {
    SNIS: dict(num_proposals=16),
    TRS: dict(T=16),
    HIS: dict(T=2),
    LARS: dict(T=16, num_z_samples=64, num_z_val_samples=1000, num_z_eval_samples=10_000),
    Gaussian: dict(),
}


def _small(cls, **kwargs):
    return cls(data_dim=2, num_val_samples=4, num_test_samples=8, **SMALL[cls], **kwargs)


def test_paper_defaults_build_in_one_line():
    snis, trs, his, lars = SNIS(data_dim=2), TRS(data_dim=2), HIS(data_dim=2), LARS(data_dim=2)
    assert snis.density.num_proposals == 1024 and snis.density.share_proposal_samples
    assert trs.density.T == 1024 and trs.density.bound == "exact"
    assert his.density.T == 5
    torch.testing.assert_close(his.density.alphas, torch.full((5,), 0.995))
    torch.testing.assert_close(his.density.step_size, torch.full((2,), 0.1))
    assert lars.density.T == 1024 and lars.density.num_z_samples == 1024
    assert lars.density.num_z_eval_samples == 10**8 and lars.density.z_ema.item() == 0.5
    for m in (snis, trs, his, lars):
        assert m.lr == 3e-4 and m.num_test_samples == 1000
        assert isinstance(m.density.proposal, D.Normal)
    assert [layer.out_features for layer in snis.density.energy.net if isinstance(layer, torch.nn.Linear)] == [
        20,
        20,
        1,
    ]
    assert [layer.out_features for layer in his.density.momentum_net.net if isinstance(layer, torch.nn.Linear)] == [
        20,
        20,
        4,
    ]


@pytest.mark.parametrize("cls", [SNIS, TRS, HIS, LARS, Gaussian])
def test_trains_through_trainer_and_logs_its_bound(cls, make_trainer):
    model = _small(cls)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dm = Toy2DDataModule("nine_gaussians", steps_per_epoch=5, val_size=200, test_size=300, eval_batch_size=100)
    trainer = make_trainer(max_steps=5, log_every_n_steps=1)
    trainer.fit(model, datamodule=dm)
    name = model.bound_name
    assert name == ("log_prob_estimate" if cls is LARS else "bound")
    for key in (f"train/{name}_step", f"train/{name}_epoch", f"val/{name}"):
        assert math.isfinite(trainer.callback_metrics[key].item()), key
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "no parameter moved"
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert math.isfinite(result[f"test/{name}"])


@pytest.mark.parametrize("cls,diag", [(SNIS, "ess"), (TRS, "expected_trials"), (HIS, "step_size"), (LARS, "z")])
def test_diagnostics_are_logged(cls, diag, make_trainer):
    model = _small(cls)
    trainer = make_trainer(max_steps=2, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=2))
    assert f"train/{diag}" in trainer.callback_metrics


@pytest.mark.parametrize("batch_kind", ["tensor", "tuple"])
def test_plain_dataloaders_work(batch_kind, make_trainer):
    x = torch.randn(64, 2)
    data = TensorDataset(x) if batch_kind == "tuple" else x
    model = _small(SNIS)
    trainer = make_trainer(max_steps=3)
    trainer.fit(model, DataLoader(data, batch_size=16))
    assert trainer.global_step == 3


def test_test_bound_is_the_mean_over_all_test_points(make_trainer):
    """With an exact density (Gaussian), test/bound must equal the mean log-density over the
    whole test set, however it is batched (torchmetrics aggregation, uneven last batch)."""
    model = Gaussian(data_dim=2)
    with torch.no_grad():
        model.density.loc.copy_(torch.tensor([0.3, -0.2]))
    dm = Toy2DDataModule("two_rings", test_size=1050, eval_batch_size=100)
    (result,) = make_trainer().test(model, datamodule=dm, verbose=False)
    dm.setup("test")
    x = torch.cat([b[0] for b in dm.test_dataloader()]).double()
    exact = torch.distributions.Normal(torch.tensor([0.3, -0.2]).double(), 1.0).log_prob(x).sum(-1).mean()
    assert result["test/bound"] == pytest.approx(exact.item(), abs=1e-5)


def test_lars_moving_average_updates_after_each_step_and_is_checkpointed(make_trainer, tmp_path):
    model = _small(LARS)
    trainer = make_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=3))
    z = model.density.z_ema.item()
    assert z != 0.5 and 0 < z < 1
    path = tmp_path / "lars.ckpt"
    trainer.save_checkpoint(path)
    loaded = LARS.load_from_checkpoint(path)
    assert loaded.density.z_ema.item() == z


@pytest.mark.parametrize("cls", [SNIS, TRS, HIS, LARS, Gaussian])
def test_checkpoint_reload_restores_parameters_and_state(cls, make_trainer, tmp_path):
    model = _small(cls)
    trainer = make_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=2))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)
    assert loaded.hparams == model.hparams


def test_custom_parts_and_ready_densities():
    proposal = D.Normal(2, scale=2.0)
    energy = MLP(2, [8], 1)
    model = SNIS(proposal=proposal, energy=energy, num_proposals=4)
    assert model.density.proposal is proposal and model.density.energy is energy
    ready = D.TRS(D.Normal(2), MLP(2, [8], 1), T=3)
    assert TRS(density=ready).density is ready
    with pytest.raises(ValueError, match="either a ready density or its parts"):
        TRS(density=ready, accept_logit=MLP(2, [8], 1))


def test_datamodule_dimension_mismatch_is_a_clear_error(make_trainer):
    with pytest.raises(ValueError, match=r"shape \[B, 2\].*models \[B, 3\]"):
        make_trainer(max_steps=1).fit(SNIS(data_dim=3, num_proposals=4), datamodule=Toy2DDataModule())


def test_bad_batches_are_clear_errors(make_trainer):
    model = _small(SNIS)
    with pytest.raises(ValueError, match="non-finite"):
        make_trainer(max_steps=1).fit(
            model, DataLoader(TensorDataset(torch.tensor([[0.0, math.nan]] * 4)), batch_size=4)
        )
    with pytest.raises(ValueError, match=r"shape \[B, 2\].*got \[4, 3\]"):
        make_trainer(max_steps=1).fit(model, DataLoader(TensorDataset(torch.zeros(4, 3)), batch_size=4))
    with pytest.raises(TypeError, match="dtype torch.int64"):
        make_trainer(max_steps=1).fit(
            model, DataLoader(TensorDataset(torch.zeros(4, 2, dtype=torch.long)), batch_size=4)
        )
    with pytest.raises(TypeError, match="expected a batch"):
        make_trainer(max_steps=1).fit(model, DataLoader([{"x": torch.zeros(2)}] * 4, batch_size=2))


def test_impossible_hyperparameters_are_clear_errors():
    with pytest.raises(ValueError, match=r"num_proposals \(K\) must be an integer >= 1"):
        SNIS(num_proposals=0)
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        TRS(T=0)
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        LARS(T=0)
    with pytest.raises(ValueError, match=r"T \(leapfrog steps\) must be an integer >= 0"):
        HIS(T=-1)
    assert HIS(T=0).density.T == 0
    with pytest.raises(ValueError, match="lr must be > 0"):
        SNIS(lr=0.0)
    with pytest.raises(ValueError, match="num_test_samples"):
        SNIS(num_test_samples=0)


class _NaNEnergy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.w * torch.log(x[..., :1] - 100.0)  # log of a negative number: NaN


def test_non_finite_loss_stops_training_with_the_step_named(make_trainer):
    model = SNIS(energy=_NaNEnergy(), num_proposals=4)
    with pytest.raises(FloatingPointError, match="non-finite training loss at global step 0"):
        make_trainer(max_steps=3).fit(model, datamodule=Toy2DDataModule(steps_per_epoch=3))


def test_validation_does_not_change_the_training_trajectory(make_trainer):
    """Validation draws on a side stream: training with and without it ends at the same weights."""
    import lightning as L

    def train(validate: bool):
        L.seed_everything(0)
        model = SNIS(num_proposals=8, num_val_samples=3)
        trainer = make_trainer(
            max_steps=25,
            val_check_interval=7 if validate else 1.0,
            check_val_every_n_epoch=None if validate else 1,
            limit_val_batches=1 if validate else 0,
            num_sanity_val_steps=2,
        )
        trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=10, val_size=50, eval_batch_size=50))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(train(True), train(False))


class _PoisonableEnergy(torch.nn.Module):
    """An MLP energy that returns NaN once ``poison`` is set (a blow-up in the middle of training)."""

    def __init__(self):
        super().__init__()
        self.net = MLP(2, [8], 1)
        self.poison = False

    def forward(self, x):
        out = self.net(x)
        return out * math.nan if self.poison else out


def test_non_finite_loss_leaves_the_last_good_checkpoint_intact(make_trainer, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    energy = _PoisonableEnergy()

    class PoisonAt(L.Callback):  # after step 5's backward: step 6 is the first NaN loss
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 5:
                energy.poison = True

    model = SNIS(energy=energy, num_proposals=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_last=True, save_top_k=0)
    trainer = make_trainer(max_steps=20, callbacks=[PoisonAt(), ckpt], enable_checkpointing=True)
    with pytest.raises(FloatingPointError, match=r"global step 6 \(train/bound = nan\)"):
        trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=20))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    # the weights in memory were not updated by the bad step either
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_validate_then_fit_on_the_same_module(make_trainer):
    """trainer.validate() runs under inference mode; a later fit must still update its metrics."""
    model = _small(SNIS)
    dm = Toy2DDataModule(steps_per_epoch=3, val_size=100, eval_batch_size=50)
    make_trainer().validate(model, datamodule=dm, verbose=False)
    trainer = make_trainer(max_steps=3, num_sanity_val_steps=1)
    trainer.fit(model, datamodule=dm)
    make_trainer().test(model, datamodule=dm, verbose=False)
    assert math.isfinite(trainer.callback_metrics["val/bound"].item())


@pytest.mark.parametrize(
    "build,dim_name",
    [
        (lambda p: SNIS(data_dim=2, proposal=p), "data_dim"),
        (lambda p: TRS(data_dim=2, proposal=p), "data_dim"),
        (lambda p: HIS(data_dim=2, proposal=p), "data_dim"),
        (lambda p: LARS(data_dim=2, proposal=p), "data_dim"),
        (lambda p: RankingNCE(data_dim=2, proposal=p), "data_dim"),
        (lambda p: CPC(x_dim=2, c_dim=1, proposal=p), "x_dim"),
    ],
    ids=["SNIS", "TRS", "HIS", "LARS", "RankingNCE", "CPC"],
)
def test_a_proposal_of_another_dimension_is_rejected_at_construction(build, dim_name):
    with pytest.raises(
        ValueError,
        match=rf"^{dim_name} is 2 but the proposal \(Normal\) is a density over \[3\]: "
        rf"set {dim_name} to the proposal's dimension, or pass a proposal over \[2\]$",
    ):
        build(D.Normal(3))
    assert build(D.Normal(2)).density.event_shape == (2,)


def test_validate_inputs_reaches_every_nested_density(make_trainer, monkeypatch):
    """A VAE as an EIM's proposal checks its pixels (a host sync over [B, D] per step) only while
    the module's validate_inputs is on; the switch, also set after construction, reaches it."""
    x = (torch.rand(32, 16) < 0.3).float()

    def fit(validate: bool):
        vae = D.VAE(data_dim=16, latent_dim=2, hidden_sizes=(8,))
        model = SNIS(data_dim=16, num_proposals=4, hidden_sizes=[8], proposal=vae)
        model.validate_inputs = validate  # after construction, before fit
        checks = []
        real = vae.likelihood.check
        monkeypatch.setattr(vae.likelihood, "check", lambda *args: checks.append(args) or real(*args))
        make_trainer(max_steps=2, limit_val_batches=0).fit(model, DataLoader(TensorDataset(x), batch_size=16))
        return checks, {m.validate_args for m in model.modules() if isinstance(m, D.Density)}

    checks, flags = fit(False)
    assert checks == [] and flags == {False}
    checks, flags = fit(True)
    assert len(checks) >= 2 and flags == {True}


def test_lars_density_after_fit_is_evaluated_with_the_evaluation_z(make_trainer):
    """The issue's case through a Trainer: fit leaves the module in training mode. A LARS with
    constant acceptance a is exactly its proposal once Z = a (which every estimate gives), so the
    density's 1000-sample log-density is log N(x; 0, I); the training Z (about 0.5) is 1.6 nats off."""
    model = LARS(
        data_dim=2,
        T=100,
        accept_logit=oracles.ConstantLogit(0.1, torch.float32),
        num_z_samples=16,
        num_z_eval_samples=1000,
        num_val_samples=2,
    )
    make_trainer(max_steps=3, limit_val_batches=0).fit(model, datamodule=Toy2DDataModule(steps_per_epoch=3))
    assert model.training and model.density.z_ema.item() > 0.45  # far from a = 0.1
    x = torch.randn(50, 2)
    with torch.no_grad():
        got = model.density.log_prob_lower_bound(x, num_samples=1000)
    torch.testing.assert_close(got, D.Normal(2).log_prob(x), rtol=0, atol=1e-5)


def test_non_finite_gradients_of_a_finite_loss_stop_training_at_the_next_step_with_the_cause(make_trainer, tmp_path):
    """A step whose loss is finite but whose gradients are NaN updates the weights to NaN; the next
    step's loss is NaN, training stops there before any checkpoint, and the error says the weights
    were already non-finite (it does not blame that step's batch)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class NaNGradientsAt(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 5:
                next(pl_module.parameters()).grad.fill_(math.nan)

    model = SNIS(num_proposals=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_last=True, save_top_k=0)
    trainer = make_trainer(max_steps=20, callbacks=[NaNGradientsAt(), ckpt], enable_checkpointing=True)
    with pytest.raises(FloatingPointError, match=r"global step 6 .*parameters were already non-finite"):
        trainer.fit(model, datamodule=Toy2DDataModule(steps_per_epoch=20))
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 5
