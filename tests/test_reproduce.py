"""bench/reproduce.py, the runner of the results pages, on a tiny 2-D setting: one record per
finished row with the documented fields, a recorded row skipped, and a run killed (SIGKILL) in
the middle of training, resumed by the same command, or a finished run continued to more steps,
ending with the record of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ROW = "toy2d/snis_nine_gaussians"


def _command(tmp_path, runs, steps, row=ROW):
    return [
        sys.executable,
        str(REPO / "bench" / "reproduce.py"),
        row,
        "--steps",
        str(steps),
        "--points",
        "2000",
        "--elbo-every",
        "10",
        "--checkpoint-minutes",
        "0.001",
        "--runs",
        str(tmp_path / runs),
        "--docs",
        str(tmp_path / f"{runs}-docs"),
        "--",
        "--data.init_args.test_size=500",
    ]


def _run(command):
    out = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def _records(tmp_path, runs):
    return [json.loads(line) for line in (tmp_path / f"{runs}-docs" / "results_toy2d.jsonl").read_text().splitlines()]


def test_a_row_is_recorded_once_with_its_fields(tmp_path):
    command = _command(tmp_path, "runs", 20)
    _run(command)
    (record,) = _records(tmp_path, "runs")
    assert record["dataset"] == "toy2d" and record["row"] == "snis_nine_gaussians"
    assert record["steps"] == 20 and record["seed"] == 0 and record["K"] == 128
    assert record["train_elbo"][0][0] == 0 and [s for s, _ in record["train_elbo"]] == [0, 10]
    assert record["test_points"] == 500 and record["num_test_samples"] == 1000
    assert record["single_replica_points"] == 2000 and record["single_replica_batch"] == 1000
    assert (
        record["metric"] == "test/bound" and -5 < record["test_value"] < 0 and -5 < record["single_replica_value"] < 0
    )
    assert record["train_hours"] > 0 and record["test_minutes"] > 0 and record["machine"] and record["commit"]
    assert record["train_cpu_hours"] > 0 and record["test_cpu_minutes"] > 0 and record["trained_on"] == [[0, "cpu"]]
    assert record["command"] == (
        f"python bench/reproduce.py {ROW} --steps 20 --seed 0 --K 128 --points 2000 -- --data.init_args.test_size=500"
    )
    assert str(tmp_path) not in json.dumps(record) and "/work" not in json.dumps(record)  # no absolute paths
    assert "skipped" in _run(command)
    assert len(_records(tmp_path, "runs")) == 1


def test_a_lars_row_records_the_fraction_of_saturated_acceptances_over_training(tmp_path):
    command = _command(tmp_path, "lars", 20, row="toy2d/lars_nine_gaussians")
    command[command.index("--") + 1 :] = [
        "--data.init_args.test_size=200",
        "--model.init_args.num_z_eval_samples=10000",
    ]
    _run(command)
    (record,) = _records(tmp_path, "lars")
    steps = [s for s, _ in record["saturated_fraction"]]
    assert steps == [0, 10] and all(0.0 <= f <= 1.0 for _, f in record["saturated_fraction"])


def test_a_row_records_its_validation_curve(tmp_path):
    command = _command(tmp_path, "val", 20)
    command.append("--trainer.val_check_interval=10")
    _run(command)
    (record,) = _records(tmp_path, "val")
    assert record["validation_metric"] == "val/bound"
    assert [s for s, _ in record["validation"]] == [10, 20]  # after each validation run, not the sanity check
    assert all(-5 < value < 0 for _, value in record["validation"])


@pytest.mark.slow
def test_killed_and_continued_runs_end_with_the_record_of_an_uninterrupted_run(tmp_path):
    steps = 1000
    command = _command(tmp_path, "killed", steps)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list((tmp_path / "killed").rglob("last.ckpt")) and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed-docs").exists()
    _run(command)  # resumes from the last checkpoint
    _run(_command(tmp_path, "continued", steps // 2))
    _run(_command(tmp_path, "continued", steps))  # continues the finished run of steps // 2
    _run(_command(tmp_path, "uninterrupted", steps))
    (killed,) = _records(tmp_path, "killed")
    (_, continued) = _records(tmp_path, "continued")
    (uninterrupted,) = _records(tmp_path, "uninterrupted")
    assert len(killed["resumed_at_steps"]) == 1 and 0 < killed["resumed_at_steps"][0] < steps
    assert continued["resumed_at_steps"] == [steps // 2] and uninterrupted["resumed_at_steps"] == []
    assert continued["train_cpu_hours"] > 0  # carried across the resume in the checkpoint
    assert killed["trained_on"] == [[0, "cpu"], [killed["resumed_at_steps"][0], "cpu"]]
    assert [s for s, _ in uninterrupted["validation"]] == [steps]
    for key in ("steps", "train_elbo", "validation", "test_value", "single_replica_value"):
        assert killed[key] == continued[key] == uninterrupted[key], key


def test_the_run_log_counts_a_pause_in_wall_time_and_not_in_cpu_time(monkeypatch):
    """RunLog's two clocks (faked): a process paused (SIGSTOP) for 100 s of its 130 s used 30 s of CPU; a
    checkpoint carries both; one from before CPU time was kept leaves it unknown (None), not too small
    (and its device and validation curve unknown too)."""
    sys.path.insert(0, str(REPO / "bench"))
    import reproduce

    wall, cpu = [1000.0], [5.0]
    monkeypatch.setattr(reproduce.time, "time", lambda: wall[0])
    monkeypatch.setattr(reproduce.time, "process_time", lambda: cpu[0])
    trainer = type("Trainer", (), {"global_step": 0})()
    log = reproduce.RunLog(Path("unused.ckpt"), minutes=10, every=10)
    module = type("Module", (), {"device": torch.device("cpu")})()
    log.on_train_start(trainer, module)
    wall[0], cpu[0] = 1130.0, 35.0
    assert log.train_seconds() == 130 and log.train_cpu_seconds() == 30
    state = log.state_dict()
    log.on_train_end(trainer, None)
    assert (log.train_seconds(), log.train_cpu_seconds()) == (130, 30)

    resumed = reproduce.RunLog(Path("unused.ckpt"), minutes=10, every=10)
    resumed.load_state_dict(state)
    resumed.on_train_start(type("Trainer", (), {"global_step": 500})(), module)
    wall[0], cpu[0] = 1140.0, 40.0
    assert resumed.train_seconds() == 140 and resumed.train_cpu_seconds() == 35

    old = reproduce.RunLog(Path("unused.ckpt"), minutes=10, every=10)
    assert resumed.trained_on == [[0, "cpu"], [500, "cpu"]]
    kept_later = ("cpu_seconds", "trained_on", "validation")
    old.load_state_dict({key: value for key, value in state.items() if key not in kept_later})
    old.on_train_start(trainer, module)
    assert old.train_cpu_seconds() is None and old.train_seconds() == 130
    assert old.trained_on == [[0, None], [0, "cpu"]]  # a part whose device its checkpoint did not keep
    assert old.validation == []  # nor its validation curve


@pytest.mark.parametrize("steps_per_block", [1, 10])
def test_the_run_log_records_every_nth_steps_loss_without_a_per_step_hook(tmp_path, steps_per_block):
    """RunLog reads each step's loss from the module's outputs, so the engine keeps no per-step hook
    (which would rule a CUDA graph out): the losses of steps 0, 7, 14, ... equal those a per-step hook
    sees, inside blocks of steps and in a last block cut short at max_steps."""
    import lightning as L

    from conftest import quiet_trainer
    from datamodules import Toy2DDataModule
    from eim_lightning import SNIS

    sys.path.insert(0, str(REPO / "bench"))
    import reproduce

    class PerStep(L.Callback):
        def __init__(self) -> None:
            self.elbo = []

        def on_before_backward(self, trainer, pl_module, loss) -> None:
            if trainer.global_step % 7 == 0:
                self.elbo.append([trainer.global_step, -float(loss.detach())])

    def fit(callback):
        L.seed_everything(0, verbose=False)
        model = SNIS(num_proposals=16, steps_per_block=steps_per_block)
        quiet_trainer(tmp_path, max_steps=45, callbacks=[callback]).fit(
            model, datamodule=Toy2DDataModule("two_rings", steps_per_epoch=50)
        )
        return model

    reference = PerStep()
    fit(reference)
    log = reproduce.RunLog(tmp_path / "unused.ckpt", minutes=1e6, every=7)
    model = fit(log)
    assert model._step_hooks == [] and model._block_size == steps_per_block
    assert [s for s, _ in log.elbo] == [0, 7, 14, 21, 28, 35, 42]
    assert log.elbo == reference.elbo
