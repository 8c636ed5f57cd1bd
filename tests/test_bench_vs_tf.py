"""bench/vs_tf.py's page: a rerun replaces its table and keeps the replaced table's ratios, with the date and
machine they were measured on, as a line under "Earlier runs"."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import vs_tf  # noqa: E402


def _write(page: Path, key: str, rows: list[tuple[str, str]], machine: str, date: str = "2026-12-01") -> None:
    """Write a table as :func:`vs_tf.main` would (its title: the key and a suffix)."""
    section = [
        f"{key}, 2-D",
        "",
        "| model | size | ours (ms/step) | ratio to TF script | ratio of the medians |",
        "|---|---|---|---|---|",
        *(f"| {model} | K = 1024 | 0.7 | {ratio} | 9.99 |" for model, ratio in rows),
        "",
        f"Measured {date} on {machine}; both sides at their default thread counts.",
        "",
    ]
    vs_tf.write_sections(page, {key: section})


def test_a_replaced_table_leaves_its_ratios_under_earlier_runs(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    step = vs_tf.STEP.removeprefix("## ") + ", 2-D"
    _write(page, vs_tf.STEP, [("SNIS", "0.98"), ("HIS", "1.84")], "AMD EPYC (AVX2), 2 cores")
    assert vs_tf.HISTORY not in page.read_text()  # nothing replaced yet

    _write(page, vs_tf.PROCESS, [("SNIS", "0.88")], "Old CPU")
    _write(page, vs_tf.STEP, [("SNIS", "1.26"), ("HIS", "1.57")], "AMD EPYC (AVX512, bf16)")
    text = page.read_text()
    assert "| SNIS | K = 1024 | 0.7 | 1.26 |" in text and "| SNIS | K = 1024 | 0.7 | 0.98 |" not in text
    assert "| SNIS | K = 1024 | 0.7 | 0.88 |" in text  # the other table stays
    first = f"- {step}, measured 2026-12-01 on AMD EPYC (AVX2), 2 cores: SNIS 0.98, HIS 1.84."
    assert first in text

    _write(page, vs_tf.STEP, [("SNIS", "1.10"), ("HIS", "1.50")], "X", date="2026-12-03")
    history = page.read_text().split(vs_tf.HISTORY)[1]
    second = f"- {step}, measured 2026-12-01 on AMD EPYC (AVX512, bf16): SNIS 1.26, HIS 1.57."
    assert history.index(second) < history.index(first)  # newest first, older lines kept
    assert "| SNIS | K = 1024 | 0.7 | 1.10 |" in page.read_text()


def test_a_section_without_a_table_leaves_no_line():
    assert vs_tf.ratio_summary("") is None
    assert vs_tf.ratio_summary(f"{vs_tf.STEP}\n\nno table here\n") is None


def test_the_process_table_gives_the_ratio_after_start_up_and_the_start_up_row(monkeypatch):
    """Each model's ratio with and without each side's start-up, measured in the same window; the
    last row: the start-ups alone over all windows (medians and window ratios)."""
    totals = {"ours": iter([10.0, 12.0] * 4), "tf": iter([9.0, 9.0] * 4)}
    starts = {"ours": iter([5.0, 4.0] * 4), "tf": iter([3.0, 3.0] * 4)}
    monkeypatch.setattr(vs_tf, "ours_process_s", lambda algo, steps: next(totals["ours"]))
    monkeypatch.setattr(vs_tf, "tf_script", lambda algo, steps, target: (next(totals["tf"]), 0.0))
    monkeypatch.setattr(vs_tf, "ours_startup_s", lambda: next(starts["ours"]))
    monkeypatch.setattr(vs_tf, "tf_startup_s", lambda: next(starts["tf"]))
    rows = vs_tf.process_table(windows=2, steps=100, with_tf=True)
    assert len(rows) == len(vs_tf.ALGOS) + 1
    # windows: 9/10 and 9/12 (median 0.825); after start-up (9-3)/(10-5) = 1.2 and (9-3)/(12-4) = 0.75
    assert rows[0] == "| SNIS | K = 1024 | 11.0 | 9.0 | 0.82 | 0.82 | 0.97 |"
    assert rows[-1] == "| start-up only | - | 4.5 | 3.0 | 0.68 | 0.67 | - |"


def test_without_tf_the_process_table_holds_ours_alone(monkeypatch):
    monkeypatch.setattr(vs_tf, "ours_process_s", lambda algo, steps: 10.0)
    monkeypatch.setattr(vs_tf, "ours_startup_s", lambda: 4.0)
    rows = vs_tf.process_table(windows=1, steps=100, with_tf=False)
    assert rows[0] == "| SNIS | K = 1024 | 10.0 | n/a | n/a | n/a | n/a |"
    assert rows[-1] == "| start-up only | - | 4.0 | n/a | n/a | n/a | - |"
