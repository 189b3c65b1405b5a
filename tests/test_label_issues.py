"""Which labels are wrong: rankings against hand computations and plain sorts, the mixture estimate against
scikit-learn's EM, the fallback to the loss when V does not decrease, and a real run directory."""

from __future__ import annotations

import csv
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.mixture import GaussianMixture

from conftest import make_mlp
from mwnet import MetaWeightNet
from mwnet.experiment.metrics import auroc
from mwnet.label_issues import (
    LabelIssues,
    LabelIssueWarning,
    MissingRunFileError,
    fit_two_component_gmm,
    label_issues_from_run,
    rank_from_scores,
    rank_label_issues,
    spearman,
)


def test_a_hand_made_case_ranks_as_computed_by_hand():
    losses = np.array([0.5, 2.0, 1.0, 2.0, 3.0])
    weights = np.array([0.9, 0.2, 0.6, 0.2, 0.2])
    issues = rank_from_scores(losses, weights, threshold="midpoint")
    # score = 1 − w = [0.1, 0.8, 0.4, 0.8, 0.8]; the three 0.8s by loss (3.0 first), then 1 before 3 by index.
    assert issues.score_name == "weight"
    np.testing.assert_allclose(issues.scores, [0.1, 0.8, 0.4, 0.8, 0.8], atol=1e-15)
    np.testing.assert_array_equal(issues.ranking, [4, 1, 3, 2, 0])
    # midpoint of [0.1, 0.8] is 0.45: the three samples at 0.8.
    assert issues.num_issues == 3
    np.testing.assert_array_equal(issues.indices, [4, 1, 3])
    assert issues.threshold == pytest.approx(0.8)
    assert issues.spearman == pytest.approx(spearmanr(weights, losses).statistic)
    assert issues.warning is None
    np.testing.assert_array_equal(issues.ids, np.arange(5))
    fixed = rank_from_scores(losses, weights, threshold=0.3, ids=[10, 11, 12, 13, 14])
    np.testing.assert_array_equal(fixed.indices, [4, 1, 3, 2])
    np.testing.assert_array_equal(fixed.issue_ids, [14, 11, 13, 12])
    # By loss: 3.0, then the two 2.0s by index, 1.0, 0.5.
    by_loss = rank_from_scores(losses, weights, score="loss", threshold=2.5)
    np.testing.assert_array_equal(by_loss.ranking, [4, 1, 3, 2, 0])
    np.testing.assert_array_equal(by_loss.indices, [4])


def test_loss_score_is_a_sort_by_loss_descending_then_index():
    rng = np.random.default_rng(0)
    losses = rng.integers(0, 6, 200) * 0.5  # many ties
    issues = rank_from_scores(losses, rng.random(200), score="loss")
    assert issues.ranking.tolist() == sorted(range(200), key=lambda i: (-losses[i], i))
    np.testing.assert_array_equal(issues.scores, losses)
    assert issues.ranking.dtype == np.int64 and issues.indices.shape == (issues.num_issues,)
    assert np.all(issues.scores[issues.indices] >= issues.threshold)
    assert np.all(issues.scores[issues.ranking[issues.num_issues:]] < issues.threshold)
    np.testing.assert_array_equal(rank_from_scores(losses).ranking, issues.ranking)  # no weights: by loss


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(10):
        a, b = rng.integers(0, 5, 30).astype(float), rng.normal(size=30)
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_em_fit_matches_scikit_learn():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0.2, 0.05, 600), rng.normal(0.7, 0.1, 400)])
    mix, means, variances = fit_two_component_gmm(x, reg=1e-4)
    reference = GaussianMixture(2, reg_covar=1e-4, tol=1e-12, max_iter=2000, random_state=0).fit(x[:, None])
    order = np.argsort(reference.means_[:, 0])
    np.testing.assert_allclose(means, reference.means_[order, 0], atol=1e-6)
    np.testing.assert_allclose(variances, reference.covariances_[order].ravel(), atol=1e-6)
    np.testing.assert_allclose(mix, reference.weights_[order], atol=1e-6)


