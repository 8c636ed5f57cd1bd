"""bench/lars_proposal_probe.py refuses step counts it cannot run, before it builds anything."""

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
