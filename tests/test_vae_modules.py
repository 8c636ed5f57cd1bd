"""Layer 3-4: the VAE / ConvHVAE LightningModules, pixel-space EIMs with a VAE proposal, the LARS
prior's Z with the reweighted posterior sample, KL warm-up, checkpoints, the image callback and
the image configs (real static MNIST through the ``data_dir`` fixture)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from datamodules import BinarizedMNISTDataModule
from eim_lightning import LARS, SNIS, VAE, ConvHVAE
from eim_lightning import densities as D
from eim_lightning.callbacks import ImageSampleCallback
from eim_lightning.modules.vae import kl_weight
from eim_lightning.nn import MLP

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "configs" / "images"


def static(data_dir, **kwargs):
    args = dict(root=str(data_dir), train_subset=64, val_subset=16, test_subset=16, batch_size=16)
    args.update(kwargs)
    return BinarizedMNISTDataModule("static", **args)


def small_snis_prior(k: int = 16) -> D.SNIS:
    return D.SNIS(D.Normal(50), MLP(50, [16], 1), num_proposals=k)


def test_paper_defaults():
    vae = VAE()
    assert isinstance(vae.density, D.VAE) and isinstance(vae.density.prior, D.Normal)
    sizes = [layer.out_features for layer in vae.density.encoder.net if isinstance(layer, torch.nn.Linear)]
    assert sizes == [300, 300, 100]
    sizes = [layer.out_features for layer in vae.density.decoder.net if isinstance(layer, torch.nn.Linear)]
    assert sizes == [300, 300, 784]
    assert vae.lr == 3e-4 and vae.num_test_samples == 1000 and vae.kl_warmup_steps == 0
    assert vae.density.likelihood.temperature == 0.7 and vae.bound_name == "bound"
    assert ConvHVAE().density.latent_dim == 50
    assert VAE(prior=D.LARS(D.Normal(50), MLP(50, [8], 1), T=4)).bound_name == "log_prob_estimate"


def test_kl_warmup_is_linear_from_zero_to_one():
    assert [kl_weight(s, 100) for s in (0, 25, 100, 1000)] == [0.0, 0.25, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0
    with pytest.raises(ValueError, match="kl_warmup_steps"):
        VAE(kl_warmup_steps=-1)


@pytest.mark.parametrize("prior", ["gaussian", "snis"])
def test_vae_trains_validates_and_tests_on_static_mnist(prior, data_dir, make_trainer):
    model = VAE(
        prior=small_snis_prior() if prior == "snis" else None,
        num_val_samples=2,
        num_test_samples=20,
        kl_warmup_steps=10,
    )
    dm = static(data_dir)
    trainer = make_trainer(max_steps=4, log_every_n_steps=1, val_check_interval=4)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    for key in ("train/bound_step", "val/bound", "train/kl", "train/elbo", "train/beta"):
        assert math.isfinite(metrics[key].item()), key
    # the datamodule's mean centres the encoder and set the decoder bias once
    torch.testing.assert_close(model.density.data_mean, dm.data_mean.reshape(-1))
    assert bool(model.density.initialized_from_data)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert math.isfinite(result["test/bound"])


def test_lars_prior_z_includes_the_reweighted_posterior_sample(monkeypatch):
    """Z_curr = (S Ẑ_S + stopgrad(pi(z)/q(z|x)) a(z)) / (S + 1), Z_s = (1-eps) Z_ema + eps Z_curr."""
    torch.manual_seed(0)
    prior = D.LARS(D.Normal(50), MLP(50, [16], 1), T=5, num_z_samples=8).double()
    vae = D.VAE(prior=prior).double()
    fixed = torch.randn(8, 50, dtype=torch.float64)
    monkeypatch.setattr(prior.proposal, "rsample", lambda n, context=None: fixed[:n])
    z = torch.randn(2, 3, 50, dtype=torch.float64)
    log_q = torch.randn(2, 3, dtype=torch.float64)
    out, _ = vae.prior.log_prob_for_elbo(z, log_q, objective=True)
    a = lambda v: torch.sigmoid(prior.accept_logit(v).squeeze(-1))  # noqa: E731
    log_pi = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    z_curr = (8 * a(fixed).mean() + torch.exp(log_pi - log_q) * a(z)) / 9
    z_s = 0.99 * 0.5 + 0.01 * z_curr
    torch.testing.assert_close(prior._pending_z_s, z_s.reshape(-1).detach())
    # the forward value uses the smoothed Z: the truncated density written out term by term
    expected = log_pi + torch.log(a(z) * (1 - (1 - z_s) ** 4) / z_s + (1 - z_s) ** 4)
    torch.testing.assert_close(out, expected)
    out.sum().backward()  # differentiable in the acceptance network through Z_curr and a(z)
    assert prior.accept_logit.net[0].weight.grad.abs().sum() > 0


def test_vae_with_lars_prior_keeps_z_state_and_logs_an_estimate(data_dir, make_trainer, tmp_path):
    prior = D.LARS(
        D.Normal(50), MLP(50, [16], 1), T=10, num_z_samples=64, num_z_val_samples=500, num_z_eval_samples=2000
    )
    model = VAE(prior=prior, num_val_samples=2, num_test_samples=5)
    trainer = make_trainer(max_steps=3, val_check_interval=3, limit_val_batches=1, log_every_n_steps=1)
    dm = static(data_dir)
    trainer.fit(model, datamodule=dm)
    assert prior.z_ema.item() != 0.5
    assert math.isfinite(trainer.callback_metrics["val/log_prob_estimate"].item())
    assert 0 < trainer.callback_metrics["train/prior_z"].item() < 1
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = VAE.load_from_checkpoint(path, prior=D.LARS(D.Normal(50), MLP(50, [16], 1), T=10))
    assert loaded.density.prior.z_ema.item() == prior.z_ema.item()
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b) or (a.isnan().all() and b.isnan().all()), k
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert math.isfinite(result["test/log_prob_estimate"])


@pytest.mark.parametrize("kind", ["snis", "lars"])
def test_pixel_space_eim_with_a_vae_proposal_trains_jointly(kind, data_dir, make_trainer):
    proposal = D.VAE(hidden_sizes=(32,), latent_dim=8)
    if kind == "snis":
        model = SNIS(
            data_dim=784, num_proposals=16, hidden_sizes=[16], proposal=proposal, num_val_samples=2, num_test_samples=4
        )
    else:
        model = LARS(
            data_dim=784,
            T=5,
            num_z_samples=16,
            num_z_val_samples=100,
            num_z_eval_samples=200,
            hidden_sizes=[16],
            proposal=proposal,
            num_val_samples=2,
            num_test_samples=4,
        )
    before = {k: v.clone() for k, v in proposal.state_dict().items()}
    dm = static(data_dir)
    trainer = make_trainer(max_steps=3, val_check_interval=3, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    # the hook gave the nested proposal the data mean (and the EIM's energy its centring)
    torch.testing.assert_close(proposal.data_mean, dm.data_mean.reshape(-1))
    torch.testing.assert_close(model.density.data_mean, dm.data_mean.reshape(-1))
    assert bool(proposal.initialized_from_data)
    moved = [k for k, v in proposal.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("decoder") for k in moved) and any(k.startswith("encoder") for k in moved)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert math.isfinite(result[f"test/{model.bound_name}"])


def test_convhvae_module_trains_and_reloads(data_dir, make_trainer, tmp_path):
    model = ConvHVAE(prior=small_snis_prior(), num_val_samples=2, num_test_samples=3, channels=8)
    assert isinstance(model.density, D.ConvHVAE) and model.density.channels == 8
    trainer = make_trainer(max_steps=2, val_check_interval=2, limit_val_batches=1)
    trainer.fit(model, datamodule=static(data_dir))
    assert math.isfinite(trainer.callback_metrics["val/bound"].item())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    loaded = ConvHVAE.load_from_checkpoint(tmp_path / "c.ckpt", prior=small_snis_prior())
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_non_binary_batches_are_a_clear_error(make_trainer):
    data = DataLoader(TensorDataset(torch.rand(8, 784)), batch_size=4)
    with pytest.raises(ValueError, match="Bernoulli likelihood and needs binary data"):
        make_trainer(max_steps=1).fit(VAE(), data)
    pixel_snis = SNIS(data_dim=784, num_proposals=4, hidden_sizes=[8], proposal=D.VAE(latent_dim=4, hidden_sizes=(8,)))
    with pytest.raises(ValueError, match="VAE has a Bernoulli likelihood and needs binary data"):
        make_trainer(max_steps=1).fit(pixel_snis, data)


def test_image_callback_writes_pngs_and_tensorboard_images(data_dir, make_trainer, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = ImageSampleCallback(every_n_steps=2, num_samples=16, num_reconstructions=8)
    trainer = make_trainer(
        max_steps=2, callbacks=[cb], logger=TensorBoardLogger(tmp_path, name="run"), limit_val_batches=0
    )
    trainer.fit(
        SNIS(data_dim=784, num_proposals=4, hidden_sizes=[8], proposal=D.VAE(latent_dim=4, hidden_sizes=(16,))),
        datamodule=static(data_dir),
    )
    names = sorted(p.name for p in (tmp_path / "run" / "version_0" / "images").glob("*.png"))
    assert names == sorted(
        f"{k}_{t}.png" for k in ("samples", "means", "reconstructions") for t in ("final", "step_0000002")
    )
    acc = EventAccumulator(str(tmp_path / "run" / "version_0"))
    acc.Reload()
    assert {"images/samples", "images/means", "images/reconstructions"} <= set(acc.Tags()["images"])
    grids = cb.grids(VAE(latent_dim=4, hidden_sizes=(16,)), torch.zeros(8, 784))
    # 8 originals over 8 reconstructions: two rows of 28-pixel images with 2-pixel padding
    assert grids["reconstructions"].shape == (3, 2 + 2 * 30, 2 + 8 * 30)
    assert float(grids["reconstructions"][:, 2:30, 2:30].max()) == 0.0  # the originals (zeros) on top


# -- configs --------------------------------------------------------------------------------------

BINARY = ("static_mnist", "dynamic_mnist", "fashion_mnist")
ROWS = [f"{m}_{p}_prior" for m in ("vae", "convhvae") for p in ("gaussian", "trs", "snis", "his", "lars")] + [
    f"{e}_{p}_proposal" for e in ("snis", "lars") for p in ("vae", "convhvae")
]

UNIFY = {"iwae_vae", "snis_posterior_vae", "his_posterior_vae"}  # ALGORITHMS.md 4 on the image VAE, static MNIST


def test_every_table1_row_has_a_config_per_dataset():
    for dataset in BINARY:
        extra = UNIFY if dataset == "static_mnist" else set()
        assert {p.stem for p in (IMAGES / dataset).glob("*.yaml")} == set(ROWS) | extra
    for dataset in ("jittered_mnist", "jittered_fashion"):
        assert {p.stem for p in (IMAGES / dataset).glob("*.yaml")} == {
            "vae_gaussian_decoder",
            "snis_vae_proposal",
            "his_vae_proposal",
            "lars_vae_proposal",
        }


def _find(node, key):
    if isinstance(node, dict):
        if key in node:
            yield node[key]
        for v in node.values():
            yield from _find(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _find(v, key)


def test_image_configs_carry_the_papers_settings():
    for path in sorted(IMAGES.rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        args = cfg["model"]["init_args"]
        assert args["lr"] == 3e-4 and args["lr_milestones"] == [1_000_000] and args["lr_gamma"] == pytest.approx(1 / 3)
        assert args["num_test_samples"] == 1000 and args["num_val_samples"] == 1
        assert cfg["data"]["init_args"]["batch_size"] == 128
        row = path.stem
        pixel = "proposal" in row
        for key, value in (("num_proposals", None if row in UNIFY else 1024), ("z_eval_chunk_size", None)):
            for found in _find(cfg["model"], key):
                assert value is None or found == value, (path, key)
        if "lars" in row:
            (t,) = _find(cfg["model"], "T")
            assert t == 100 and next(_find(cfg["model"], "num_z_samples")) == 1024
            assert next(_find(cfg["model"], "num_z_eval_samples")) == (10**6 if pixel else 10**8), path
        if "trs" in row:
            assert list(_find(cfg["model"], "T")) == [1024]
        if row in UNIFY:  # K = 5 (IWAE, SNIS posterior), T = 5 (Hamiltonian VAE), the VAE with N(0, I)
            assert list(_find(cfg["model"], "num_particles")) + list(_find(cfg["model"], "num_proposals")) + list(
                _find(cfg["model"], "T")
            ) == [5]
            assert cfg["model"]["init_args"]["model"] == {"class_path": "eim_lightning.densities.VAE"}
        elif "his" in row:
            assert list(_find(cfg["model"], "T")) == [5] and next(_find(cfg["model"], "alpha_init")) == 0.9995
        for hidden in _find(cfg["model"], "hidden_sizes"):
            assert hidden in ([100, 100], [300, 300]), path


@pytest.mark.slow
def test_eim_fit_then_test_reports_the_test_bound(data_dir, tmp_path):
    """The command line end to end on an image config: ``eim fit``, then ``eim test`` of its
    checkpoint prints ``test/bound`` (here with 10 replicas on 16 test images)."""
    import subprocess
    import sys

    config = str(IMAGES / "static_mnist" / "vae_snis_prior.yaml")
    common = [
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        f"--data.init_args.root={data_dir}",
        "--data.init_args.train_subset=64",
        "--data.init_args.val_subset=16",
        "--data.init_args.test_subset=16",
        "--data.init_args.batch_size=16",
    ]

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "eim_lightning", *a], capture_output=True, text=True, cwd=REPO, timeout=600
        )

    fit = run("fit", "--config", config, "--trainer.max_steps=4", "--trainer.val_check_interval=4", *common)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = tmp_path / "static_mnist" / "vae_snis_prior" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    assert (tmp_path / "static_mnist" / "vae_snis_prior" / "version_0" / "images" / "samples_final.png").exists()
    test = run("test", "--config", config, "--ckpt_path", str(ckpt), "--model.init_args.num_test_samples=10", *common)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/bound" in test.stdout


def test_his_compiles_only_with_a_closed_form_input_gradient(make_trainer, monkeypatch):
    """HIS says compiling pays only with an MLP potential: any other potential's grad E is
    autograd.grad with a graph, whose double backward torch.compile cannot take (a long
    jittered-MNIST run with a rescaled MLP potential failed at its first step)."""
    from eim_lightning import HIS
    from eim_lightning.densities.his import COMPILE_MIN_STEPS

    assert D.HIS(D.Normal(2), MLP(2, [4], 1)).compile_min_steps == COMPILE_MIN_STEPS
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compiled.append(fn) or fn)  # record, do not compile
    model = HIS(density=D.HIS(D.Normal(2), D.Rescaled(MLP(2, [4], 1), 2.0), T=1))
    assert model.density.compile_min_steps is None
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    make_trainer(max_steps=10 * COMPILE_MIN_STEPS, limit_train_batches=1, max_epochs=1).fit(model, data)
    assert model._compiled_bound is None and not compiled


def _small_latent_model(kind: str, prior: str, **kwargs):
    priors = {
        "normal": lambda: None,
        "snis": lambda: D.SNIS(D.Normal(4), MLP(4, [8], 1), num_proposals=8),
        "trs": lambda: D.TRS(D.Normal(4), MLP(4, [8], 1), T=8),
        "lars": lambda: D.LARS(D.Normal(4), MLP(4, [8], 1), T=8, num_z_samples=8, num_z_val_samples=64),
        "his": lambda: D.HIS(D.Normal(4), MLP(4, [8], 1), T=1),
    }
    if kind == "vae":
        return VAE(data_dim=16, latent_dim=4, hidden_sizes=(8,), prior=priors[prior](), **kwargs)
    return ConvHVAE(data_dim=784, latent_dim=4, prior=priors[prior](), channels=2, **kwargs)


@pytest.mark.parametrize(
    ("kind", "prior", "shortest"),
    [("vae", "normal", 12_000), ("vae", "his", 5000), ("convhvae", "normal", None), ("convhvae", "his", 5000)],
)
def test_the_engine_compiles_runs_as_long_as_the_density_says_it_pays(kind, prior, shortest, make_trainer, monkeypatch):
    """The step engine's automatic choice compiles a run at least as long as the density's
    compile_min_steps and not a shorter one: the MLP VAE from 12,000 steps (its own measured
    gain, bench/vae_compile.py), from its prior's threshold if lower (HIS: 5,000); the ConvHVAE
    only where its prior's compilation pays."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compiled.append(fn) or fn)  # record, do not compile
    assert _small_latent_model(kind, prior).density.compile_min_steps == shortest
    pixels = 16 if kind == "vae" else 784
    data = DataLoader(TensorDataset(torch.bernoulli(torch.full((8, pixels), 0.5))), batch_size=4)
    for steps in (shortest or 10**7) - 1, shortest or 10**7:
        model = _small_latent_model(kind, prior)
        make_trainer(max_steps=steps, limit_train_batches=1, max_epochs=1).fit(model, data)
        expected = shortest is not None and steps >= shortest
        assert (model._compiled_bound is not None) is expected, steps
    assert len(compiled) == int(shortest is not None)


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["normal", "snis", "trs", "lars", "his"])
def test_a_compiled_vae_step_is_one_graph(prior, make_trainer):
    """Every prior's compiled VAE step is one graph, with no breaks (the Bernoulli data check runs
    before the compiled call, not inside it), and trains."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = _small_latent_model("vae", prior, compile=True)
    data = DataLoader(TensorDataset(torch.bernoulli(torch.full((8, 16), 0.5))), batch_size=4)
    make_trainer(max_steps=3, log_every_n_steps=100).fit(model, data)
    assert model._compiled_bound is not None and model.global_step == 3
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"], dict(counters["graph_break"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_the_compiled_step_on_a_cpu_draws_what_the_eager_step_draws():
    """On the CPU the engine compiles with torch's random number generators (``fallback_random``),
    not inductor's: from one generator state the compiled and the eager training bound of a VAE
    with an SNIS prior (posterior noise and the prior's proposal draws) give the same values and
    leave the generator in the same state."""
    from eim_lightning.modules.engine import compiled_for

    torch._dynamo.reset()
    model = _small_latent_model("vae", "snis")
    model._diagnostics_wanted = False
    x = torch.bernoulli(torch.full((4, 16), 0.5))
    compiled = compiled_for(model.training_bound_only, x.device)
    compiled(x)  # compile outside the comparison
    values, states = [], []
    for bound in (model.training_bound_only, compiled):
        torch.manual_seed(3)
        values.append(bound(x).detach())
        states.append(torch.get_rng_state())
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(states[0], states[1])
