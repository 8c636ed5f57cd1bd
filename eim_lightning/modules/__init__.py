"""Layer 3: LightningModules, each a thin wrapper of a layer-2 density over the shared mixin."""

from .gaussian import Gaussian
from .his import HIS
from .lars import LARS
from .mixin import BoundEstimatorMixin
from .snis import SNIS
from .trs import TRS

__all__ = ["BoundEstimatorMixin", "SNIS", "TRS", "HIS", "LARS", "Gaussian"]

# VAEs with any prior (issue 4)
from .conv_hvae import ConvHVAE  # noqa: E402
from .vae import VAE  # noqa: E402

__all__ += ["VAE", "ConvHVAE"]
