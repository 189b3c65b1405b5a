"""The runner on scikit-learn's digits: the run directory, the metrics (against naive references), LR schedules by
epoch and by iteration, and exact resumption after SIGKILL between epochs and after Ctrl-C + SIGKILL mid-epoch."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mwnet.experiment.config import resolve_config
from mwnet.experiment.manifest import record_files
from mwnet.experiment.metrics import auroc, per_class_accuracy, weight_statistics
from mwnet.experiment.runner import train

# A run of a few seconds: digits (1,337 train after a 100-image meta set), a small MLP, noisy labels.
TINY = {"dataset": "digits", "noise": "uniform:0.4", "meta_per_class": 10, "model": "mlp",
        "model_options": {"hidden": [32]}, "epochs": 2, "batch_size": 100, "meta_batch_size": 50, "device": "cpu",
        "lr_milestones": [1], "meta_lr": 0.01}
SUMMARY_KEYS = {"method", "dataset", "model", "noise", "imbalance", "seed", "epochs", "best_test_acc",
                "last_test_acc", "weight_auroc", "train_seconds"}


@pytest.fixture(scope="module")
def mwnet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = train(resolve_config(None, TINY), out)
    return out, summary


def test_auroc_matches_pairwise_counting():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 5, n).astype(float)  # many ties
        positive = rng.random(n) < 0.5
        if positive.all() or not positive.any():
            assert auroc(scores, positive) is None
            continue
        pairs = [(1.0 if p > q else 0.5 if p == q else 0.0)
                 for p, q in itertools.product(scores[positive], scores[~positive])]
        assert auroc(scores, positive) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert auroc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0


def test_per_class_accuracy_and_weight_statistics_match_naive_loops():
    rng = np.random.default_rng(1)
    pred, true = rng.integers(0, 4, 50), rng.integers(0, 3, 50)
    naive = [np.mean(pred[true == k] == k) if (true == k).any() else None for k in range(4)]
    assert per_class_accuracy(pred, true, 4) == pytest.approx(naive)
    weights, losses = rng.random(50), rng.random(50)
    corrupted = rng.random(50) < 0.3
    stats = weight_statistics(weights, losses, true, corrupted, 4)
    assert stats["weight_mean_clean"] == pytest.approx(weights[~corrupted].mean())
    assert stats["weight_mean_corrupted"] == pytest.approx(weights[corrupted].mean())
    assert stats["weight_auroc"] == pytest.approx(auroc(weights, ~corrupted))
    assert stats["weight_by_class"][:3] == pytest.approx([weights[true == k].mean() for k in range(3)])
    assert stats["weight_by_class"][3] is None and stats["weight_quantiles_by_class"][3] is None
    assert stats["weight_quantiles_by_class"][0] == pytest.approx(
        np.quantile(weights[true == 0], [0.1, 0.25, 0.5, 0.75, 0.9]).tolist())
    assert sum(stats["weight_hist"]["all"]) == 50 and sum(stats["weight_hist"]["corrupted"]) == corrupted.sum()
    no_truth = weight_statistics(weights, losses, true, None, 4)
    assert no_truth["weight_auroc"] is None and "clean" not in no_truth["weight_hist"]


def test_run_directory_holds_every_output(mwnet_run):
    out, summary = mwnet_run
    assert set(summary) >= SUMMARY_KEYS
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["method"] == "mwnet" and summary["epochs"] == 2 and summary["iterations"] == 28
    assert 0.5 < summary["weight_auroc"] <= 1  # V separates clean from corrupted samples already
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "mlp" and config["noise"] == "uniform:0.4" and config["meta_lr"] == 0.01
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and [r["iteration"] for r in records] == [14, 28]
    assert [r["lr"] for r in records] == [0.1, pytest.approx(0.01)]
    assert records[-1]["test_acc"] == summary["last_test_acc"]
    assert max(r["test_acc"] for r in records) == summary["best_test_acc"]
    assert len(records[0]["test_acc_per_class"]) == 10
    curve = records[-1]["weight_curve"]
    assert len(curve["loss"]) == len(curve["weight"]) == 64 and all(0 < w < 1 for w in curve["weight"])
    assert not any(key in line for key in ("seconds", "time") for line in (out / "metrics.jsonl").read_text())
    assert [json.loads(line)["epoch"] for line in (out / "timing.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "test_accuracy.png", "weight_distribution.png", "weighting_function.png"]

    with open(out / "suspects.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["rank", "index", "source_id", "given_label", "score", "weight", "loss", "is_issue",
                             "true_label", "corrupted"]
    assert len(rows) == summary["train_size"] == len({r["index"] for r in rows})
    # V decreases with the loss after two epochs here, so the ranking is by weight (score = 1 − v), said so.
    assert summary["suspects_score"] == "weight" and summary["suspects_warning"] is None
    assert summary["suspects_spearman_weight_loss"] < 0
    weights = [float(r["weight"]) for r in rows]
    assert weights == sorted(weights)
    assert all(float(r["score"]) == pytest.approx(1 - float(r["weight"]), abs=2e-6) for r in rows)
    issues = [r["is_issue"] == "1" for r in rows]
    assert sum(issues) == summary["suspects_num_issues"] > 0 and issues == sorted(issues, reverse=True)
    # source_id is the sample's row in scikit-learn's digits arrays: the image there is the one trained on.
    from sklearn.datasets import load_digits

    from mwnet.data import load_dataset
    digits, ds = load_digits(), load_dataset("digits")
    for row in rows[:20]:
        index, source = int(row["index"]), int(row["source_id"])
        assert int(digits.target[source]) == int(row["true_label"])
        assert np.array_equal(ds.x_train[index].reshape(-1).numpy(), np.round(digits.data[source] * 255 / 16))
    # Low weights should be mostly corrupted samples: the top of the list is worth a look.
    top = rows[: len(rows) // 10]
    assert np.mean([r["corrupted"] == "1" for r in top]) > summary["noise_rate_actual"]
    assert all((r["given_label"] != r["true_label"]) == (r["corrupted"] == "1") for r in rows)


def test_the_model_selected_on_the_meta_set_is_saved_and_the_test_set_best_is_labelled(mwnet_run):
    import torch

    from mwnet.data import BatchLoader, load_dataset
    from mwnet.experiment.loop import evaluate
    from mwnet.experiment.selection import load_selected_model

    out, summary = mwnet_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: (r["meta_set_acc"], -r["meta_set_loss"], -r["epoch"]))
    assert summary["selected_epoch"] == best["epoch"] == records[-1]["selected_epoch"]
    assert summary["selected_meta_acc"] == best["meta_set_acc"] and summary["selected_test_acc"] == best["test_acc"]
    assert summary["selected_model"] == "best_model.pt" and "never on the test set" in summary["selected_on"]
    assert "chosen on the test set" in summary["best_test_acc_note"]
    # best_model.pt holds only tensors, numbers and strings, and is the model that scored those accuracies.
    raw = torch.load(out / "best_model.pt", weights_only=True)
    assert raw["epoch"] == best["epoch"] and raw["input_shape"] == [1, 8, 8] and raw["num_classes"] == 10
    model, info = load_selected_model(out)
    ds = load_dataset("digits")
    test = BatchLoader(ds.x_test, ds.y_test, batch_size=500, shuffle=False, mean=info["mean"], std=info["std"])
    assert evaluate(model, test, 10)["acc"] == pytest.approx(summary["selected_test_acc"], abs=1e-4)
    assert not model.training


def test_an_existing_run_is_refused_and_overwrite_only_replaces_run_files(mwnet_run, tmp_path):
    out, _ = mwnet_run
    with pytest.raises(ValueError, match=r"already holds a run: pass --resume .* or --overwrite"):
        train(resolve_config(None, TINY), out)
    with pytest.raises(ValueError, match=r"nothing to resume: no checkpoint\.pt"):
        train(resolve_config(None, TINY), tmp_path / "empty", resume=True)
    assert not (tmp_path / "empty").exists()
    (tmp_path / "notes.txt").write_text("mine")
    record_files(tmp_path, ["summary.json"])  # a run (its manifest), and a file of the user's beside it
    (tmp_path / "summary.json").write_text("{}")
    summary = train(resolve_config(None, {**TINY, "method": "ce", "epochs": 1, "imbalance": 5.0, "noise": None}),
                    tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # Plain CE: every weight is 1 (AUROC has no ground truth without noise), suspects ranked by loss.
    assert summary["weight_auroc"] is None and summary["noise"] is None
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["weight_mean"] == 1.0 and record["weight_curve"]["weight"] == [1.0] * 64
    assert record["weight_by_class"] == [1.0] * 10
    with open(tmp_path / "suspects.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert "true_label" not in rows[0]
    losses = [float(r["loss"]) for r in rows]
    assert losses == sorted(losses, reverse=True)
    assert summary["suspects_score"] == "loss" and summary["suspects_warning"] is None
    # V ≡ 1 says nothing: no weighting-function figure; the per-class figure groups by the (verified) labels.
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["test_accuracy.png", "weight_distribution.png"]
    assert record["classes_by"] == "true"


def test_lr_schedule_counted_in_iterations_with_a_truncated_last_epoch(tmp_path):
    config = resolve_config(None, {**TINY, "method": "ce", "iterations": 30, "lr_milestones": [20],
                                   "lr_unit": "iteration"})
    summary = train(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # 14 iterations per epoch: epochs end at 14, 28 and (truncated) 30; iterations 21+ run at lr 0.01.
    assert [r["iteration"] for r in records] == [14, 28, 30]
    assert [r["lr"] for r in records] == [0.1, pytest.approx(0.01), pytest.approx(0.01)]
    assert summary["epochs"] == 3 and json.loads((tmp_path / "config.json").read_text())["epochs"] == 3


# `mwnet train ARGS` in a process of its own that signals itself at one point of training: `train`'s `on_event`
# callback, injected by wrapping `runner.train` (which the command line calls through the module).
FAULT_SCRIPT = """
import os, signal, sys
from mwnet.cli import main
from mwnet.experiment import runner

