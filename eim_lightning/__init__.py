"""eim-lightning: energy-inspired models (Lawson, Tucker, Dai, Ranganath, NeurIPS 2019) in
PyTorch Lightning.

Layers (imports point down only): 1. pure math (:mod:`.ops`, :mod:`.bounds`,
:mod:`.integrators`); 2. densities (:mod:`.densities`, :mod:`.nn`); 3. LightningModules
(:mod:`.modules`, re-exported here); 4. entry points (:mod:`.cli`, :mod:`.callbacks`, :mod:`.demo`).
"""

import logging

from .modules import (
    CPC,
    FIVO,
    HIS,
    IWAE,
    LARS,
    SNIS,
    TRS,
    VAE,
    BoundEstimatorMixin,
    ConvHVAE,
    EIMPosteriorVAE,
    Gaussian,
    RankingNCE,
)

__version__ = "0.1.0"

__all__ = [
    # energy-inspired models of data (the paper's section 5.1) and the exact baseline
    "BoundEstimatorMixin",
    "SNIS",
    "TRS",
    "HIS",
    "LARS",
    "Gaussian",
    "__version__",
    # VAEs with any prior (issue 4)
    "VAE",
    "ConvHVAE",
    # the unification: EIM posteriors, IWAE, ranking NCE, CPC (issue 5)
    "EIMPosteriorVAE",
    "IWAE",
    "RankingNCE",
    "CPC",
    # FIVO / SMC on sequential models (issue 5)
    "FIVO",
]

# densities report costly one-off work (LARS's evaluation Z) at INFO through the standard logging
# module; show it as Lightning shows its own messages (to stderr unless logging is configured)
_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False
