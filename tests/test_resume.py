"""Exact resume: a run killed mid-training (SIGKILL) and resumed from its last checkpoint ends
with exactly the parameters, state (LARS's Z) and bound of an uninterrupted run. The VAE runs on
a shuffled slice of static MNIST, and of dynamically binarized Fashion-MNIST (whose bits are
keyed by seed, epoch and image), and is killed in the middle of an epoch."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).parent / "jobs" / "train_job.py"


def _job(*args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("EIM_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    out = subprocess.run(
        [sys.executable, str(JOB), *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.mark.parametrize(
    "model",
    [
        "snis",
        pytest.param("trs", marks=pytest.mark.slow),
        pytest.param("his", marks=pytest.mark.slow),
        pytest.param("lars", marks=pytest.mark.slow),
        pytest.param("vae_snis", marks=pytest.mark.slow),
        pytest.param("vae_snis_fashion", marks=pytest.mark.slow),
        pytest.param("vae_snis_compiled", marks=pytest.mark.slow),
    ],
)
def test_killed_and_resumed_run_equals_uninterrupted_run(model, tmp_path, data_dir):
    _job(model, 20, tmp_path / "full.pt", "--ckpt-dir", tmp_path / "full")
    crashed = _job(model, 20, tmp_path / "never.pt", "--kill-at", 12, "--ckpt-dir", tmp_path / "crash", check=False)
    assert crashed.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.pt").exists()
    last = tmp_path / "crash" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 10  # the last checkpoint before the crash
    _job(model, 20, tmp_path / "resumed.pt", "--resume", last, "--ckpt-dir", tmp_path / "crash")
    full = torch.load(tmp_path / "full.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert full["step"] == resumed["step"] == 20
    assert full["state"].keys() == resumed["state"].keys()
    for key, value in full["state"].items():
        assert torch.equal(value, resumed["state"][key]) or (
            value.isnan().all() and resumed["state"][key].isnan().all()
        ), key
    assert torch.equal(full["bound"], resumed["bound"])
