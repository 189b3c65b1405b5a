"""mwnet: Meta-Weight-Net for any PyTorch model — learn sample weights against a small clean meta set."""

from mwnet.core import MetaReweighter
from mwnet.errors import NonFiniteLossError
from mwnet.hypergradients import weight_sensitivity
from mwnet.losses import normalize_weights
from mwnet.step import StepResult, reweighted_step
from mwnet.weighting import MetaWeightNet

__version__ = "0.1.0"

__all__ = ["MetaReweighter", "MetaWeightNet", "NonFiniteLossError", "StepResult", "__version__", "normalize_weights",
           "reweighted_step", "weight_sensitivity"]
