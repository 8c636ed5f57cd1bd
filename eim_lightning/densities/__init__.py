"""Layer 2: densities (``nn.Module``, no Lightning) with the contract of :mod:`.base`."""

from .base import Density
from .his import HIS
from .lars import LARS
from .normal import Normal
from .snis import SNIS, SNISParticles
from .trs import TRS

__all__ = ["Density", "Normal", "SNIS", "SNISParticles", "TRS", "LARS", "HIS"]
