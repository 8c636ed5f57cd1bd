"""Layer 4: the ``eim`` command line (LightningCLI), also ``python -m eim_lightning``.

Usage::

    eim fit  --config configs/toy2d/snis_checkerboard.yaml [--trainer.max_steps 5000 ...]
    eim test --config configs/toy2d/snis_checkerboard.yaml --ckpt_path runs/.../last.ckpt
    eim fit  --model SNIS --data Toy2DDataModule --data.target two_rings --model.num_proposals 128
    eim fit  --help                      # every trainer option; models and data by class
    eim fit  --model SNIS --help         # every option of one model

Models are any LightningModule (``eim_lightning.SNIS``, ``TRS``, ``HIS``, ``LARS``,
``Gaussian``, ...; short names work), data any LightningDataModule (``datamodules.*``).
Optimisers are the modules' own (Adam with the paper's settings), set through ``--model.lr``.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import datamodules  # noqa: F401  (registers the datamodules for short names)

from . import callbacks, modules  # noqa: F401  (registers the modules and callbacks for short names)

__all__ = ["EIMCLI", "main"]


class EIMCLI(LightningCLI):
    """LightningCLI with eim-lightning's defaults: any module, any datamodule, the modules' own
    optimisers, and the run's config saved next to its logs."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)


def main(args=None) -> None:
    """Entry point of the ``eim`` console script."""
    EIMCLI(args=args)


if __name__ == "__main__":
    main()
