"""bench/mnist_results.py's table of all rows (wall time, with the CPU time beside it where the record has it)
and its table of the jittered rows at 50,000 steps by seed."""

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


def test_the_jittered_table_has_a_column_per_seed_and_the_mean_of_rows_with_several(tmp_path, monkeypatch):
    def jittered(row, seed, nll, extra=""):
        command = f"python bench/reproduce.py jittered_mnist/{row} --steps 50000 --seed {seed}" + extra
        return _record(row, dataset="jittered_mnist", steps=50_000, seed=seed, test_value=-nll, command=command)

    clip = " -- --trainer.gradient_clip_val=50000"
    rows = [
        jittered("vae_gaussian_decoder", 0, 1780.0, clip),
        jittered("vae_gaussian_decoder", 1, 1790.0, clip),
        jittered("vae_gaussian_decoder", 0, 2215.0),
        jittered("snis_vae_proposal", 1, 1770.5),
        _record("vae_snis_prior", steps=50_000),  # not jittered: not in the table
    ]
    jsonl = tmp_path / "results_images.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(mnist_results, "JSONL", jsonl)
    lines = mnist_results.report().split("## Jittered MNIST and Fashion-MNIST at 50,000 steps, by seed")[1]
    lines = lines.split("\n## ")[0].splitlines()
    assert "| jittered_mnist | model | seed 0 | seed 1 | mean |" in lines
    assert "|  | vae_gaussian_decoder (`--trainer.gradient_clip_val=50000`) | 1780.00 | 1790.00 | 1785.00 |" in lines
    assert "|  | vae_gaussian_decoder | 2215.00 |  |  |" in lines
    assert "|  | snis_vae_proposal |  | 1770.50 |  |" in lines
    assert not any("vae_snis_prior" in line or "jittered_fashion" in line for line in lines)