@pytest.mark.parametrize(("clean", "noisy"), [(700, 300), (900, 100), (500, 500)])
def test_mixture_estimate_counts_the_high_loss_cluster(clean, noisy):
    rng = np.random.default_rng(clean)
    losses = np.concatenate([rng.gamma(2.0, 0.1, clean), rng.normal(3.0, 0.6, noisy).clip(0.5)])
    issues = rank_from_scores(losses)
    assert abs(issues.num_issues - noisy) <= 0.02 * (clean + noisy)
    assert np.mean(issues.indices >= clean) > 0.95  # the flagged are the noisy cluster's


def test_mixture_estimate_ignores_the_tail_a_wider_component_wins():
    rng = np.random.default_rng(4)
    # A wide high component is the more probable one again at the far low end (the five zeros) ...
    losses = np.concatenate([np.zeros(5), rng.normal(1.0, 0.05, 800), rng.normal(3.0, 1.0, 200).clip(1.5)])
    issues = rank_from_scores(losses)
    assert abs(issues.num_issues - 200) <= 20 and not set(issues.indices.tolist()) & set(range(5))
    # ... and a wide low component at the far high end (the loss of 6): still the most suspect sample.
    losses = np.concatenate([rng.normal(1.0, 0.8, 800).clip(0), rng.normal(4.0, 0.05, 200), [6.0]])
    issues = rank_from_scores(losses)
    assert abs(issues.num_issues - 201) <= 20 and issues.indices[0] == 1000


def test_weights_that_grow_with_the_loss_fall_back_to_the_loss_with_a_warning():
    rng = np.random.default_rng(3)
    losses = rng.exponential(1.0, 100)
    growing = 1 / (1 + np.exp(-losses))
    trend = r"do not decrease with the loss \(Spearman ρ = \+1\.000, not <= -0\.9\).*by loss"
    with pytest.warns(LabelIssueWarning, match=trend):
        auto = rank_from_scores(losses, growing)
    assert auto.score_name == "loss" and "ranking by loss instead" in auto.warning
    np.testing.assert_array_equal(auto.ranking, np.argsort(-losses, kind="stable"))
    with pytest.warns(LabelIssueWarning, match="ranking by weight as asked"):
        forced = rank_from_scores(losses, growing, score="weight")
    assert forced.score_name == "weight" and forced.warning is not None
    np.testing.assert_allclose(forced.scores, 1 - growing)
    with pytest.warns(LabelIssueWarning, match="are constant"):
        assert rank_from_scores(losses, np.full(100, 0.5)).score_name == "loss"
    # Weights that fall with the loss only on the whole (a class-aware V sets each class its own level) rank by loss.
    mixed = 1 - growing + rng.normal(0, 0.1, 100)
    with pytest.warns(LabelIssueWarning, match="not <= -0.9"):
        loose = rank_from_scores(losses, mixed)
    assert -0.9 < loose.spearman < -0.3 and loose.score_name == "loss"
    # Decreasing weights are trusted, silently (warnings are errors in this suite).
    assert rank_from_scores(losses, 1 - growing).score_name == "weight"
    assert rank_from_scores(losses, growing, score="loss").warning is None


def test_mean_weight_averages_the_rows():
    losses = np.array([0.1, 1.0, 2.0])
    rows = np.array([[0.9, 0.5, 0.1], [0.7, 0.5, 0.3]])
    issues = rank_from_scores(losses, rows, score="mean-weight")
    np.testing.assert_allclose(issues.weights, [0.8, 0.5, 0.2])
    np.testing.assert_allclose(rank_from_scores(losses, rows, score="weight").scores, [0.3, 0.5, 0.7])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"losses": [1.0, 2.0, 3.0], "weights": [0.5, 0.5]}, r"weights must have shape \(3,\) or \(E, 3\)"),
    ({"losses": [1.0, float("nan"), 3.0]}, r"losses holds 1 NaN or infinite values \(first at position \(1,\)\)"),
    ({"losses": [1.0, 2.0], "weights": [0.5, float("inf")]}, "weights holds 1 NaN or infinite"),
    ({"losses": [[1.0, 2.0]]}, r"losses must have shape \(N,\)"),
    ({"losses": []}, r"losses must have shape \(N,\)"),
    ({"losses": [1.0, 2.0], "score": "margin"}, "score must be one of auto, weight, mean-weight, loss, got 'margin'"),
    ({"losses": [1.0, 2.0], "threshold": "otsu"}, "threshold must be one of gmm, midpoint or a finite number"),
    ({"losses": [1.0, 2.0], "threshold": float("nan")}, "threshold must be"),
    ({"losses": [1.0, 2.0], "score": "weight"}, "score='weight' needs weights"),
    ({"losses": [1.0, 2.0], "ids": [1, 2, 3]}, r"ids must be 2 integers"),
    ({"losses": ["a", "b"]}, "losses must be numbers"),
])
def test_bad_inputs_raise_value_errors_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rank_from_scores(**kwargs)


