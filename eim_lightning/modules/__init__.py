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

# the unification: EIM posteriors, IWAE, ranking NCE, CPC (issue 5)
from .cpc import CPC, SeparableCritic  # noqa: E402
from .eim_posterior_vae import EIMPosteriorVAE  # noqa: E402
from .iwae import IWAE  # noqa: E402
from .ranking_nce import RankingNCE  # noqa: E402

__all__ += ["EIMPosteriorVAE", "IWAE", "RankingNCE", "CPC", "SeparableCritic"]

# FIVO / SMC on sequential models (issue 5)
from .fivo import FIVO  # noqa: E402

__all__ += ["FIVO"]
