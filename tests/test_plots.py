"""Figures are drawn from metrics records alone: noise runs (clean vs corrupted), long-tail runs (per class),
methods without a weighting function; each output is a real PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mwnet.experiment.metrics import loss_grid, weight_statistics
from mwnet.plots import FIGURES, plot_accuracy, plot_run, read_metrics, run_title

PNG = b"\x89PNG\r\n\x1a\n"


def records(epochs: int, *, noisy: bool, curve: bool = True) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for epoch in range(1, epochs + 1):
        n = 200
        losses = rng.exponential(1.0, n)
        corrupted = rng.random(n) < 0.4 if noisy else None
        labels = rng.integers(0, 4, n)
        weights = 1 / (1 + np.exp(losses - 1))
        stats = weight_statistics(weights, losses, labels, corrupted, 4)
        grid = loss_grid(losses)
        out.append({"epoch": epoch, "test_acc": 50.0 + epoch, "train_acc": 40.0 + 2 * epoch,
                    "train_fit_corrupted": 5.0 * epoch if noisy else None, **stats,
                    "weight_curve": {"loss": grid.tolist(), "weight": (1 / (1 + np.exp(grid - epoch))).tolist()}
                    if curve else None})
    return out


def write_run(tmp_path, recs, config):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(("noisy", "curve"), [(True, True), (False, True), (True, False)])
def test_plot_run_writes_every_figure(tmp_path, noisy, curve):
    config = {"method": "mwnet", "dataset": "digits", "noise": "uniform:0.4" if noisy else None,
              "imbalance": 1.0 if noisy else 100.0}
    run = write_run(tmp_path, records(7, noisy=noisy, curve=curve), config)
    paths = plot_run(run)
    # Without a weighting function that varies with the loss (plain CE: V ≡ 1) there is no figure of it.
    assert [p.name for p in paths] == list(FIGURES if curve else FIGURES[1:])
    for path in paths:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
    assert run_title(run) == ("mwnet on digits (uniform:0.4)" if noisy else "mwnet on digits (imbalance 100)")


def test_noise_records_carry_both_histograms_and_long_tail_records_per_class_quantiles():
    noisy, long_tail = records(1, noisy=True)[0], records(1, noisy=False)[0]
    assert {"all", "clean", "corrupted", "edges"} == set(noisy["weight_hist"])
    assert sum(noisy["weight_hist"]["clean"]) + sum(noisy["weight_hist"]["corrupted"]) == 200
    assert "clean" not in long_tail["weight_hist"]
    assert all(len(q) == 5 and q == sorted(q) for q in long_tail["weight_quantiles_by_class"])


def test_comparison_figure_and_errors(tmp_path):
    plot_accuracy({"CE": records(3, noisy=True), "MW-Net": records(3, noisy=True)}, tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").read_bytes()[:8] == PNG
    with pytest.raises(FileNotFoundError, match=r"no metrics\.jsonl"):
        read_metrics(tmp_path / "missing")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{broken\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no epoch yet"):
        plot_run(tmp_path)


def test_a_class_aware_weighting_function_is_drawn_per_head(tmp_path):
    recs = records(4, noisy=False, curve=False)
    for r in recs:
        grid = r["weight_hist"]["edges"]
        r["weight_curves_by_head"] = {"loss": grid, "heads": {
            "classes 0, 1 (n 500–480)": [0.2] * len(grid), "classes 2 (n 20)": [0.8] * len(grid)}}
    run = write_run(tmp_path, recs, {"method": "cmwnet", "dataset": "digits", "imbalance": 100.0})
    path = plot_run(run)[0]
    assert path.name == "weighting_function.png" and path.read_bytes()[:8] == PNG
    # Three panels (two heads and all heads together): wider than the one-panel figure.
    assert path.stat().st_size > 5000


def _drawn(monkeypatch) -> list:
    """The figures the plot functions save, captured instead of written."""
    import mwnet.plots

    figures: list = []
    monkeypatch.setattr(mwnet.plots, "_save", lambda fig, path: figures.append(fig))
    return figures


def test_per_class_figure_names_whose_labels_and_constant_weights_get_no_weighting_figure(tmp_path, monkeypatch):
    figures = _drawn(monkeypatch)
    recs = records(3, noisy=False)
    for r in recs:  # plain CE on a folder of unverified labels
        r["classes_by"] = "given"
        r["weight_curve"]["weight"] = [1.0] * len(r["weight_curve"]["loss"])
    run = write_run(tmp_path, recs, {"method": "ce", "dataset": "folder:/data/mine"})
    assert [p.name for p in plot_run(run)] == ["weight_distribution.png", "test_accuracy.png"]
    assert figures[0].axes[0].get_xlabel() == "class (by given label)"
    for r in recs:
        r["classes_by"] = "true"
    write_run(tmp_path, recs, {"method": "ce", "dataset": "digits", "imbalance": 100.0})
    plot_run(run)
    assert figures[2].axes[0].get_xlabel() == "class (by true label)"


def test_long_titles_are_wrapped_and_short_runs_get_integer_epoch_ticks(tmp_path, monkeypatch):
    figures = _drawn(monkeypatch)
    title = "mwnet on folder:/a/very/long/path/to/the/users/own/image/folder/with/noisy/labels (uniform:0.4)"
    plot_accuracy({title: records(5, noisy=True)}, tmp_path / "acc.png", title)
    ax = figures[0].axes[0]
    assert "\n" in ax.get_title() and max(len(line) for line in ax.get_title().split("\n")) <= 90
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 5]
    assert ticks and all(float(t).is_integer() for t in ticks)
