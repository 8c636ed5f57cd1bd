"""Layer 4: every YAML config parses, instantiates and trains; the console scripts work."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eim_lightning.cli import EIMCLI
from eim_lightning.demo import run as run_demo

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
TOY2D = sorted((REPO / "configs" / "toy2d").glob("*.yaml"))
IMAGES = REPO / "configs" / "images"


def test_every_toy2d_combination_has_a_config():
    names = {p.stem for p in TOY2D}
    for algo in ("snis", "trs", "his", "lars", "gaussian"):
        for target in ("checkerboard", "nine_gaussians", "two_rings"):
            assert f"{algo}_{target}" in names


def test_toy2d_configs_carry_the_papers_settings():
    expected = {"snis": ("num_proposals", 1024), "trs": ("T", 1024), "lars": ("T", 1024), "his": ("T", 5)}
    for path in TOY2D:
        cfg = yaml.safe_load(path.read_text())
        algo = path.stem.split("_")[0]
        args = cfg["model"]["init_args"]
        assert args["lr"] == 3e-4 and cfg["data"]["init_args"]["batch_size"] == 128
        if algo in expected:
            key, value = expected[algo]
            assert args[key] == value, path
            assert args["hidden_sizes"] == [20, 20]
        if algo == "lars":
            assert args["num_z_samples"] == 1024


def _cap_z_samples(node, cap: int = 2000) -> None:
    """Cap every LARS Z-sample count in a config (validation/test estimates) at ``cap``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("num_z_val_samples", "num_z_eval_samples") and isinstance(value, int):
                node[key] = min(value, cap)
            else:
                _cap_z_samples(value, cap)
    elif isinstance(node, list):
        for item in node:
            _cap_z_samples(item, cap)


def _image_data_overrides(path: Path, cfg: dict, tmp_path: Path) -> list[str]:
    """Image configs train on a small slice of the real data (static MNIST, Fashion-MNIST from
    EIM_DATA_DIR, default ../shared/data) or, for grayscale MNIST (which exists nowhere
    offline), on small IDX files written here."""
    from conftest import real_data_dir
    from test_datamodules_images import tiny_images, write_tiny

    args = cfg["data"]["init_args"]
    if args.get("variant") == "dynamic" or args.get("dataset") == "mnist":
        root = write_tiny(tmp_path / "data", tiny_images(120, 1), tiny_images(20, 2))
        extra = ["--data.init_args.val_size=20"]
    else:
        root = real_data_dir()
        extra = []
    return [
        f"--data.init_args.root={root}",
        "--data.init_args.train_subset=96",
        "--data.init_args.val_subset=8",
        "--data.init_args.batch_size=32",
        "--data.init_args.eval_batch_size=8",
        *extra,
    ]


# image configs: one of each kind in the fast tier, the other ~40 (a few seconds each) are slow
FAST_IMAGES = {
    "static_mnist/vae_gaussian_prior",
    "static_mnist/vae_snis_prior",
    "static_mnist/vae_lars_prior",
    "static_mnist/convhvae_gaussian_prior",
    "static_mnist/snis_vae_proposal",
    "dynamic_mnist/vae_his_prior",
    "jittered_fashion/vae_gaussian_decoder",
}


