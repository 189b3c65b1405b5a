"""`mwnet label-issues`: the ranking of a run directory as printed lines, CSV and JSON, checked against the run's
suspects.csv and an independent AUROC; every missing file and bad value one line and exit 2."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cli_runner import run
from mwnet.label_issues import label_issues_from_run


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def copy_with_weights(run_dir, tmp_path, weight_of):
    """A copy of the run whose suspects.csv weights are replaced by weight_of(loss) (a CE run: 1 everywhere)."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    rows = read_csv(copy / "suspects.csv")
    for row in rows:
        row["weight"] = repr(weight_of(float(row["loss"])))
    with open(copy / "suspects.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return copy


def test_ranks_a_run_prints_the_estimate_and_writes_csv_and_json(noisy_digits_run, tmp_path, capsys):
    code, out, err = run(["label-issues", str(noisy_digits_run), "--out", str(tmp_path / "i.csv"),
                          "--json", str(tmp_path / "i.json"), "--top", "3"], capsys)
    assert code == 0 and err == ""
    suspects = {int(r["index"]): r for r in read_csv(noisy_digits_run / "suspects.csv")}
    rows = read_csv(tmp_path / "i.csv")
    summary = json.loads((tmp_path / "i.json").read_text())
    issues = label_issues_from_run(noisy_digits_run)
    # Every training sample once, most suspect first, in the library's order, with the run's own numbers.
    assert [int(r["rank"]) for r in rows] == list(range(1, len(suspects) + 1))
    assert [int(r["index"]) for r in rows] == issues.ids[issues.ranking].tolist()
    assert sorted(int(r["index"]) for r in rows) == sorted(suspects)
    for row in rows:
        source = suspects[int(row["index"])]
        assert row["id"] == source["source_id"]  # digits: the row in scikit-learn's array, before the test holdout
        assert float(row["loss"]) == pytest.approx(float(source["loss"]), rel=1e-5)
        assert float(row["weight"]) == pytest.approx(float(source["weight"]), rel=1e-5)
        assert float(row["score"]) == pytest.approx(1 - float(source["weight"]), abs=1e-6)  # score auto → weight
        assert (row["given_label"], row["true_label"], row["corrupted"]) == (
            source["given_label"], source["true_label"], source["corrupted"])
    assert sum(int(r["is_issue"]) for r in rows) == summary["num_issues"] == issues.num_issues
    assert all(r["is_issue"] == "1" for r in rows[:issues.num_issues])
    # The detection quality in the JSON, against scikit-learn and a count by hand.
    corrupted = np.array([r["corrupted"] == "1" for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    k = int(corrupted.sum())
    truth = summary["truth"]
    assert truth["num_corrupted"] == k
    ranks = np.array([int(r["rank"]) for r in rows])
    assert truth["auroc"] == pytest.approx(roc_auc_score(corrupted, -ranks), abs=1e-12)  # the ranking's order
    assert truth["auroc"] >= roc_auc_score(corrupted, scores) - 1e-4  # ties in the score, broken by the loss
    assert truth["precision_at_k"] == pytest.approx(corrupted[:k].mean())
    assert truth["recall"] == pytest.approx(corrupted[:issues.num_issues].sum() / k)
    assert summary["score"] == "weight" and summary["issue_ids"] == [int(r["index"]) for r in rows[:issues.num_issues]]
    assert summary["issue_sources"] == [r["id"] for r in rows[:issues.num_issues]]
    # What it prints: the estimate and the three most suspect ids.
    assert f"estimated label issues: {issues.num_issues}" in out
    assert f"most suspect ids: {', '.join(r['id'] for r in rows[:3])} ..." in out
    assert f"AUROC {truth['auroc']:.4f}" in out


def test_score_loss_and_a_number_as_threshold(noisy_digits_run, tmp_path, capsys):
    code, _, _ = run(["label-issues", str(noisy_digits_run), "--score", "loss", "--threshold", "2.5",
                      "--out", str(tmp_path / "i.csv")], capsys)
    assert code == 0
    losses = {int(r["index"]): float(r["loss"]) for r in read_csv(noisy_digits_run / "suspects.csv")}
    rows = read_csv(tmp_path / "i.csv")
    assert [int(r["index"]) for r in rows] == sorted(losses, key=lambda i: (-losses[i], i))
    assert sum(int(r["is_issue"]) for r in rows) == sum(v >= 2.5 for v in losses.values())


def test_a_run_without_weights_is_ranked_by_loss_and_refuses_the_weight_score(noisy_digits_run, tmp_path, capsys):
    ce_like = copy_with_weights(noisy_digits_run, tmp_path, lambda loss: 1.0)
    code, out, err = run(["label-issues", str(ce_like), "--json", str(tmp_path / "i.json")], capsys)
    assert code == 0 and err == "" and "ranked by loss" in out
    assert json.loads((tmp_path / "i.json").read_text())["score"] == "loss"
    code, _, err = run(["label-issues", str(ce_like), "--score", "weight"], capsys)
    assert code == 2 and "same weight" in err and len(err.strip().splitlines()) == 1


def test_weights_that_rise_with_the_loss_warn_in_one_line_and_rank_by_loss(noisy_digits_run, tmp_path, capsys):
    inverted = copy_with_weights(noisy_digits_run, tmp_path, lambda loss: loss / (1 + loss))
    code, out, err = run(["label-issues", str(inverted)], capsys)
    assert code == 0 and "ranked by loss" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mwnet: warning: the learned weights do not decrease")


def test_an_interrupted_run_is_scored_from_its_checkpoint(noisy_digits_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(noisy_digits_run, partial)
    (partial / "suspects.csv").unlink()
    code, _, _ = run(["label-issues", str(partial), "--score", "loss", "--out", str(tmp_path / "p.csv"),
                      "--device", "cpu"], capsys)
    assert code == 0
    code, _, _ = run(["label-issues", str(noisy_digits_run), "--score", "loss", "--out", str(tmp_path / "f.csv")],
                     capsys)
    a, b = read_csv(tmp_path / "p.csv"), read_csv(tmp_path / "f.csv")
    assert [r["index"] for r in a[:50]] == [r["index"] for r in b[:50]]
    assert [(r["given_label"], r["true_label"]) for r in a] == [(r["given_label"], r["true_label"]) for r in b]


@pytest.mark.parametrize(("target", "flags", "message"), [
    ("empty", [], "no suspects.csv in"),
    ("absent", [], "no such run directory"),
    ("suspects-only", ["--score", "mean-weight"], "no metrics.jsonl in"),
    ("run", ["--threshold", "otsu"], "--threshold must be gmm, midpoint or a finite number, got 'otsu'"),
    ("run", ["--threshold", "nan"], "--threshold must be"),
    ("run", ["--last-epochs", "0"], "--last-epochs must be a positive integer"),
    ("run", ["--score", "margin"], "invalid choice: 'margin'"),
    ("run", ["--out", "{tmp}/missing/i.csv"], "no such directory for"),
    ("run", ["--json", "{tmp}"], "is a directory"),
    ("run", ["--out", "{tmp}/x", "--json", "{tmp}/x"], "name the same file"),
])
def test_missing_state_and_bad_values_are_one_line_and_exit_2(noisy_digits_run, tmp_path, capsys, target, flags,
                                                               message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "suspects-only").mkdir()
    shutil.copy(noisy_digits_run / "suspects.csv", tmp_path / "suspects-only")
    path = noisy_digits_run if target == "run" else tmp_path / target
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(["label-issues", str(path), *(f.format(tmp=tmp_path) for f in flags)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == "", err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
