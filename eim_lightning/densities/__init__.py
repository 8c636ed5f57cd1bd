"""Layer 2: densities (``nn.Module``, no Lightning) with the contract of :mod:`.base`."""

from .base import Density, Particles
from .conditional_normal import ConditionalNormal
from .conv_hvae import ConvHVAE
from .eim_posterior_vae import EIMPosteriorVAE, NegativeLogJoint
from .his import HIS
from .iwae import IWAE, LogImportanceWeight
from .lars import LARS
from .latent import LatentVariableModel
from .lgssm import LinearGaussianSSM
from .linear_gaussian import LinearGaussianModel
from .networks import Rescaled
from .normal import Normal
from .semi_implicit import SemiImplicit
from .sequential import SequentialModel
from .snis import SNIS, SNISParticles
from .trs import TRS
from .vae import VAE
from .vrnn import VRNN

__all__ = [
    # the contract, the exact baseline and the energy-inspired models of the paper
    "Density",
    "Normal",
    "SNIS",
    "SNISParticles",
    "TRS",
    "LARS",
    "HIS",
    # latent-variable models of images (issue 4)
    "VAE",
    "ConvHVAE",
    "LatentVariableModel",
    "Rescaled",
    # EIMs as the variational family; IWAE (issue 5)
    "Particles",
    "ConditionalNormal",
    "LinearGaussianModel",
    "EIMPosteriorVAE",
    "NegativeLogJoint",
    "IWAE",
    "LogImportanceWeight",
    "SemiImplicit",
    # sequential latent-variable models for FIVO / SMC (issue 5)
    "SequentialModel",
    "LinearGaussianSSM",
    "VRNN",
]
