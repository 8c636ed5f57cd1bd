"""bench/lars_proposal_probe.py refuses step counts and configs it cannot run, before it builds anything."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import lars_proposal_probe  # noqa: E402


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--every", "0"], ["--every", "-5"]])
def test_non_positive_steps_are_a_clear_error(argv, capsys, monkeypatch):
    monkeypatch.setattr(lars_proposal_probe, "run", lambda *a: pytest.fail("trained despite bad input"))
    with pytest.raises(SystemExit) as exit_info:
        lars_proposal_probe.main(argv)
    assert exit_info.value.code == 2
    assert "must be a positive number of steps" in capsys.readouterr().err


def test_a_proposal_without_configs_for_the_dataset_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(lars_proposal_probe, "run", lambda *a: pytest.fail("trained despite bad input"))
    with pytest.raises(SystemExit) as exit_info:
        lars_proposal_probe.main(["--dataset", "jittered_mnist", "--proposal", "convhvae"])
    assert exit_info.value.code == 2
    assert "no convhvae proposal config for jittered_mnist" in capsys.readouterr().err


def test_each_variant_of_each_dataset_names_a_shipped_config(monkeypatch):
    trained = []

    def run(config, *args):
        trained.append(config)
        return [(0, 0.0, None)], 1.0

    monkeypatch.setattr(lars_proposal_probe, "run", run)
    for dataset in ("static_mnist", "jittered_mnist", "jittered_fashion"):
        lars_proposal_probe.main(["--dataset", dataset, "--proposal", "vae", "--variants", "alone", "lars"])
    assert [c.relative_to(c.parents[1]).as_posix() for c in trained] == [
        "static_mnist/vae_gaussian_prior.yaml",
        "static_mnist/lars_vae_proposal.yaml",
        "jittered_mnist/vae_gaussian_decoder.yaml",
        "jittered_mnist/lars_vae_proposal.yaml",
        "jittered_fashion/vae_gaussian_decoder.yaml",
        "jittered_fashion/lars_vae_proposal.yaml",
    ]
