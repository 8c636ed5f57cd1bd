"""Layer 2: densities (``nn.Module``, no Lightning) with the contract of :mod:`.base`."""

from .base import Density
from .his import HIS
from .lars import LARS
from .normal import Normal
from .snis import SNIS, SNISParticles
from .trs import TRS

__all__ = ["Density", "Normal", "SNIS", "SNISParticles", "TRS", "LARS", "HIS"]

# latent-variable models of images (issue 4)
from .conv_hvae import ConvHVAE  # noqa: E402
from .latent import LatentVariableModel  # noqa: E402
from .networks import Rescaled  # noqa: E402
from .vae import VAE  # noqa: E402

__all__ += ["VAE", "ConvHVAE", "LatentVariableModel", "Rescaled"]

# EIMs as the variational family; IWAE (issue 5)
from .base import Particles  # noqa: E402
from .conditional_normal import ConditionalNormal  # noqa: E402
from .linear_gaussian import LinearGaussianModel  # noqa: E402
from .eim_posterior_vae import EIMPosteriorVAE, NegativeLogJoint  # noqa: E402
from .iwae import IWAE, LogImportanceWeight  # noqa: E402
from .semi_implicit import SemiImplicit  # noqa: E402

__all__ += ["Particles", "ConditionalNormal", "LinearGaussianModel", "EIMPosteriorVAE", "NegativeLogJoint", "IWAE", "LogImportanceWeight",
            "SemiImplicit"]

# sequential latent-variable models for FIVO / SMC (issue 5)
from .sequential import SequentialModel  # noqa: E402
from .lgssm import LinearGaussianSSM  # noqa: E402
from .vrnn import VRNN  # noqa: E402

__all__ += ["SequentialModel", "LinearGaussianSSM", "VRNN"]
