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

import gc

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import datamodules  # noqa: F401  (registers the datamodules for short names)

from . import callbacks, modules  # noqa: F401  (registers the modules and callbacks for short names)

__all__ = ["EIMCLI", "main", "freeze_imported_objects"]


class EIMCLI(LightningCLI):
    """LightningCLI with eim-lightning's defaults: any module, any datamodule, the modules' own
    optimisers, and the run's config saved next to its logs."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)


def freeze_imported_objects() -> None:
    """Move every object alive now into the garbage collector's permanent generation
    (``gc.freeze``), for a command line's process once its imports are done.

    Importing torch and Lightning makes millions of objects that live until the process ends;
    every full collection walks them all, and so do the interpreter's collections at exit. Frozen,
    they are skipped: ending the process after ``import eim_lightning.cli`` took about a second
    and a half less on 2 cores (the "exit" column of ``bench/process_breakdown.py``). Objects
    made later are collected as usual.
    """
    gc.freeze()


def main(args=None) -> None:
    """Entry point of the ``eim`` console script."""
    freeze_imported_objects()
    EIMCLI(args=args)


if __name__ == "__main__":
    main()
