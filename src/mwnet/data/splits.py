"""The paper's data protocol, seeded: clean meta set first, then long-tail subsampling, then label noise.

Order (docs/algorithm.md, "Corruption protocols"), all on the data set's training set:
  0. `train_subset`: a seeded random subset of the training set stands in for it (a smaller data set);
  1. the meta set is the one the source ships (all of it, unless `subsample_shipped_meta`), or is carved per class
     from training samples whose labels are trusted (a built-in data set's clean labels, rows the source marks as
     verified, or, only when the caller accepts it, unverified labels); it is never corrupted;
  2. long-tail: class i keeps nᵢ = ⌊n_max · (1/IF)^(i/(K−1))⌋ of its samples, n_max = (train size − meta size)/K,
     capped at what the class still holds (a class can hold fewer after a random subset or in an unbalanced data
     set); IF = 1 keeps every sample;
  3. noise: every remaining training label is redrawn from its row of the noise matrix (`corruption.py`).
True labels, the corrupted mask, each sample's index in the data set's training set and its origin in the source
(`source_ids`: row in the file, or path) are kept, with `meta_source` saying where the meta set came from.
Every random choice comes from its own numpy stream spawned from `seed`; no global RNG is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mwnet.data.corruption import NoiseSpec, corrupt_labels, empirical_transition_matrix, parse_noise
from mwnet.data.dataset import ClassesAndShape, Dataset
from mwnet.data.images import take

# Independent random streams of one seed, by purpose (SeedSequence(seed).spawn order is fixed by these indices).
_SUBSET, _META, _LONG_TAIL = range(3)


class UnverifiedMetaSetError(ValueError):
    """The meta set would be carved from labels nobody verified, and the caller did not accept that.

    Attributes:
        dataset: the data set's name.
    """

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        super().__init__(
            f"{dataset} has no trusted meta set: its labels are unverified, so a meta set carved from them is not "
            f"clean; ship one (a meta/ folder, x_meta and y_meta), mark verified rows (a 'trusted' CSV column, a "
            f"trusted-rows file, a 'trusted' array), or accept carving it from the unverified labels "
            f"(meta_from_unverified=True; command line: --meta-from-unverified)")


@dataclass
class Split(ClassesAndShape):
    """A data set prepared for one run. `y_train` is what the model is trained on (possibly corrupted);
    `y_true` the truth, `corrupted` = (y_train != y_true), `train_index` indices into the data set's training
    set (`meta_index` likewise, None for a meta set the source shipped). `source_ids[i]` is where training sample i
    came from (its row in the source file, or its path relative to the image folder; `meta_source_ids` likewise),
    `meta_source` a sentence saying where the meta set came from."""

    name: str
    classes: list[str]
    x_train: Any
    y_train: torch.Tensor
    y_true: torch.Tensor
    corrupted: torch.Tensor
    train_index: torch.Tensor
    x_meta: Any
    y_meta: torch.Tensor | None
    meta_index: torch.Tensor | None
    x_test: Any
    y_test: torch.Tensor
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    noise: NoiseSpec | None
    noise_matrix: torch.Tensor  # nominal (K, K), identity without noise
    imbalance: float
    seed: int
    meta_source: str = "none"
    source_ids: np.ndarray | None = None
    meta_source_ids: np.ndarray | None = None



def _rngs(seed: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def meta_counts(num_classes: int, *, num_meta: int | None = None, meta_per_class: int | None = None) -> list[int]:
    """Meta samples per class: `meta_per_class` each, or `num_meta` spread evenly (the remainder of
    num_meta / K goes one each to the lowest class indices)."""
    if num_meta is not None and meta_per_class is not None:
        raise ValueError("give num_meta or meta_per_class, not both")
    if meta_per_class is not None:
        _check_count(meta_per_class, "meta_per_class")
        return [int(meta_per_class)] * num_classes
    if num_meta is None:
        return [0] * num_classes
    _check_count(num_meta, "num_meta")
    base, extra = divmod(int(num_meta), num_classes)
    return [base + (1 if i < extra else 0) for i in range(num_classes)]


def _check_count(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def carve_meta_set(labels: torch.Tensor, counts: list[int], rng: np.random.Generator,
                   classes: list[str] | None = None, *, pool: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(meta positions, remaining positions), both sorted: `counts[c]` random samples of each class c.
    `pool` qualifies the samples in messages ("trusted")."""
    y = np.asarray(labels, dtype=np.int64)
    meta = []
    for c, m in enumerate(counts):
        members = np.flatnonzero(y == c)
        if m > len(members):
            name = f"class {c}" + (f" ({classes[c]})" if classes and classes[c] != str(c) else "")
            raise ValueError(f"meta set asks for {m} samples of {name}, which has only {len(members)}"
                             + (f" {pool}" if pool else ""))
        meta.append(rng.permutation(members)[:m])
    chosen = np.sort(np.concatenate(meta)) if meta else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(y)), chosen, assume_unique=True)
    return torch.from_numpy(chosen.astype(np.int64)), torch.from_numpy(rest.astype(np.int64))


