"""Multi-process training on CPU (gloo): every 2-D module trains under DDP with 2 processes,
parameters stay identical across processes, LARS's Z is identical on every process after every
step, and the test bound reduced across processes equals a single-process evaluation of the same
weights on the same test set (exactly for the deterministic Gaussian; within Monte Carlo error
for the EIMs, whose negatives are drawn per process). The 1001-point test set does not split
evenly: the evaluation must not count a padded example twice."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).parent / "jobs" / "ddp_job.py"


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    from conftest import real_data_dir

    real_data_dir()  # the image configs train on static MNIST
    out = tmp_path_factory.mktemp("ddp") / "results.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("EIM_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    proc = subprocess.run(
        [sys.executable, str(JOB), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        cwd=tmp_path_factory.getbasetemp(),
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_every_module_trains_under_ddp_with_identical_replicas(ddp_results):
    assert set(ddp_results) == {"snis", "trs", "his", "lars", "gaussian", "configs"}
    for name, r in ddp_results.items():
        if name == "configs":
            continue
        assert r["world_size"] == 2
        a, b = r["checksums"]
        assert a == b, name


@pytest.mark.slow
def test_every_other_kind_of_module_trains_under_ddp_with_identical_replicas(ddp_results):
    """VAE with a LARS prior (its Z too), ConvHVAE, SNIS with a VAE proposal, IWAE, an EIM
    posterior, FIVO and ranking NCE, each from its config (CPC has its own DDP test)."""
    configs = ddp_results["configs"]
    assert len(configs) == 7
    for name, r in configs.items():
        assert r["world_size"] == 2 and r["steps"] == 3, name
        first, second = r["per_rank"]
        assert first == second, name
    assert len(configs["images/static_mnist/vae_lars_prior.yaml"]["per_rank"][0]) == 2  # checksum and Z


@pytest.mark.slow
def test_lars_z_is_identical_on_every_process_after_every_step(ddp_results):
    history = torch.tensor(ddp_results["lars"]["z_history"])
    assert history.shape == (2, 6)
    assert torch.equal(history[0], history[1])
    assert len(set(history[0].tolist())) == 6  # it moved every step


@pytest.mark.slow
def test_reduced_test_bound_equals_single_process_evaluation(ddp_results):
    g = ddp_results["gaussian"]
    assert g["test"] == pytest.approx(g["single_mean"], abs=1e-5)  # exact density: no Monte Carlo
    lars = ddp_results["lars"]
    # LARS with the same (process-averaged) Z is deterministic too
    assert lars["test"] == pytest.approx(lars["single_mean"], abs=1e-4)
    for name in ("snis", "trs", "his"):
        r = ddp_results[name]
        assert abs(r["test"] - r["single_mean"]) < 5 * max(r["single_se"], 1e-3), name


@pytest.mark.slow
def test_each_process_draws_its_own_negatives_though_every_process_was_seeded_alike(ddp_results):
    """seed_everything(0) on both ranks; the engine reseeds each from (seed, rank) at setup."""
    for name in ("snis", "trs", "his", "lars"):
        first, second = ddp_results[name]["draws"]
        assert first != second, name
