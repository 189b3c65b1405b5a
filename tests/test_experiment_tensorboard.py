"""TensorBoard events of a run: grouped tags (train/…, test/…, meta_set/…, weights/…), the weight histograms as
recorded and the weighting function V(ℓ) as an image; a run of plain CE (V ≡ 1) gets no V image."""

from __future__ import annotations

import numpy as np
import pytest

from mwnet.experiment.metrics import loss_grid, weight_statistics
from mwnet.experiment.tensorboard import SCALAR_TAGS, curve_image


def record(epoch: int, *, constant: bool = False) -> dict:
    rng = np.random.default_rng(epoch)
    losses = rng.exponential(1.0, 300)
    corrupted = rng.random(300) < 0.4
    weights = np.ones(300) if constant else 1 / (1 + np.exp(losses - 1))
    grid = loss_grid(losses)
    return {"epoch": epoch, "lr": 0.1, "train_loss": 1.5, "train_acc": 40.0 + epoch, "meta_loss": 1.2,
            "test_loss": 0.9, "test_acc": 70.0 + epoch, "meta_set_acc": 65.0, "meta_set_loss": 1.1,
            **weight_statistics(weights, losses, rng.integers(0, 3, 300), corrupted, 3),
            "weight_curve": {"loss": grid.tolist(),
                             "weight": ([1.0] * len(grid)) if constant else (1 / (1 + np.exp(grid - 1))).tolist()}}


def test_every_scalar_has_a_grouped_tag_and_the_curve_is_an_image():
    assert all(tag.split("/")[0] in ("train", "test", "meta_set", "weights") for tag in SCALAR_TAGS.values())
    assert SCALAR_TAGS["test_acc"] == "test/acc" and SCALAR_TAGS["train_loss"] == "train/loss"
    image = curve_image(record(1)["weight_curve"], 1)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0


def test_events_hold_grouped_scalars_histograms_and_the_weighting_function(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mwnet.experiment.tensorboard import TensorBoardLog

    log = TensorBoardLog(tmp_path / "mw")
    for epoch in (1, 2):
        log.write_epoch(record(epoch))
    log.close()
    events = EventAccumulator(str(tmp_path / "mw"), size_guidance={"images": 0, "histograms": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/acc", "test/acc", "meta_set/acc", "weights/mean_clean", "weights/auroc"} <= set(
        tags["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("test/acc")] == [(1, 71.0), (2, 72.0)]
    assert set(tags["histograms"]) == {"weights/histogram_all", "weights/histogram_clean",
                                       "weights/histogram_corrupted"}
    counts = record(2)["weight_hist"]
    histogram = events.Histograms("weights/histogram_corrupted")[-1].histogram_value
    assert histogram.num == sum(counts["corrupted"]) and list(histogram.bucket) == counts["corrupted"]
    assert tags["images"] == ["weights/V(loss)"] and len(events.Images("weights/V(loss)")) == 2

    ce = TensorBoardLog(tmp_path / "ce")
    ce.write_epoch(record(1, constant=True))
    ce.close()
    assert EventAccumulator(str(tmp_path / "ce")).Reload().Tags()["images"] == []
