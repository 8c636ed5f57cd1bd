"""Mixed precision and device placement.

* Under ``torch.autocast(bfloat16)`` the networks run in bf16 but every bound is computed (and
  returned) in float32, close to the float32 bound on the same weights and randomness.
* ``precision="bf16-mixed"`` trains every 2-D EIM through a real Trainer without NaN.
* Device placement: with the model and data on the "meta" device, any tensor a step creates on
  the CPU (instead of on the model's device) raises a device-mismatch error, so these tests
  guard GPU placement without a GPU.
"""

import math

import pytest
import torch

from datamodules import Toy2DDataModule, make_target
from eim_lightning import HIS, LARS, SNIS, TRS, Gaussian

SMALL = {
    "snis": lambda: SNIS(num_proposals=64),
    "trs": lambda: TRS(T=64),
    "his": lambda: HIS(T=3),
    "lars": lambda: LARS(T=64, num_z_samples=128, num_z_val_samples=1000, num_z_eval_samples=10_000),
    "gaussian": lambda: Gaussian(),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bf16_autocast_bound_is_float32_and_close_to_float32_bound(name):
    model = SMALL[name]()
    x = make_target("two_rings").sample(256, torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    full, _ = model.density.bound_and_diagnostics(x)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = model.density.bound_and_diagnostics(x)
    assert mixed.dtype == torch.float32
    assert torch.isfinite(mixed).all()
    # bf16 keeps ~3 significant digits of each network output; the bound moves by far less than a nat
    assert (mixed - full).abs().mean().item() < 0.05
    assert abs(mixed.mean().item() - full.mean().item()) < 0.02


@pytest.mark.parametrize(
    "name",
    [
        "snis",
        pytest.param("trs", marks=pytest.mark.slow),
        pytest.param("his", marks=pytest.mark.slow),
        pytest.param("lars", marks=pytest.mark.slow),
        pytest.param("gaussian", marks=pytest.mark.slow),
    ],
)
def test_bf16_mixed_precision_trains_without_nan(name, make_trainer):
    model = SMALL[name]()
    trainer = make_trainer(
        max_steps=200,
        precision="bf16-mixed",
        limit_val_batches=2,
        val_check_interval=100,
        check_val_every_n_epoch=None,
        log_every_n_steps=10,
    )
    trainer.fit(
        model, datamodule=Toy2DDataModule("checkerboard", steps_per_epoch=200, val_size=200, eval_batch_size=100)
    )
    assert trainer.global_step == 200
    assert math.isfinite(trainer.callback_metrics[f"val/{model.bound_name}"].item())
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_gradient_clipping_trains_under_mixed_precision(precision, make_trainer):
    """Lightning refuses to clip for an optimiser that unscales gradients inside its step (torch's
    fused Adam declares it does); eim_lightning's Adam leaves unscaling to the scaler, so
    ``gradient_clip_val`` works in mixed precision as in float32."""
    model = SNIS(num_proposals=32)
    trainer = make_trainer(max_steps=10, precision=precision, gradient_clip_val=0.5)
    trainer.fit(model, datamodule=Toy2DDataModule("two_rings", steps_per_epoch=10))
    assert trainer.global_step == 10 and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_training_and_evaluation_create_tensors_on_the_models_device(name):
    model = SMALL[name]().to("meta")
    density = model.density
    density.validate_args = False  # value checks cannot run on meta tensors
    x = torch.empty(16, 2, device="meta")
    bound, diagnostics = density.bound_and_diagnostics(x)
    assert bound.device.type == "meta" and bound.shape == (16,)
    assert all(v.device.type == "meta" for v in diagnostics.values())
    density.eval()
    if name == "lars":  # evaluation checks whether Z was estimated (a value); use a given Z
        assert density.log_prob_given_z(x, density.z_ema, num_replicas=3).device.type == "meta"
    else:
        assert density.log_prob_lower_bound(x, num_samples=3).device.type == "meta"
    assert density.sample(5).device.type == "meta"


def test_lars_streamed_z_estimate_stays_on_the_models_device():
    density = SMALL["lars"]().to("meta").density
    assert density.estimate_z(1000, chunk_size=300).device.type == "meta"


def test_buffers_move_with_the_module():
    model = SMALL["lars"]()
    model.to(torch.float64)
    names = {n for n, _ in model.named_buffers()}
    assert {"density.z_ema", "density.z_eval", "density.data_mean", "density.proposal.loc"} <= names
    assert all(b.dtype == torch.float64 for n, b in model.named_buffers() if b.is_floating_point())


# -- the VAE with each prior ---------------------------------------------------------------------


def _priors():
    from eim_lightning.densities import HIS as HISDensity
    from eim_lightning.densities import LARS as LARSDensity
    from eim_lightning.densities import SNIS as SNISDensity
    from eim_lightning.densities import TRS as TRSDensity
    from eim_lightning.densities import Normal
    from eim_lightning.nn import MLP

    d = 8
    return {
        "gaussian": lambda: None,
        "snis": lambda: SNISDensity(Normal(d), MLP(d, [32], 1), num_proposals=64),
        "trs": lambda: TRSDensity(Normal(d), MLP(d, [32], 1), T=64),
        "his": lambda: HISDensity(
            Normal(d), MLP(d, [32], 1, output_bias=False), MLP(d, [32], 2 * d), T=3, alpha_init=0.9995
        ),
        "lars": lambda: LARSDensity(
            Normal(d), MLP(d, [32], 1), T=16, num_z_samples=128, num_z_val_samples=2000, num_z_eval_samples=2000
        ),
    }


def _binary_images(n: int, seed: int) -> torch.Tensor:
    """Stand-in binary 'images': 64 pixels from a few random prototypes flipped with 10 % noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(4, 64, generator=g) < 0.4).float()
    x = prototypes[torch.randint(0, 4, (n,), generator=g)]
    flip = torch.rand(n, 64, generator=g) < 0.1
    return torch.where(flip, 1 - x, x)


@pytest.mark.parametrize("prior", ["gaussian", "snis", "trs", "his", "lars"])
def test_vae_bound_under_bf16_autocast_is_float32_and_close(prior):
    from eim_lightning import VAE

    model = VAE(data_dim=64, latent_dim=8, hidden_sizes=(64,), prior=_priors()[prior]())
    x = _binary_images(128, 0)
    torch.manual_seed(3)
    full, _ = model.density.bound_and_diagnostics(x)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = model.density.bound_and_diagnostics(x)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    # 64 Bernoulli log-likelihood terms from bf16 logits: a few hundredths of a nat per example
    assert abs(mixed.mean().item() - full.mean().item()) < 0.1


@pytest.mark.parametrize(
    "prior",
    [
        "snis",
        pytest.param("gaussian", marks=pytest.mark.slow),
        pytest.param("trs", marks=pytest.mark.slow),
        pytest.param("his", marks=pytest.mark.slow),
        pytest.param("lars", marks=pytest.mark.slow),
    ],
)
def test_vae_with_each_prior_trains_under_bf16_mixed_without_nan(prior, make_trainer):
    from torch.utils.data import DataLoader, TensorDataset

    from eim_lightning import VAE

    model = VAE(data_dim=64, latent_dim=8, hidden_sizes=(64,), prior=_priors()[prior](), num_val_samples=4)
    train = DataLoader(
        TensorDataset(_binary_images(2048, 1)), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = DataLoader(TensorDataset(_binary_images(128, 2)), batch_size=64)
    trainer = make_trainer(max_steps=300, precision="bf16-mixed", val_check_interval=100, check_val_every_n_epoch=None)
    trainer.fit(model, train, val)
    assert trainer.global_step == 300
    assert math.isfinite(trainer.callback_metrics[f"val/{model.bound_name}"].item())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _bf16_warnings(records) -> list:
    return [w for w in records if "without bfloat16 instructions" in str(w.message)]


@pytest.mark.parametrize(
    "precision, bf16_instructions, warns",
    [("bf16-mixed", False, True), ("bf16-true", False, True), ("bf16-mixed", True, False), ("32-true", False, False)],
)
def test_fit_warns_where_bf16_runs_emulated_on_the_cpu(
    monkeypatch, recwarn, make_trainer, precision, bf16_instructions, warns
):
    from eim_lightning.modules import precision as precision_module

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_instructions)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert precision_module.cpu_has_bf16_instructions() is bf16_instructions
    trainer = make_trainer(max_steps=2, precision=precision, limit_val_batches=0)
    trainer.fit(SMALL["snis"](), datamodule=Toy2DDataModule("checkerboard", steps_per_epoch=2, val_size=100))
    assert trainer.global_step == 2  # a warning, not an error: training ran
    assert len(_bf16_warnings(recwarn)) == (1 if warns else 0)


def test_cpu_bf16_check_is_unknown_where_torch_cannot_say(monkeypatch, recwarn):
    from eim_lightning.modules import precision as precision_module

    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert precision_module.cpu_has_bf16_instructions() is None
    precision_module.warn_if_bf16_is_emulated("bf16-mixed", torch.device("cpu"), "SNIS")
    assert not _bf16_warnings(recwarn)
