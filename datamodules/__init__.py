"""LightningDataModules for eim-lightning. Data knows no model: nothing here imports from
``eim_lightning``'s densities or modules."""

from .binarized import VARIANTS, BinarizedMNISTDataModule, ImageDataModule, ImageDataset, load_static_mnist, read_amat
from .correlated_gaussian import CorrelatedGaussianDataModule
from .idx import load_mnist_images, read_idx
from .jittered import JITTERED_DATASETS, JitteredMNISTDataModule
from .linear_gaussian import LinearGaussianDataModule
from .sequences import LinearGaussianSequenceDataModule, SequenceDataModule, SineSequenceDataModule
from .synthetic import SyntheticDataModule
from .toy2d import TARGETS, Checkerboard, NineGaussians, Target, Toy2DDataModule, TwoRings, make_target

__all__ = [
    # 2-D targets (the paper's section 5.1)
    "Toy2DDataModule",
    "Target",
    "NineGaussians",
    "TwoRings",
    "Checkerboard",
    "TARGETS",
    "make_target",
    # images (issue 4)
    "BinarizedMNISTDataModule",
    "JitteredMNISTDataModule",
    "ImageDataModule",
    "ImageDataset",
    "VARIANTS",
    "JITTERED_DATASETS",
    "read_amat",
    "read_idx",
    "load_static_mnist",
    "load_mnist_images",
    # synthetic data with exact oracles for the unification (issue 5)
    "SyntheticDataModule",
    "CorrelatedGaussianDataModule",
    "LinearGaussianDataModule",
    # synthetic sequences for FIVO / SMC (issue 5)
    "SequenceDataModule",
    "LinearGaussianSequenceDataModule",
    "SineSequenceDataModule",
]