def _config_param(path: Path):
    name = str(path.relative_to(REPO / "configs"))
    slow = path.is_relative_to(IMAGES) and name.removeprefix("images/").removesuffix(".yaml") not in FAST_IMAGES
    return pytest.param(path, id=name, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("path", [_config_param(p) for p in CONFIGS])
def test_config_instantiates_and_trains_a_few_steps(path, tmp_path):
    cfg = yaml.safe_load(path.read_text())
    for callback in cfg.get("trainer", {}).get("callbacks", []):
        if callback["class_path"].endswith("DensityImageCallback"):  # keep it, but cheap
            callback["init_args"].update(num_samples=256, grid_size=16)
        if callback["class_path"].endswith("ImageSampleCallback"):
            callback["init_args"].update(num_samples=4, num_reconstructions=4)
    _cap_z_samples(cfg)
    small = tmp_path / path.name
    small.write_text(yaml.safe_dump(cfg))
    overrides = [
        "--trainer.max_steps=3",
        "--trainer.val_check_interval=3",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    if "logger" in cfg.get("trainer", {}):
        overrides.append(f"--trainer.logger.init_args.save_dir={tmp_path}")
    if path.is_relative_to(IMAGES):
        overrides += _image_data_overrides(path, cfg, tmp_path)
    cli = EIMCLI(args=["--config", str(small), *overrides], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    value = cli.trainer.callback_metrics[f"val/{cli.model.bound_name}"]
    assert math.isfinite(value.item())


def _run(*args, timeout=600):
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_eim_fit_help_documents_the_options():
    out = _run(sys.executable, "-m", "eim_lightning", "fit", "--help")
    assert out.returncode == 0, out.stderr
    assert "--trainer.max_steps" in out.stdout and "--model" in out.stdout and "--data" in out.stdout
    out = _run(sys.executable, "-m", "eim_lightning", "fit", "--model.help", "SNIS")
    assert out.returncode == 0, out.stderr
    for option in ("--model.num_proposals", "--model.lr", "--model.num_test_samples", "--model.energy"):
        assert option in out.stdout, option


def test_eim_console_script_is_installed():
    scripts = Path(sys.executable).parent
    out = _run(str(scripts / "eim"), "--help")
    assert out.returncode == 0 and "fit" in out.stdout


@pytest.mark.slow
def test_fit_then_test_a_checkpoint_from_the_command_line(tmp_path):
    config = str(REPO / "configs" / "toy2d" / "trs_two_rings.yaml")
    common = [f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    fit = _run(
        sys.executable,
        "-m",
        "eim_lightning",
        "fit",
        "--config",
        config,
        "--trainer.max_steps=20",
        "--trainer.val_check_interval=10",
        "--model.T=64",
        *common,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = tmp_path / "trs_two_rings" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    assert (tmp_path / "trs_two_rings" / "version_0" / "images" / "final.png").exists()
    test = _run(
        sys.executable,
        "-m",
        "eim_lightning",
        "test",
        "--config",
        config,
        "--ckpt_path",
        str(ckpt),
        "--model.T=64",
        "--model.num_test_samples=10",
        *common,
    )
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/bound" in test.stdout


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_its_bound(tmp_path, capsys):
    result = run_demo(["--steps", "40", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert math.isfinite(result["test_bound"])
    assert result["true_expected_log_likelihood"] == pytest.approx(-2.0794, abs=1e-4)
    # E_p[log N(x; 0, I)] on the checkerboard is -log(2 pi) - E|x|^2 / 2 = -log(2 pi) - 4/3
    assert result["proposal_expected_log_likelihood"] == pytest.approx(-math.log(2 * math.pi) - 4 / 3, abs=0.01)
    assert "-2.0794" in out and "TensorBoard logs" in out
    images = list(tmp_path.rglob("final.png"))
    assert images and any(tmp_path.rglob("events.out.tfevents.*"))


_FREEZE_PROBE = """
import gc, sys
import eim_lightning.cli as cli
before = gc.get_freeze_count()
sys.argv = ["eim", "--help"]
try:
    cli.main()
except SystemExit:
    pass
frozen = gc.get_freeze_count()
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after the freeze
del a, b
print("RESULT", before, frozen, gc.collect())
"""


def test_the_command_line_freezes_the_imported_objects_and_still_collects_new_cycles():
    """``eim`` moves what the imports made out of the collector's reach (freeze_imported_objects);
    cycles made afterwards are still collected."""
    out = _run(sys.executable, "-c", _FREEZE_PROBE, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, frozen, collected = map(int, out.stdout.split("RESULT")[1].split())
    assert before == 0
    assert frozen > 100_000  # torch and Lightning's objects
    assert collected >= 2  # the two nodes of the new cycle
