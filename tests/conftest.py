"""Tiny models and a state comparison shared by the tests.

Plain functions, imported like the other helper modules here (`from conftest import make_cnn`): pytest puts this
folder on sys.path (tests/ has no __init__.py), and the module it imports is the same `conftest` module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
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


def nested_equal(a: Any, b: Any) -> bool:
    """Exact equality of nested state (tensors bit for bit, dicts, lists and tuples entry by entry, the rest by
    ==): a module's, an optimizer's or a whole method's state_dict before and after a refused step."""
    if isinstance(a, Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(nested_equal(u, v) for u, v in zip(a, b))
    return a == b


def save_weight_net_run(out: Path, weight_net: nn.Module, *, method: str = "mwnet", normalize: str = "sum") -> Path:
    """A run directory `out` that holds only what reusing its weight net reads: config.json (method, normalize)
    and checkpoint.pt with the method's state {"weight_net": V's state_dict}."""
    from mwnet.experiment.checkpoint import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"method": method, "normalize": normalize}))
    save_checkpoint({"method": {"weight_net": weight_net.state_dict()}}, out / "checkpoint.pt")
    return out


@pytest.fixture
def required_options(tmp_path: Path) -> Callable[[str], dict[str, Any]]:
    """Method name → the options it cannot be created without (frozen-vnet: a run directory holding a V)."""

    def options(name: str) -> dict[str, Any]:
        if name == "frozen-vnet":
            from mwnet import MetaWeightNet

            torch.manual_seed(3)
            return {"weight_net_from": str(save_weight_net_run(tmp_path / "v-run", MetaWeightNet(hidden=8)))}
        return {}

    return options


# Digits with 40 % uniform noise, a small MLP, two epochs of MW-Net: a run of a few seconds.
TINY_NOISY_RUN = {"dataset": "digits", "noise": "uniform:0.4", "meta_per_class": 10, "model": "mlp",
                  "model_options": {"hidden": [32]}, "epochs": 2, "batch_size": 100, "meta_batch_size": 50,
                  "device": "cpu", "lr_milestones": [1], "meta_lr": 0.01}


@pytest.fixture(scope="session")
def noisy_digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished mwnet run directory of TINY_NOISY_RUN, trained once per session: copy it before changing it."""
    from mwnet.experiment import resolve_config, train

    out = tmp_path_factory.mktemp("noisy-digits") / "run"
    train(resolve_config(None, TINY_NOISY_RUN), out)
    return out


def assert_matches_central_differences(weight_net: nn.Module, theta: list[Tensor], hyper: list[Tensor],
                                       objective, generator: torch.Generator, *, h: float = 1e-5,
                                       rel: float = 1e-6, checks: int = 3) -> None:
    """`hyper` (the hypergradient at Θ = `theta`) against central differences of `objective(V)` (a float) along
    `checks` random directions drawn from `generator`: relative error ≤ `rel` (absolute for tiny slopes)."""
    import copy

    for _ in range(checks):
        direction = [torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in theta]
        values = []
        for sign in (1, -1):
            probe = copy.deepcopy(weight_net)
            with torch.no_grad():
                for p, t, d in zip(probe.parameters(), theta, direction):
                    p.copy_(t + sign * h * d)
            values.append(float(objective(probe)))
        numeric = (values[0] - values[1]) / (2 * h)
        analytic = sum(float((gr * d).sum()) for gr, d in zip(hyper, direction))
        assert abs(analytic - numeric) <= rel * max(abs(numeric), 1e-8), (analytic, numeric)
