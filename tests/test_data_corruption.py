"""Corruption: the paper's matrices, written out by hand, and the labels they produce over 500k draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mwnet.data import corrupt_labels, empirical_transition_matrix, noise_transition_matrix, parse_noise
from mwnet.data.corruption import flip_targets

N = 500_000  # 50k per class: a 0.01 deviation is > 4 standard errors for every entry


def reference_matrix(kind: str, r: float, k: int, targets: np.ndarray | None = None) -> np.ndarray:
    """The paper's matrices built entry by entry (docs/algorithm.md, "Corruption protocols")."""
    c = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            if kind == "uniform":
                c[i, j] = r / k + (1 - r) * (i == j)
            elif i == j:
                c[i, j] = 1 - r
            elif j in targets[i]:
                c[i, j] = r / len(targets[i])
    return c


@pytest.mark.parametrize("kind, rate, k", [("uniform", 0.4, 10), ("uniform", 0.6, 100), ("flip", 0.2, 10),
                                           ("flip", 0.4, 100), ("flip2", 0.4, 10), ("flip2", 0.2, 7)])
def test_nominal_matrix_is_the_papers(kind, rate, k):
    matrix = noise_transition_matrix(f"{kind}:{rate}", k, seed=3).numpy()
    targets = None if kind == "uniform" else flip_targets(k, 1 if kind == "flip" else 2, seed=3)
    np.testing.assert_allclose(matrix, reference_matrix(kind, rate, k, targets), rtol=0, atol=1e-15)
    np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-12)
    if kind != "uniform":
        assert all(i not in targets[i] for i in range(k)) and all(len(set(t)) == len(t) for t in targets)


@pytest.mark.parametrize("kind, rate", [("uniform", 0.4), ("uniform", 0.8), ("flip", 0.4), ("flip2", 0.4),
                                        ("flip2", 0.6)])
def test_empirical_matrix_within_001_of_nominal(kind, rate):
    k = 10
    y = torch.arange(N) % k
    noisy, matrix = corrupt_labels(y, f"{kind}:{rate}", k, seed=11)
    empirical = empirical_transition_matrix(y, noisy, k)
    assert (empirical - matrix).abs().max() < 0.01
    # Independent check of the wrong-label fraction: r(K−1)/K for uniform (a label may be redrawn as itself),
    # r for flip and flip2.
    expected = rate * (k - 1) / k if kind == "uniform" else rate
    assert abs(float((noisy != y).double().mean()) - expected) < 0.005


def test_flip_targets_depend_only_on_the_seed():
    k = 10
    labels_a = torch.arange(5000) % k
    labels_b = torch.randint(0, k, (777,), generator=torch.Generator().manual_seed(5))
    _, m_a = corrupt_labels(labels_a, "flip:0.3", k, seed=4)
    _, m_b = corrupt_labels(labels_b, "flip:0.3", k, seed=4)
    assert torch.equal(m_a, m_b)
    assert torch.equal(m_a, noise_transition_matrix("flip:0.3", k, seed=4))
    assert torch.equal(noise_transition_matrix("flip2:0.3", k, seed=4), noise_transition_matrix("flip2:0.3", k, seed=4))
    # Where the mass goes does not depend on the rate either; other seeds choose other targets.
    assert torch.equal(noise_transition_matrix("flip:0.1", k, seed=4) > 0, m_a > 0)
    assert any(not torch.equal(noise_transition_matrix("flip:0.3", k, seed=s), m_a) for s in range(5, 9))
    # The targets of flip2 are two distinct classes other than the row's own.
    t = flip_targets(k, 2, seed=4)
    assert t.shape == (k, 2) and all(i not in t[i] and t[i, 0] != t[i, 1] for i in range(k))


def test_corruption_is_reproducible_and_needs_no_global_rng():
    y = torch.arange(1000) % 10
    torch.manual_seed(0)
    np.random.seed(0)
    a, _ = corrupt_labels(y, "uniform:0.5", 10, seed=2)
    torch.manual_seed(123)
    np.random.seed(123)
    b, _ = corrupt_labels(y, "uniform:0.5", 10, seed=2)
    c, _ = corrupt_labels(y, "uniform:0.5", 10, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rate_zero_and_one():
    y = torch.arange(100) % 10
    assert torch.equal(corrupt_labels(y, "flip2:0", 10)[0], y)
    assert torch.equal(corrupt_labels(y, None, 10)[0], y)
    flipped, matrix = corrupt_labels(y, "flip:1", 10, seed=1)
    targets = flip_targets(10, 1, seed=1)[:, 0]
    assert torch.equal(flipped, torch.from_numpy(targets)[y])
    assert torch.equal(torch.diagonal(matrix), torch.zeros(10, dtype=torch.float64))


@pytest.mark.parametrize("spec, message", [
    ("uniform:1.5", r"noise rate must be in \[0, 1\], got 1\.5 in 'uniform:1\.5'"),
    ("flip:-0.1", r"noise rate must be in \[0, 1\], got -0\.1"),
    ("flip:nan", r"noise rate must be in \[0, 1\], got nan"),
    ("flip:abc", r"noise rate must be a number, got 'abc' in 'flip:abc'"),
    ("pair:0.2", r"noise must be KIND:RATE with KIND in uniform, flip, flip2, got 'pair:0\.2'"),
    ("0.4", r"noise must be KIND:RATE"),
])
def test_bad_noise_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_noise(spec)


def test_too_few_classes_and_bad_labels():
    with pytest.raises(ValueError, match=r"flip2 noise needs at least 3 classes, got 2"):
        noise_transition_matrix("flip2:0.2", 2)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got range \[0, 3\]"):
        corrupt_labels(torch.tensor([0, 3]), "uniform:0.2", 3)
    assert str(parse_noise(" Flip2:0.40 ")) == "flip2:0.4" and parse_noise("none") is None


def test_empirical_matrix_marks_empty_classes():
    m = empirical_transition_matrix(torch.tensor([0, 0, 2]), torch.tensor([0, 1, 2]), 3)
    assert m[0].tolist() == [0.5, 0.5, 0.0] and torch.isnan(m[1]).all() and m[2].tolist() == [0.0, 0.0, 1.0]
