"""eim-lightning: energy-inspired models (Lawson, Tucker, Dai, Ranganath, NeurIPS 2019) in
PyTorch Lightning.

Layers (imports point down only): 1. pure math (:mod:`.ops`, :mod:`.bounds`,
:mod:`.integrators`); 2. densities (:mod:`.densities`, :mod:`.nn`); 3. LightningModules
(:mod:`.modules`, re-exported here); 4. entry points (:mod:`.cli`, :mod:`.callbacks`, :mod:`.demo`).
"""

import logging

from .modules import HIS, LARS, SNIS, TRS, BoundEstimatorMixin, Gaussian

# densities report costly one-off work (LARS's evaluation Z) at INFO through the standard logging
# module; show it as Lightning shows its own messages (to stderr unless logging is configured)
_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False

__version__ = "0.1.0"

__all__ = ["BoundEstimatorMixin", "SNIS", "TRS", "HIS", "LARS", "Gaussian", "__version__"]

from .modules import VAE, ConvHVAE  # noqa: E402

__all__ += ["VAE", "ConvHVAE"]

from .modules import CPC, IWAE, EIMPosteriorVAE, RankingNCE  # noqa: E402

__all__ += ["EIMPosteriorVAE", "IWAE", "RankingNCE", "CPC"]

from .modules import FIVO  # noqa: E402

__all__ += ["FIVO"]
