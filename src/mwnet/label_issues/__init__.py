"""Which labels are wrong: rank training samples by how much the learned weighting distrusts them.

    rank_from_scores(losses, weights)                     arrays you already have, (N,) each
    rank_label_issues(model, weight_net, inputs, labels)  a trained classifier and its weight net V
    label_issues_from_run("runs/mw")                      a run directory of `mwnet train`, without training
    read_run_samples("runs/mw")                           its samples: ids, losses, weights, labels, sources
    write_label_issues(issues, samples, csv_path=..., json_path=...)   the ranking as files (`mwnet label-issues`)

Each returns a `LabelIssues`. Scores (higher = more suspect): "weight" is 1 − v, v = V(ℓ) the learned weight;
"mean-weight" is 1 − v averaged over the weighting functions of the last epochs; "loss" is ℓ. v is a function of ℓ
alone, so where V decreases over the observed losses the weight ranks samples as the loss does. Where it does not
(early in training V starts near 0.5 and drifts either way; on a long tail it learns to trust the rare classes'
high losses; a class-aware V gives each class its own level), ranking by weight lists clean samples first. "auto"
(the default) therefore ranks by weight only when Spearman's ρ(v, ℓ) ≤ −0.9 over the samples (V decreasing almost
everywhere: then weight and loss agree, ties in saturated weights broken by the loss), else by loss with a
`LabelIssueWarning`. The loss is right from the first epoch: networks fit clean labels before they memorise wrong
ones, so wrong labels keep high losses.

Number of issues (`threshold`), always a prefix of the ranking. "gmm" (default; DivideMix's rule, Li et al. 2020):
EM fits a two-component 1-D Gaussian mixture to the scores (rescaled to [0, 1]); the issues score at least t, the
lowest score above the low component's mean where the high component's posterior exceeds 1/2 (a wider high
component also wins the far low tail: ignored). "midpoint": scores above the middle of their range (for "weight":
weights below the midpoint of V's range over the observed losses). A number: scores at or above it. Ties in the
score go to the higher loss, then to the lower position.
"""

from mwnet.label_issues.ranking import (
    AUTO_MAX_SPEARMAN,
    SCORES,
    THRESHOLDS,
    LabelIssues,
    LabelIssueWarning,
    estimate_threshold,
    fit_two_component_gmm,
    rank_from_scores,
    rank_label_issues,
    spearman,
)
from mwnet.label_issues.runs import (
    MissingRunFileError,
    RunSamples,
    label_issues_csv,
    label_issues_from_run,
    label_issues_summary,
    ranking_scores,
    read_run_samples,
    write_label_issues,
)

__all__ = ["AUTO_MAX_SPEARMAN", "SCORES", "THRESHOLDS", "LabelIssueWarning", "LabelIssues", "MissingRunFileError",
           "RunSamples", "estimate_threshold", "fit_two_component_gmm", "label_issues_csv", "label_issues_from_run",
           "label_issues_summary", "rank_from_scores", "rank_label_issues", "ranking_scores", "read_run_samples",
           "spearman", "write_label_issues"]
