"""Layer 3: LightningModules, each a thin wrapper of a layer-2 density over the shared mixin."""

from .conv_hvae import ConvHVAE
from .cpc import CPC, SeparableCritic
from .eim_posterior_vae import EIMPosteriorVAE
from .fivo import FIVO
from .gaussian import Gaussian
from .his import HIS
from .iwae import IWAE
from .lars import LARS
from .mixin import BoundEstimatorMixin
from .ranking_nce import RankingNCE
from .snis import SNIS
from .trs import TRS
from .vae import VAE

__all__ = [
    # energy-inspired models of data and the exact baseline, over the shared mixin
    "BoundEstimatorMixin",
    "SNIS",
    "TRS",
    "HIS",
    "LARS",
    "Gaussian",
    # VAEs with any prior (issue 4)
    "VAE",
    "ConvHVAE",
    # the unification: EIM posteriors, IWAE, ranking NCE, CPC (issue 5)
    "EIMPosteriorVAE",
    "IWAE",
    "RankingNCE",
    "CPC",
    "SeparableCritic",
    # FIVO / SMC on sequential models (issue 5)
    "FIVO",
]