name, point, count = sys.argv[1].split(":")

def fault(where, n):
    if (where, n) == (point, int(count)):
        os.kill(os.getpid(), getattr(signal, name))

train = runner.train
runner.train = lambda *args, **kwargs: train(*args, on_event=fault, **kwargs)
sys.exit(main(["train", *sys.argv[2:]]))
"""


def _cli(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    """`mwnet train ARGS`; `fault` "SIGNAL:iteration:N" or "SIGNAL:epoch-end:E" sends SIGNAL to the process after
    global iteration N, or after epoch E's metrics line is written and before its checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = ["-c", FAULT_SCRIPT, fault] if fault else ["-m", "mwnet", "train"]
    return subprocess.run([sys.executable, *command, *args], env=env, capture_output=True, text=True, timeout=120)


RESUME_FLAGS = ["--dataset", "digits", "--noise", "uniform:0.4", "--model", "mlp", "--model-option", "hidden=[32]",
                "--epochs", "3", "--lr-milestones", "2", "--meta-batch-size", "50", "--meta-lr", "0.01",
                "--device", "cpu", "--quiet"]


def test_resume_after_sigkill_and_ctrl_c_reproduces_metrics_byte_for_byte(tmp_path):
    reference = tmp_path / "reference"
    assert _cli([*RESUME_FLAGS, "--out", str(reference)]).returncode == 0
    expected = (reference / "metrics.jsonl").read_bytes()
    assert expected.count(b"\n") == 3

    # SIGKILL after epoch 1's metrics line, before its checkpoint: the line is written again on resume.
    killed = tmp_path / "killed"
    assert _cli([*RESUME_FLAGS, "--out", str(killed)], fault="SIGKILL:epoch-end:1").returncode == -9
    assert (killed / "metrics.jsonl").read_bytes().count(b"\n") == 1
    assert _cli(["--out", str(killed), "--resume", "--quiet"]).returncode == 0
    assert (killed / "metrics.jsonl").read_bytes() == expected

    # Ctrl-C in the middle of epoch 2 (a mid-epoch checkpoint), then SIGKILL in the middle of epoch 3.
    interrupted = tmp_path / "interrupted"
    first = _cli([*RESUME_FLAGS, "--out", str(interrupted)], fault="SIGINT:iteration:19")
    assert first.returncode == 130
    assert first.stderr.strip().splitlines()[-1] == (
        f"mwnet: interrupted in epoch 2 at iteration 19; checkpoint saved. Resume with: mwnet train --out "
        f"{interrupted} --resume")
    assert _cli(["--out", str(interrupted), "--resume", "--quiet"], fault="SIGKILL:iteration:33").returncode == -9
    assert (interrupted / "metrics.jsonl").read_bytes().count(b"\n") == 2
    assert _cli(["--out", str(interrupted), "--resume", "--quiet"]).returncode == 0
    assert (interrupted / "metrics.jsonl").read_bytes() == expected
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["resumes"] == 2 and summary["best_test_acc"] == json.loads(
        (reference / "summary.json").read_text())["best_test_acc"]
    # The model selected on the meta set comes out the same, weight for weight.
    import torch

    from conftest import assert_states_close

    for run in (killed, interrupted):
        got, want = (torch.load(d / "best_model.pt", weights_only=True) for d in (run, reference))
        assert got["epoch"] == want["epoch"] and got["meta_set_acc"] == want["meta_set_acc"]
        assert_states_close(got["model"], want["model"])


def test_a_diverging_run_is_reported_not_crashed(tmp_path):
    # lr 1e6 without momentum blows the MLP up within the first epoch: a non-finite loss stops training.
    config = resolve_config(None, {**TINY, "method": "ce", "lr": 1e6, "momentum": 0.0, "nesterov": False,
                                   "weight_decay": 0.0, "epochs": 3})
    summary = train(config, tmp_path)
    assert summary["completed"] is False
    assert summary["diverged"]["epoch"] >= 1 and summary["diverged"]["error"].startswith("non-finite training loss")
    assert 0.0 <= summary["last_test_acc"] <= 100.0
    assert json.loads((tmp_path / "summary.json").read_text())["diverged"] == summary["diverged"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == summary["diverged"]["epoch"] - 1  # only the epochs that finished
    assert (tmp_path / "figures").is_dir() == bool(lines)
