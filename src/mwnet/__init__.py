"""mwnet: Meta-Weight-Net for any PyTorch model — learn sample weights against a small clean meta set."""

from mwnet.core import MetaReweighter
from mwnet.errors import NonFiniteLossError
from mwnet.hypergradients import weight_sensitivity
from mwnet.label_issues import LabelIssues, label_issues_from_run, rank_from_scores, rank_label_issues
from mwnet.losses import normalize_weights
from mwnet.step import StepOptions, StepResult, reweighted_step
from mwnet.weighting import MetaWeightNet

__version__ = "0.1.0"

__all__ = ["LabelIssues", "MetaReweighter", "MetaWeightNet", "NonFiniteLossError", "StepOptions", "StepResult",
           "__version__", "label_issues_from_run", "normalize_weights", "rank_from_scores", "rank_label_issues",
           "reweighted_step", "weight_sensitivity"]
