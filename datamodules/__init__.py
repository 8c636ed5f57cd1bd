"""LightningDataModules for eim-lightning. Data knows no model: nothing here imports from
``eim_lightning``'s densities or modules."""

from .binarized import VARIANTS, BinarizedMNISTDataModule, ImageDataModule, ImageDataset, load_static_mnist, read_amat
from .idx import load_mnist_images, read_idx
from .jittered import JITTERED_DATASETS, JitteredMNISTDataModule
from .toy2d import TARGETS, Checkerboard, NineGaussians, Target, Toy2DDataModule, TwoRings, make_target

__all__ = [
    "Toy2DDataModule",
    "Target",
    "NineGaussians",
    "TwoRings",
    "Checkerboard",
    "TARGETS",
    "make_target",
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
]

# synthetic data with exact oracles for the unification (issue 5)
from .correlated_gaussian import CorrelatedGaussianDataModule  # noqa: E402
from .linear_gaussian import LinearGaussianDataModule  # noqa: E402
from .synthetic import SyntheticDataModule  # noqa: E402

__all__ += ["SyntheticDataModule", "CorrelatedGaussianDataModule", "LinearGaussianDataModule"]

# synthetic sequences for FIVO / SMC (issue 5)
from .sequences import LinearGaussianSequenceDataModule, SequenceDataModule, SineSequenceDataModule  # noqa: E402

__all__ += ["SequenceDataModule", "LinearGaussianSequenceDataModule", "SineSequenceDataModule"]
