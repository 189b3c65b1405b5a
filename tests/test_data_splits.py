"""Splits: the meta set (clean, balanced, disjoint), long-tail counts against the formula, noise on what is left."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mwnet.data import Dataset, UnverifiedMetaSetError, long_tail_counts, make_split, meta_counts, summarize_split


def synthetic(per_class: int = 500, k: int = 10, shuffle: bool = True, verified: bool = True) -> Dataset:
    """A CIFAR-like balanced data set whose images encode their own index (to check who went where); its labels
    are clean as given (`verified`), as a built-in data set's are."""
    n = per_class * k
    y = torch.arange(n) % k
    if shuffle:
        y = y[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    x = torch.arange(n, dtype=torch.int32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Dataset("synthetic", [f"c{i}" for i in range(k)], x, y, x[:50].clone(), y[:50].clone(), (0.5,), (0.25,),
                   labels_verified=verified)


def formula(n_max: float, imbalance: float, k: int) -> list[int]:
    """nᵢ = n_max · (1/IF)^(i/(K−1)), truncated (the official script's int())."""
    return [math.floor(n_max * math.pow(1 / imbalance, i / (k - 1))) for i in range(k)]


@pytest.mark.parametrize("imbalance", [200, 100, 50, 20, 10])
def test_long_tail_counts_equal_the_formula(imbalance):
    ds = synthetic()
    split = make_split(ds, imbalance=imbalance, meta_per_class=10, seed=1)
    counts = torch.bincount(split.y_true, minlength=10).tolist()
    assert counts == formula((5000 - 100) / 10, imbalance, 10)
    assert counts == long_tail_counts(490.0, float(imbalance), 10)
    assert counts[0] == 490 and counts[-1] == math.floor(490 / imbalance)
    assert torch.bincount(split.y_meta, minlength=10).tolist() == [10] * 10  # carved first, stays balanced


def test_cifar_sized_long_tail_counts():
    """CIFAR-10, IF 100, 10 meta per class: n_max = (50000 − 100)/10 = 4990 → 4990 … 49."""
    assert long_tail_counts(4990.0, 100.0, 10) == [4990, 2991, 1793, 1075, 644, 386, 231, 138, 83, 49]
    assert long_tail_counts(4990.0, 1.0, 10) == [4990] * 10


def test_long_tail_caps_at_what_a_class_holds():
    ds = synthetic()
    keep = torch.ones(5000, dtype=torch.bool)
    keep[torch.nonzero(ds.y_train == 0).flatten()[300:]] = False  # class 0 holds only 300
    ds = Dataset("short", ds.classes, ds.x_train[keep], ds.y_train[keep], ds.x_test, ds.y_test, labels_verified=True)
    split = make_split(ds, imbalance=10, seed=0)
    counts = torch.bincount(split.y_true, minlength=10).tolist()
    n_max = len(ds.y_train) / 10  # 470
    assert counts[0] == 300 and counts[1:] == formula(n_max, 10, 10)[1:]


def test_meta_set_is_disjoint_balanced_and_clean():
    ds = synthetic()
    split = make_split(ds, noise="uniform:0.8", imbalance=20, num_meta=1000, seed=3)
    train_ids = set(split.x_train[:, 0, 0, 0].tolist())
    meta_ids = set(split.x_meta[:, 0, 0, 0].tolist())
    assert train_ids.isdisjoint(meta_ids) and len(meta_ids) == 1000
    assert set(split.train_index.tolist()) == train_ids and set(split.meta_index.tolist()) == meta_ids
    assert torch.bincount(split.y_meta, minlength=10).tolist() == [100] * 10
    assert torch.equal(split.y_meta, ds.y_train[split.meta_index])  # true labels, never corrupted
    assert torch.equal(split.y_true, ds.y_train[split.train_index])
    assert torch.equal(split.corrupted, split.y_train != split.y_true) and split.corrupted.float().mean() > 0.5
    # n_max counts what is left after the meta set: (5000 − 1000)/10 = 400.
    assert torch.bincount(split.y_true, minlength=10).tolist() == formula(400, 20, 10)


def test_meta_counts_spread_evenly():
    assert meta_counts(10, num_meta=1000) == [100] * 10
    assert meta_counts(3, num_meta=8) == [3, 3, 2]
    assert meta_counts(4, meta_per_class=7) == [7] * 4
    assert meta_counts(4) == [0] * 4
    split = make_split(synthetic(), num_meta=13, seed=0)
    assert torch.bincount(split.y_meta, minlength=10).tolist() == [2, 2, 2] + [1] * 7


def test_same_seed_same_split_other_seed_other_split():
    ds = synthetic()
    a = make_split(ds, noise="flip:0.4", imbalance=10, meta_per_class=5, train_subset=4000, seed=7)
    b = make_split(ds, noise="flip:0.4", imbalance=10, meta_per_class=5, train_subset=4000, seed=7)
    c = make_split(ds, noise="flip:0.4", imbalance=10, meta_per_class=5, train_subset=4000, seed=8)
    for name in ("train_index", "meta_index", "y_train", "y_true", "noise_matrix"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.train_index, c.train_index) and not torch.equal(a.y_train, c.y_train)


def test_train_subset_is_the_pool():
    ds = synthetic()
    split = make_split(ds, meta_per_class=10, train_subset=1200, seed=0)
    assert len(split.y_train) + len(split.y_meta) == 1200
    pool = set(split.train_index.tolist()) | set(split.meta_index.tolist())
    assert len(pool) == 1200 and max(pool) < 5000


def test_noise_and_long_tail_together_follow_the_nominal_matrix():
    ds = synthetic(per_class=3000)
    split = make_split(ds, noise="flip2:0.4", imbalance=10, num_meta=100, seed=2)
    s = summarize_split(split)
    nominal = np.array(s["nominal_transition_matrix"])
    empirical = np.array(s["transition_matrix"], dtype=float)
    counts = np.array(s["class_counts"])
    # Each row is a multinomial of its class count: within 4 standard errors of the nominal row.
    se = np.sqrt(nominal * (1 - nominal) / counts[:, None])
    assert np.all(np.abs(empirical - nominal) <= 4 * se + 1e-12)
    np.testing.assert_allclose(empirical.sum(1), 1.0, atol=1e-12)
    assert s["noise_rate_actual"] == pytest.approx(float(split.corrupted.double().mean()))
    assert s["noise_rate_expected"] == pytest.approx(0.4)
    assert s["label_counts"] == torch.bincount(split.y_train, minlength=10).tolist()
    assert s["train_size"] == sum(counts) and s["meta_size"] == 100 and s["test_size"] == 50


def test_summary_of_an_empty_class_row_is_null():
    ds = synthetic(per_class=20, k=3)
    keep = ds.y_train != 1
    ds = Dataset("gap", ds.classes, ds.x_train[keep], ds.y_train[keep], ds.x_test, ds.y_test, labels_verified=True)
    s = summarize_split(make_split(ds, noise="uniform:0.5", seed=0))
    assert s["class_counts"][1] == 0 and s["transition_matrix"][1] is None
    assert all(abs(sum(row) - 1) < 1e-12 for row in s["transition_matrix"] if row is not None)


def test_shipped_meta_set_is_used_whole_unless_subsampling_is_asked():
    """Issue 10.2: 500 shipped meta samples trained with 100 because of a default meta_per_class."""
    ds = synthetic(per_class=50, k=4)
    ds.x_meta, ds.y_meta, ds.meta_source = ds.x_test[:40], torch.arange(40) % 4, "x_meta in d.npz"
    for kwargs in ({}, {"meta_per_class": 3}, {"num_meta": 8}):
        whole = make_split(ds, seed=0, **kwargs)
        assert len(whole.y_meta) == 40 and whole.meta_index is None and len(whole.y_train) == 200
        assert whole.meta_source == "x_meta in d.npz (all 40)" and whole.meta_source_ids.tolist() == list(range(40))
    carved = make_split(ds, meta_per_class=3, subsample_shipped_meta=True, seed=0)
    assert torch.bincount(carved.y_meta).tolist() == [3] * 4 and len(carved.y_train) == 200
    assert carved.meta_source == "x_meta in d.npz (12 of 40, subsampled)"
    assert torch.equal(ds.y_meta[torch.from_numpy(carved.meta_source_ids)], carved.y_meta)
    with pytest.raises(ValueError, match=r"subsample_shipped_meta needs num_meta or meta_per_class"):
        make_split(ds, subsample_shipped_meta=True)


def test_meta_set_is_never_carved_silently_from_unverified_labels():
    """Issue 10.1: a user's own labels are not a clean meta set unless the caller says so."""
    ds = synthetic(per_class=30, k=3, verified=False)
    with pytest.raises(UnverifiedMetaSetError, match=r"^synthetic has no trusted meta set: .*meta_from_unverified"):
        make_split(ds, meta_per_class=5)
    assert make_split(ds, seed=0).meta_source == "none"  # no meta set asked for: nothing to refuse
    accepted = make_split(ds, meta_per_class=5, meta_from_unverified=True)
    assert accepted.meta_source == "carved from unverified labels (accepted)" and len(accepted.y_meta) == 15
    clean = make_split(synthetic(per_class=30, k=3), meta_per_class=5)
    assert clean.meta_source == "carved from the clean training set"
    assert summarize_split(clean)["meta_source"] == "carved from the clean training set"


def test_meta_set_is_carved_from_trusted_rows_only():
    ds = synthetic(per_class=30, k=3, verified=False)
    ds.trusted = torch.arange(90) % 3 == 0  # every third row verified: 10 per class (the labels cycle less evenly)
    ds.trusted_source = "the trusted column of labels.csv"
    per_class = int(torch.bincount(ds.y_train[ds.trusted], minlength=3).min())
    split = make_split(ds, meta_per_class=per_class, seed=4)
    assert bool(ds.trusted[split.meta_index].all())
    assert split.meta_source == "carved from the trusted column of labels.csv"
    with pytest.raises(ValueError, match=rf"asks for {per_class + 1} samples of class \d \(c\d\), which has only "
                                         rf"\d+ trusted$"):
        make_split(ds, meta_per_class=per_class + 1)


def test_source_ids_follow_every_training_sample():
    """Issue 10.3: each training (and meta) sample maps back to its origin, after subset, meta set and long tail."""
    ds = synthetic(per_class=40, k=4)
    split = make_split(ds, num_meta=8, imbalance=4, train_subset=150, seed=2)
    assert torch.equal(torch.from_numpy(split.source_ids), split.train_index)  # default: the training-set index
    ds.train_ids = np.array([f"img/{i}.png" for i in range(160)], dtype=object)
    split = make_split(ds, num_meta=8, imbalance=4, train_subset=150, seed=2)
    assert split.source_ids.tolist() == [f"img/{int(v)}.png" for v in split.x_train[:, 0, 0, 0]]
    assert split.meta_source_ids.tolist() == [f"img/{int(v)}.png" for v in split.x_meta[:, 0, 0, 0]]
    ds.train_ids = ds.train_ids[:10]
    with pytest.raises(ValueError, match=r"synthetic: 10 train_ids for 160 training samples"):
        make_split(ds)


def test_source_noise_never_reaches_the_meta_set():
    """A folder with a noisy CSV ships given and true labels: meta samples come from the agreeing ones."""
    ds = synthetic(per_class=30, k=3)
    truth = ds.y_train.clone()
    given = truth.clone()
    given[: len(given) // 2] = (given[: len(given) // 2] + 1) % 3
    ds.y_train, ds.y_train_true = given, truth
    split = make_split(ds, meta_per_class=10, seed=0)
    assert torch.equal(given[split.meta_index], truth[split.meta_index])
    assert torch.equal(split.y_train, given[split.train_index]) and torch.equal(split.y_true, truth[split.train_index])
    assert split.corrupted.any()


@pytest.mark.parametrize("kwargs, message", [
    ({"imbalance": 0.5}, r"imbalance factor must be >= 1, got 0\.5"),
    ({"imbalance": float("inf")}, r"imbalance factor must be >= 1, got inf"),
    ({"meta_per_class": 501}, r"meta set asks for 501 samples of class 0 \(c0\), which has only 500"),
    ({"num_meta": 5001}, r"meta set asks for 501 samples of class 0"),
    ({"num_meta": 10, "meta_per_class": 1}, r"give num_meta or meta_per_class, not both"),
    ({"num_meta": -1}, r"num_meta must be a non-negative integer, got -1"),
    ({"train_subset": 6000}, r"train_subset must be in \[1, 5000\]"),
    ({"noise": "uniform:2"}, r"noise rate must be in \[0, 1\], got 2"),
    ({"seed": -1}, r"seed must be a non-negative integer, got -1"),
])
def test_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_split(synthetic(), **kwargs)


@pytest.mark.parametrize("noise", ["uniform:0.4", "flip2:0.2"])
def test_long_tail_and_noise_together_meta_first_then_tail_then_noise(noise):
    ds = synthetic(per_class=1000)
    both = make_split(ds, noise=noise, imbalance=100, meta_per_class=10, seed=4)
    tail_only = make_split(ds, imbalance=100, meta_per_class=10, seed=4)
    meta_only = make_split(ds, meta_per_class=10, seed=4)
    # 1. The meta set is carved first: the same samples whatever follows, balanced and clean.
    assert torch.equal(both.meta_index, meta_only.meta_index) and torch.equal(both.meta_index, tail_only.meta_index)
    assert torch.bincount(both.y_meta, minlength=10).tolist() == [10] * 10
    assert torch.equal(both.y_meta, ds.y_train[both.meta_index])
    # 2. Then the long tail, by true class, on what is left: n_max = (10000 − 100)/10; the noise does not move it.
    assert torch.equal(both.train_index, tail_only.train_index)
    assert torch.bincount(both.y_true, minlength=10).tolist() == formula(990, 100, 10)
    # 3. Then the noise on the long-tailed labels: each class's row follows the nominal matrix (4 standard errors).
    s = summarize_split(both)
    nominal, empirical = np.array(s["nominal_transition_matrix"]), np.array(s["transition_matrix"], dtype=float)
    counts = np.array(s["class_counts"])[:, None]
    assert np.all(np.abs(empirical - nominal) <= 4 * np.sqrt(nominal * (1 - nominal) / counts) + 1e-12)
    rate = 0.4 * 9 / 10 if noise.startswith("uniform") else 0.2
    n = len(both.y_true)
    assert abs(float(both.corrupted.double().mean()) - rate) <= 4 * math.sqrt(rate * (1 - rate) / n)
    assert torch.equal(both.corrupted, both.y_train != both.y_true)
    if noise.startswith("uniform"):  # the given labels no longer follow the tail: large classes fill small ones
        assert s["label_counts"][-1] > 5 * s["class_counts"][-1]
