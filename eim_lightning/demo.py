"""Layer 4: ``eim-demo``, the main job on an embedded default.

Trains SNIS (K = 1024, energy MLP 20-20 tanh, N(0, I) proposal, Adam 3e-4, batch 128: the
paper's 2-D settings) on the checkerboard through the same LightningCLI as ``eim``, writes
density/sample images (PNG) and TensorBoard logs, evaluates the test bound with 1000 replicas
on 10,000 test points and prints it beside the target's true expected log-likelihood
(-log 8 = -2.0794) and the N(0, I) proposal's. The default length takes about three minutes
on two CPU cores::

    eim-demo                                   # defaults
    eim-demo --steps 40000 --target two_rings  # longer, another target
    eim-demo --algo trs                        # another EIM (snis, trs, his, lars, gaussian)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import EIMCLI, freeze_imported_objects
from .densities import Normal

__all__ = ["main", "run", "demo_config"]

MODELS = {
    "snis": ("eim_lightning.SNIS", {"num_proposals": 1024}),
    "trs": ("eim_lightning.TRS", {"T": 1024}),
    "his": ("eim_lightning.HIS", {"T": 5}),
    "lars": ("eim_lightning.LARS", {"T": 1024, "num_z_samples": 1024, "num_z_eval_samples": 10**7}),
    "gaussian": ("eim_lightning.Gaussian", {}),
}


def demo_config(algo: str, target: str, steps: int, output: str) -> dict:
    """The demo's LightningCLI config as a dict (the same schema as the YAML configs)."""
    class_path, init_args = MODELS[algo]
    return {
        "seed_everything": 0,
        "trainer": {
            "max_steps": steps,
            "val_check_interval": min(1000, steps),
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 50,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": output, "name": f"{algo}_{target}"},
            },
            "callbacks": [
                {
                    "class_path": "eim_lightning.callbacks.DensityImageCallback",
                    "init_args": {"every_n_steps": max(1, steps // 4)},
                },
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
            ],
        },
        "model": {"class_path": class_path, "init_args": {"data_dim": 2, **init_args}},
        "data": {
            "class_path": "datamodules.Toy2DDataModule",
            "init_args": {"target": target, "batch_size": 128, "steps_per_epoch": 1000},
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``eim-demo``."""
    freeze_imported_objects()
    run(argv)


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Run the demo and return the test bound and the reference log-likelihoods."""
    parser = argparse.ArgumentParser(prog="eim-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="snis", choices=sorted(MODELS))
    parser.add_argument("--target", default="checkerboard", choices=["checkerboard", "nine_gaussians", "two_rings"])
    parser.add_argument("--steps", type=int, default=25000, help="training steps (default: about 3 minutes on 2 cores)")
    parser.add_argument("--output", default="runs/demo", help="directory for TensorBoard logs, checkpoints and images")
    opts = parser.parse_args(argv)
    if opts.steps < 1:
        parser.error(f"--steps must be >= 1, got {opts.steps}")

    cli = EIMCLI(args=demo_config(opts.algo, opts.target, opts.steps, opts.output), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    key = f"test/{cli.model.bound_name}"
    target = cli.datamodule.target
    result = {
        "test_bound": float(metrics[key]),
        "true_expected_log_likelihood": target.expected_log_likelihood,
        "proposal_expected_log_likelihood": target.expected_log_prob(Normal(2).double().log_prob),
    }
    log_dir = Path(cli.trainer.log_dir)
    images = sorted((log_dir / "images").glob("*.png"))
    final = log_dir / "images" / "final.png"
    print()
    print(
        f"{opts.algo.upper()} on {opts.target}, {opts.steps} steps; mean over {cli.datamodule.test_size} test points:"
    )
    print(f"  model    {key:24s} {result['test_bound']:9.4f}  (1000-replica evaluation)")
    print(f"  target   E_p[log p(x)]            {result['true_expected_log_likelihood']:9.4f}  (the ceiling)")
    print(f"  proposal E_p[log N(x; 0, I)]      {result['proposal_expected_log_likelihood']:9.4f}")
    print(f"TensorBoard logs: {log_dir}   (tensorboard --logdir {opts.output})")
    if final.exists():
        print(f"Images: {final} (target density, model density, target and model samples; {len(images)} PNGs there)")
    print(f"Checkpoint: {log_dir / 'checkpoints' / 'last.ckpt'}")
    return result


if __name__ == "__main__":
    main()
