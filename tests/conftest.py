"""Tiny models and a state comparison shared by the tests.

Plain functions, imported like the other helper modules here (`from conftest import make_cnn`): pytest puts this
folder on sys.path (tests/ has no __init__.py), and the module it imports is the same `conftest` module.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU twice, optional dropout, linear head: batch norm and dropout where the steps must handle them.

    Input (n, 1, H, W) for any H, W ≥ 3 (the tests use 6×6); output (n, num_classes).
    """

    def __init__(self, dropout: float = 0.0, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(dropout),
        )
        self.classifier = nn.Linear(24, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def make_cnn(seed: int | None = 0, *, dropout: float = 0.0, num_classes: int = 3,
             dtype: torch.dtype = torch.float64) -> SmallCNN:
    """A `SmallCNN` built after `torch.manual_seed(seed)` (the global RNG; None leaves it alone), cast to `dtype`."""
    if seed is not None:
        torch.manual_seed(seed)
    return SmallCNN(dropout, num_classes).to(dtype)


def make_mlp(in_features: int = 5, hidden: int = 16, num_classes: int = 3, *, seed: int | None = 0,
             dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Linear → tanh → linear (smooth, so central differences measure the method and not a kink), seeded like
    `make_cnn`, cast to `dtype`."""
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes)).to(dtype)


def assert_states_close(a: nn.Module | Mapping[str, Tensor], b: nn.Module | Mapping[str, Tensor],
                        tol: float = 0.0) -> None:
    """Two modules (or two state_dicts) hold the same entries, in the same order, with the same shapes and dtypes;
    floating-point entries within `tol` (absolute, max over the entry; 0 = bit-identical), integer buffers (batch
    norm's num_batches_tracked, …) exactly equal."""
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    assert list(sa) == list(sb), f"different entries: {sorted(set(sa) ^ set(sb))}"
    for key, ta in sa.items():
        tb = sb[key]
        assert ta.shape == tb.shape and ta.dtype == tb.dtype, f"{key}: {ta.shape} {ta.dtype} vs {tb.shape} {tb.dtype}"
        if ta.is_floating_point():
            err = (ta - tb).abs().max().item() if ta.numel() else 0.0
            assert err <= tol, f"{key}: max |a − b| = {err:.3g} > {tol:g}"  # NaN fails here too
        else:
            assert torch.equal(ta, tb), key