def test_rank_label_issues_scores_a_model_in_eval_mode_from_tensors_or_batches():
    model = make_mlp(5, 8, 3)
    model.train()
    torch.manual_seed(0)
    nets = [MetaWeightNet(hidden=10), MetaWeightNet(hidden=10)]
    x, y = torch.randn(23, 5, dtype=torch.float64), torch.randint(0, 3, (23,))
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none")
        weights = [net(losses.float()).double() for net in nets]
    issues = rank_label_issues(model, nets[0], x, y.numpy(), score="weight", batch_size=7)
    assert model.training  # mode restored
    assert isinstance(issues, LabelIssues) and issues.ranking.shape == (23,)
    np.testing.assert_allclose(issues.losses, losses.numpy(), rtol=1e-12)
    np.testing.assert_allclose(issues.weights, weights[0].numpy(), rtol=1e-6)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    averaged = rank_label_issues(model, nets, loader, score="mean-weight")
    np.testing.assert_allclose(averaged.weights, ((weights[0] + weights[1]) / 2).numpy(), rtol=1e-6)
    plain = rank_label_issues(model, None, x, y)
    assert plain.score_name == "loss" and plain.weights is None
    with pytest.raises(ValueError, match="labels are required"):
        rank_label_issues(model, None, x)
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\)"):
        rank_label_issues(model, None, x, y[:5])
    assert model.training


@pytest.fixture
def run_dir(noisy_digits_run):
    return noisy_digits_run


def _corrupted_by_index(out):
    with open(out / "suspects.csv", newline="") as handle:
        return {int(row["index"]): row["corrupted"] == "1" for row in csv.DictReader(handle)}


def test_a_run_directory_ranks_every_training_sample_and_finds_the_corrupted(run_dir):
    corrupted = _corrupted_by_index(run_dir)
    for score in ("auto", "weight", "mean-weight", "loss"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LabelIssueWarning)
            issues = label_issues_from_run(run_dir, score=score, last_epochs=2)
        assert len(caught) == (issues.warning is not None)
        assert sorted(issues.ranking.tolist()) == list(range(len(corrupted)))
        assert sorted(issues.ids.tolist()) == sorted(corrupted) == issues.ids.tolist()
        mask = np.array([corrupted[i] for i in issues.ids])
        if issues.warning is None or score in ("auto", "loss"):
            assert auroc(issues.scores, mask) > 0.8, score
        assert 0 < issues.num_issues < len(mask)


def test_a_run_without_suspects_is_scored_from_its_checkpoint(run_dir, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(run_dir, copy)
    (copy / "suspects.csv").unlink()
    from_csv = label_issues_from_run(run_dir, score="loss")
    from_checkpoint = label_issues_from_run(copy, score="loss", device="cpu")
    np.testing.assert_array_equal(from_checkpoint.ids, from_csv.ids)
    np.testing.assert_allclose(from_checkpoint.losses, from_csv.losses, rtol=1e-5, atol=1e-6)


def test_missing_run_files_are_named(run_dir, tmp_path):
    with pytest.raises(MissingRunFileError, match=r"no suspects\.csv in .*checkpoint\.pt") as raised:
        label_issues_from_run(tmp_path)
    assert raised.value.path == tmp_path / "suspects.csv" and isinstance(raised.value, ValueError)
    (tmp_path / "suspects.csv").write_bytes((run_dir / "suspects.csv").read_bytes())
    with pytest.raises(MissingRunFileError, match=r"no metrics\.jsonl"):
        label_issues_from_run(tmp_path, score="mean-weight")
    (tmp_path / "suspects.csv").write_text("rank,index\n1,0\n")
    with pytest.raises(ValueError, match="lacks the column"):
        label_issues_from_run(tmp_path)