def long_tail_counts(n_max: float, imbalance: float, num_classes: int) -> list[int]:
    """nᵢ = ⌊n_max · (1/IF)^(i/(K−1))⌋ for i = 0…K−1 (the official script's int() of the same product)."""
    if not (isinstance(imbalance, (int, float)) and math.isfinite(imbalance) and imbalance >= 1):
        raise ValueError(f"imbalance factor must be >= 1, got {imbalance!r}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * (1.0 / imbalance) ** (i / (num_classes - 1))) for i in range(num_classes)]


def make_split(ds: Dataset, *, noise: str | NoiseSpec | None = None, imbalance: float = 1.0,
               num_meta: int | None = None, meta_per_class: int | None = None, train_subset: int | None = None,
               seed: int = 0, meta_from_unverified: bool = False, subsample_shipped_meta: bool = False) -> Split:
    """Meta set, long-tail and noise on `ds`, in the paper's order (module docstring); seeded by `seed`.

    A meta set the source ships is used whole; `num_meta`/`meta_per_class` size a meta set carved from the
    training set when there is none, or, with `subsample_shipped_meta`, the part of the shipped one to keep.
    Carving needs trusted labels (see `Dataset`); where the training labels are unverified it raises
    `UnverifiedMetaSetError` unless `meta_from_unverified` accepts it. `Split.meta_source` says what was used.
    """
    spec = parse_noise(noise)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(imbalance, bool) or not isinstance(imbalance, (int, float)) or not math.isfinite(imbalance) \
            or imbalance < 1:
        raise ValueError(f"imbalance factor must be >= 1, got {imbalance!r}")
    k = ds.num_classes
    counts = meta_counts(k, num_meta=num_meta, meta_per_class=meta_per_class)
    rng_subset, rng_meta, rng_tail = _rngs(int(seed))

    # The given labels of the source, and the truth (a folder with a noisy-labels CSV can ship both).
    y_given = torch.as_tensor(ds.y_train, dtype=torch.int64)
    y_truth = torch.as_tensor(ds.y_train_true, dtype=torch.int64) if ds.y_train_true is not None else y_given
    ids = np.asarray(ds.train_ids) if ds.train_ids is not None else np.arange(len(y_given), dtype=np.int64)
    if len(ids) != len(y_given):
        raise ValueError(f"{ds.name}: {len(ids)} train_ids for {len(y_given)} training samples")
    pool = torch.arange(len(y_given))
    if train_subset is not None:
        _check_count(train_subset, "train_subset")
        if not 0 < train_subset <= len(pool):
            raise ValueError(f"train_subset must be in [1, {len(pool)}] (the training set's size), got {train_subset}")
        pool = torch.from_numpy(np.sort(rng_subset.permutation(len(pool))[:train_subset]))

    # 1. The meta set: the shipped one, or carved from trusted training labels (only samples whose given label is
    #    the truth qualify, so a source's own noise never reaches it).
    meta_index = meta_ids = None
    if ds.x_meta is not None:
        y_shipped = torch.as_tensor(ds.y_meta, dtype=torch.int64)
        shipped_ids = np.asarray(ds.meta_ids) if ds.meta_ids is not None else np.arange(len(y_shipped))
        where = ds.meta_source or "the meta set the source ships"
        if subsample_shipped_meta:
            if num_meta is None and meta_per_class is None:
                raise ValueError("subsample_shipped_meta needs num_meta or meta_per_class (how many to keep)")
            pos, _ = carve_meta_set(y_shipped, counts, rng_meta, ds.classes)
            x_meta, y_meta, meta_ids = take(ds.x_meta, pos), y_shipped[pos], shipped_ids[pos.numpy()]
            meta_source = f"{where} ({len(pos)} of {len(y_shipped)}, subsampled)"
        else:
            x_meta, y_meta, meta_ids = ds.x_meta, y_shipped, shipped_ids
            meta_source = f"{where} (all {len(y_shipped)})"
    elif sum(counts):
        eligible, meta_source, kind = _trusted_rows(ds, y_given == y_truth, meta_from_unverified)
        clean = pool[eligible[pool]]
        pos, _ = carve_meta_set(y_truth[clean], counts, rng_meta, ds.classes, pool=kind)
        meta_index = clean[pos]
        in_meta = torch.zeros(len(y_given), dtype=torch.bool)
        in_meta[meta_index] = True
        pool = pool[~in_meta[pool]]
        x_meta, y_meta, meta_ids = take(ds.x_train, meta_index), y_truth[meta_index], ids[meta_index.numpy()]
    else:
        x_meta = y_meta = None
        meta_source = "none"

    # 2. Long-tail: n_max = (train size − meta size)/K = what remains per class on average.
    if imbalance > 1:
        wanted = long_tail_counts(len(pool) / k, float(imbalance), k)
        keep = []
        for c, n in enumerate(wanted):
            members = pool[y_truth[pool] == c].numpy()
            keep.append(rng_tail.permutation(members)[: min(n, len(members))])
        pool = torch.from_numpy(np.sort(np.concatenate(keep)).astype(np.int64))

    # 3. Noise on what is left (the source's own given labels are the starting point).
    y_true = y_truth[pool]
    y_train, matrix = corrupt_labels(y_given[pool], spec, k, seed=int(seed))
    return Split(name=ds.name, classes=list(ds.classes), x_train=take(ds.x_train, pool), y_train=y_train,
                 y_true=y_true, corrupted=y_train != y_true, train_index=pool, x_meta=x_meta, y_meta=y_meta,
                 meta_index=meta_index, x_test=ds.x_test, y_test=torch.as_tensor(ds.y_test, dtype=torch.int64),
                 mean=ds.mean, std=ds.std, noise=spec, noise_matrix=matrix, imbalance=float(imbalance),
                 seed=int(seed), meta_source=meta_source, source_ids=ids[pool.numpy()], meta_source_ids=meta_ids)


def _trusted_rows(ds: Dataset, agree: torch.Tensor, accept_unverified: bool) -> tuple[torch.Tensor, str, str]:
    """(which training samples a meta set may be carved from, a sentence saying so, their kind for messages)."""
    if ds.trusted is not None:
        mask = torch.as_tensor(ds.trusted, dtype=torch.bool) & agree
        return mask, f"carved from {ds.trusted_source or 'the rows marked trusted'}", "trusted"
    if ds.y_train_true is not None:
        what = ds.trusted_source or "the samples whose given label is the true one"
        return agree, f"carved from {what}", "with a verified label"
    if ds.labels_verified:
        return agree, "carved from the clean training set", ""
    if accept_unverified:
        return agree, "carved from unverified labels (accepted)", ""
    raise UnverifiedMetaSetError(ds.name)


def summarize_split(split: Split) -> dict[str, Any]:
    """Sizes, per-class counts and the noise as it came out, as plain JSON-ready values.

    class_counts: training samples per true class; label_counts: per given (possibly corrupted) label.
    transition_matrix: empirical K×K (rows = true class, each row sums to 1); the row of a class with no training
    sample is null (nothing to measure). nominal_transition_matrix: the matrix the labels were drawn from.
    noise_rate_actual: fraction of training labels that differ from the truth; noise_rate_expected: the same
    fraction as the nominal matrix predicts for these classes.
    """
    k = split.num_classes
    y_true, y_train = split.y_true, split.y_train
    class_counts = torch.bincount(y_true, minlength=k)
    label_counts = torch.bincount(y_train, minlength=k)
    meta_counts_ = torch.bincount(split.y_meta, minlength=k) if split.y_meta is not None else torch.zeros(k)
    empirical = empirical_transition_matrix(y_true, y_train, k)
    n = len(y_true)
    off_diagonal = 1.0 - torch.diagonal(split.noise_matrix)
    expected = float((class_counts.double() * off_diagonal).sum() / n) if n else 0.0
    nonzero = class_counts[class_counts > 0]
    return {
        "dataset": split.name,
        "num_classes": k,
        "classes": list(split.classes),
        "input_shape": list(split.input_shape),
        "train_size": n,
        "meta_size": 0 if split.y_meta is None else len(split.y_meta),
        "meta_source": split.meta_source,
        "test_size": len(split.y_test),
        "class_counts": [int(c) for c in class_counts],
        "label_counts": [int(c) for c in label_counts],
        "meta_class_counts": [int(c) for c in meta_counts_],
        "test_class_counts": [int(c) for c in torch.bincount(split.y_test, minlength=k)],
        "imbalance": split.imbalance,
        "imbalance_actual": float(nonzero.max() / nonzero.min()) if len(nonzero) else None,
        "noise": None if split.noise is None else str(split.noise),
        "noise_rate_actual": float(split.corrupted.double().mean()) if n else 0.0,
        "noise_rate_expected": expected,
        "num_corrupted": int(split.corrupted.sum()),
        "transition_matrix": [None if torch.isnan(row).any() else [float(v) for v in row] for row in empirical],
        "nominal_transition_matrix": [[float(v) for v in row] for row in split.noise_matrix],
        "seed": split.seed,
    }
