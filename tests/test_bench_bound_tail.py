"""bench/bound_tail.py: its statistics against hand-computed values, its clear errors, and a run on real data."""

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import bound_tail  # noqa: E402
from eim_lightning.cli import EIMCLI  # noqa: E402

JITTERED = REPO / "configs" / "images" / "jittered_mnist"


def test_summary_of_one_outlier_among_equal_bounds():
    values = torch.tensor([-1.0] * 99 + [-101.0])[torch.randperm(100)]
    n, mean, median, q01, q10, worst, rest, tail_part, worst_part = bound_tail.summary(values)
    assert (n, median, q01, q10, worst, rest) == (100, -1.0, -1.0, -1.0, -101.0, -1.0)
    assert mean == pytest.approx(-2.0)  # (99 * -1 - 101) / 100
    assert tail_part == pytest.approx(-1.01) and worst_part == pytest.approx(-1.01)


def test_summary_quantiles_are_order_statistics_and_the_tail_rounds_up():
    values = torch.arange(1.0, 11.0)  # 1..10: the worst 1% of 10 images is one image
    n, mean, median, q01, q10, worst, rest, tail_part, worst_part = bound_tail.summary(values.flip(0))
    assert (n, median, q01, q10, worst) == (10, 5.0, 1.0, 2.0, 1.0)
    assert mean == pytest.approx(5.5) and rest == pytest.approx(6.0)  # mean of 2..10
    assert tail_part == pytest.approx(0.1) and worst_part == pytest.approx(0.1)


@pytest.mark.parametrize("argv, message", [
    (["--samples", "0"], "--samples must be a positive integer"),
    (["--images", "-1"], "--images must be a positive integer"),
    (["--ckpt_path", "no/such.ckpt"], "--ckpt_path no/such.ckpt is not a file"),
])  # fmt: skip
def test_bad_options_are_a_clear_error(argv, message, capsys, tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.touch()
    base = ["--config", str(JITTERED / "vae_gaussian_decoder.yaml"), "--ckpt_path", str(ckpt)]
    with pytest.raises(SystemExit) as exit_info:
        bound_tail.main(base + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("config, proposal, message", [
    ("vae_gaussian_decoder.yaml", True, "--proposal: VAE"),
    ("lars_vae_proposal.yaml", False, "LARS is not a latent-variable model, so it has no IWAE bound to score; "
     "score its proposal with --proposal"),
])  # fmt: skip
def test_a_model_without_an_iwae_bound_is_a_clear_error(config, proposal, message, capsys, tmp_path, data_dir):
    ckpt = tmp_path / "last.ckpt"
    ckpt.touch()  # not read: the error comes first
    argv = ["--config", str(JITTERED / config), "--ckpt_path", str(ckpt)] + (["--proposal"] if proposal else [])
    with pytest.raises(SystemExit) as exit_info:
        bound_tail.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_scores_a_lars_proposal_on_real_test_and_training_images(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("EIM_DATA_DIR", str(data_dir))
    config = JITTERED / "lars_vae_proposal.yaml"
    cli = EIMCLI(args=["--config", str(config), f"--data.init_args.root={data_dir}"], run=False)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": cli.model.state_dict(), "global_step": 1234}, ckpt)
    out = tmp_path / "tail.md"
    argv = ["--config", str(config), "--ckpt_path", str(ckpt), "--proposal", "--images", "6", "--samples", "2"]
    bound_tail.main([*argv, "--batch", "4", "--output", str(out)])
    text = out.read_text()
    assert text.startswith("# Where a test mean comes from")
    assert "## jittered_mnist/lars_vae_proposal, its proposal after 1,234 steps: `" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| test ", "| train "))]
    assert [(r[0], r[1]) for r in rows] == [("| test", "6"), ("| train", "6")]
    for row in rows:
        mean, median, worst, rest, tail_part = (float(row[i]) for i in (2, 3, 6, 7, 8))
        assert worst <= median and worst <= mean < 0  # untrained: a density on the 0-256 scale, far below 0
        assert tail_part == pytest.approx(worst / 6, abs=0.01)  # the worst 1% of 6 images is the worst one
        assert mean == pytest.approx(tail_part + rest * 5 / 6, abs=0.02) and rest >= mean
