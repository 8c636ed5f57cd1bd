"""bench/images_vs_tf.py's table: the order of one window's runs and ratios paired within windows."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import images_vs_tf as B  # noqa: E402


def test_a_window_runs_each_case_once_his_right_after_the_gaussian_float32_and_tf_beside_ours():
    runs = B.schedule(with_tf=True, with_bf16=True)
    expected = {(p, k) for p in B.PRIORS for k in ("fp32", "bf16")} | {(p, "tf") for p, n in B.PRIORS.items() if n}
    assert len(runs) == len(set(runs)) and set(runs) == expected
    assert runs.index(("his", "fp32")) == runs.index(("gaussian", "fp32")) + 1
    for prior in B.PRIORS:
        if B.PRIORS[prior]:  # the TF run has one of our runs of the same prior on either side
            i = runs.index((prior, "tf"))
            assert runs[i - 1][0] == prior and runs[i + 1][0] == prior


@pytest.mark.parametrize("with_tf, with_bf16", [(False, True), (True, False), (False, False)])
def test_a_window_leaves_out_what_is_not_measured(with_tf, with_bf16):
    kinds = {kind for _, kind in B.schedule(with_tf, with_bf16)}
    assert kinds == {"fp32"} | ({"tf"} if with_tf else set()) | ({"bf16"} if with_bf16 else set())
    assert (
        B.schedule(with_tf, with_bf16).index(("his", "fp32"))
        == B.schedule(with_tf, with_bf16).index(("gaussian", "fp32")) + 1
    )


def test_ratios_are_medians_of_ratios_within_a_window_so_drift_between_windows_cancels(monkeypatch):
    """The machine runs at 1x, 2x and 0.5x in the three windows; within them HIS takes 1.4, 1.5
    and 1.9 times the N(0, I) step, and ours runs at 1.1x TF (1.43x in bf16). The HIS column is
    the median of 1.4, 1.5 and 1.9; a ratio of the medians would say 1.40 (100 / 71.4)."""
    per_window = len(B.schedule(with_tf=True, with_bf16=True))
    drift, his_ratio, done = [1.0, 2.0, 0.5], [1.4, 1.5, 1.9], []
    base = {"gaussian": 100.0, "his": 100.0, "snis": 80.0, "trs": 75.0, "lars": 70.0}

    def speed(prior: str) -> float:
        w = len(done) // per_window
        done.append(prior)
        return base[prior] * drift[w] / (his_ratio[w] if prior == "his" else 1.0)

    def ours(prior, steps, precision, warmup):
        return speed(prior) * (1.3 if precision == "bf16-mixed" else 1.0)

    def tf(name, steps):
        return speed({n: p for p, n in B.PRIORS.items()}[name]) / 1.1

    monkeypatch.setattr(B, "ours_steps_per_s", ours)
    monkeypatch.setattr(B, "tf_steps_per_s", tf)
    lines = B.table(windows=3, steps=10, with_tf=True, warmup=1, with_bf16=True)
    assert len(done) == 3 * per_window
    rows = {line.strip("| ").split(" | ")[0]: line.strip("| ").split(" | ")[1:] for line in lines[2:]}
    assert rows["his"][3:] == ["-", "-", "1.50"]
    for prior in ("gaussian", "snis", "trs", "lars"):
        assert rows[prior][3:5] == ["1.10", "1.43"]  # fp32 / TF and bf16 / TF, whatever the drift
    assert rows["gaussian"][:3] == ["100.0", "130.0", "90.9"] and rows["gaussian"][5] == "1.00"
