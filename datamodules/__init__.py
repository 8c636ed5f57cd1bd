"""LightningDataModules for eim-lightning. Data knows no model: nothing here imports from
``eim_lightning``'s densities or modules."""

from .toy2d import TARGETS, Checkerboard, NineGaussians, Target, Toy2DDataModule, TwoRings, make_target

__all__ = ["Toy2DDataModule", "Target", "NineGaussians", "TwoRings", "Checkerboard", "TARGETS", "make_target"]
