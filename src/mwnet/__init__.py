"""mwnet: Meta-Weight-Net for any PyTorch model — learn sample weights against a small clean meta set."""

from mwnet.core import MetaReweighter, StepResult, normalize_weights, weight_sensitivity
from mwnet.weighting import MetaWeightNet

__version__ = "0.1.0"

__all__ = ["MetaReweighter", "MetaWeightNet", "StepResult", "__version__", "normalize_weights", "weight_sensitivity"]
