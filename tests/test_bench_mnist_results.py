"""bench/mnist_results.py's table of all rows: wall time, with the CPU time beside it where the record has it."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import mnist_results  # noqa: E402


def _record(row: str, **extra) -> dict:
    return {
        "dataset": "static_mnist",
        "row": row,
        "steps": 10000,
        "seed": 0,
        "train_hours": 0.5,
        "test_points": 10000,
        "test_value": -90.0,
        "test_minutes": 12.0,
        "command": f"python bench/reproduce.py static_mnist/{row} --steps 10000 --seed 0",
        **extra,
    }


def test_the_table_shows_cpu_hours_beside_wall_hours_where_recorded(tmp_path, monkeypatch):
    jsonl = tmp_path / "results_images.jsonl"
    rows = [_record("vae_snis_prior", train_cpu_hours=0.4), _record("vae_trs_prior")]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(mnist_results, "JSONL", jsonl)
    lines = mnist_results.report().splitlines()
    snis = next(line for line in lines if line.startswith("| static_mnist | vae_snis_prior |"))
    trs = next(line for line in lines if line.startswith("| static_mnist | vae_trs_prior |"))
    assert "| 0.50 (CPU 0.40) |" in snis
    assert "| 0.50 |" in trs and "CPU" not in trs
