"""bench/gpu_steps.py: without a GPU it measures and writes nothing and says so; its fits (run here
on the CPU, eagerly) train the cases it names and report whether a graph served them."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_steps as G  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this checks the answer of a machine without a GPU")
def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path, capsys):
    G.main(["--output", str(tmp_path / "page.md")])
    assert "no CUDA device here" in capsys.readouterr().out
    assert not (tmp_path / "page.md").exists()


def test_impossible_counts_are_refused():
    with pytest.raises(SystemExit):
        G.main(["--steps", "0"])


def test_a_2d_case_trains_the_steps_it_times_and_reports_no_graph_on_the_cpu():
    rate, served = G.steps_per_second(G._toy, "SNIS", False, "32-true", steps=100, warmup=50, accelerator="cpu")
    assert rate > 0 and served is False


def test_a_vae_case_builds_from_its_shipped_config(data_dir, monkeypatch):
    monkeypatch.setenv("EIM_DATA_DIR", str(data_dir))
    model, datamodule = G._vae("snis", False)
    assert type(model).__name__ == "VAE" and model.cuda_graphs is False
    assert type(model.density.prior).__name__ == "SNIS" and datamodule.batch_size == 128
