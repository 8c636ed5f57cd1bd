"""bench/tb_scalars.py reads back what a TensorBoard writer logged, across resumed versions."""

import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import tb_scalars  # noqa: E402


def _log(folder, values):
    writer = SummaryWriter(str(folder))
    for tag, step, value in values:
        writer.add_scalar(tag, value, step)
    writer.close()


def test_scalars_of_a_resumed_run_are_merged_and_tabled(tmp_path, capsys):
    _log(tmp_path / "logs" / "version_0", [("val/bound", 9, -3.0), ("train/elbo", 9, -2.5), ("val/bound", 19, -2.0)])
    _log(tmp_path / "logs" / "version_1", [("val/bound", 19, -1.5), ("val/bound", 29, -1.25)])  # resumed at 10
    tb_scalars.main([str(tmp_path / "logs"), "--tags", "val/bound", "train/elbo"])
    assert capsys.readouterr().out.splitlines() == [
        "| step | val/bound | train/elbo |",
        "|---|---|---|",
        "| 9 | -3.00 | -2.50 |",
        "| 19 | -1.50 |  |",
        "| 29 | -1.25 |  |",
    ]
    tb_scalars.main([str(tmp_path / "logs"), "--tags", "val/bound", "--every", "20"])
    assert capsys.readouterr().out.splitlines()[2:] == ["| 19 | -1.50 |"]


@pytest.mark.parametrize("extra, message", [
    (["--tags", "val/nothing"], "no scalars ['val/nothing']"),
    (["--tags", "val/bound", "--every", "0"], "--every must be a positive number of steps"),
])  # fmt: skip
def test_bad_input_is_a_clear_error(extra, message, tmp_path, capsys):
    _log(tmp_path, [("val/bound", 9, -3.0)])
    with pytest.raises(SystemExit) as exit_info:
        tb_scalars.main([str(tmp_path), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
