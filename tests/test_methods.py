"""The method registry and interface: every registered method is stepped, checkpointed and inspected; ce against a
hand-written SGD step; mwnet against a MetaReweighter built by hand (the wrapper must add nothing)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_mlp
from mwnet import MetaReweighter, MetaWeightNet, StepResult
from mwnet.methods import (
    Method,
    MethodContext,
    create_method,
    list_methods,
    method_class,
    method_options,
    register_method,
)
from mwnet.methods.options import build_options, coerce_value

N, M, D, K = 12, 8, 5, 3


def context() -> MethodContext:
    return MethodContext(num_classes=K, class_counts=(5, 4, 3))


def model_and_optimizer(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = make_mlp(D, 7, K, seed=seed, dtype=torch.float32)
    return model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)


def batches(seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g),
            torch.randn(M, D, generator=g), torch.randint(0, K, (M,), generator=g))


def step(method: Method, data: tuple[torch.Tensor, ...]) -> StepResult:
    x, y, xm, ym = data
    return method.step(x, y, *((xm, ym) if method.wants_meta() else (None, None)))


def test_registry_lists_the_built_in_methods():
    assert {"ce", "mwnet"} <= set(list_methods())
    assert list_methods() == sorted(list_methods())
    assert method_class("mwnet").uses_meta and not method_class("ce").uses_meta


@pytest.mark.parametrize("name", list_methods())
def test_every_method_steps_checkpoints_and_reports(name, required_options):
    model, optimizer = model_and_optimizer()
    method = create_method(name, model, optimizer, context(), **required_options(name))
    before = [p.detach().clone() for p in model.parameters()]
    result = step(method, batches())
    assert isinstance(result, StepResult)
    assert result.weights.shape == result.losses.shape == (N,)
    assert result.logits.shape == (N, K)
    assert math.isfinite(result.loss) and torch.isfinite(result.weights).all()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    expected = F.cross_entropy(result.logits, batches()[1], reduction="none")
    torch.testing.assert_close(result.losses, expected)
    grid = torch.linspace(0, 3, 9)
    curve = method.weight_curve(grid)
    assert curve is None or curve.shape == (9,)
    assert method.sample_weights(grid, torch.zeros(9, dtype=torch.long)).shape == (9,)

    # A method restored from state_dict (with model and optimizer restored by the caller) continues identically.
    model2, optimizer2 = model_and_optimizer(seed=5)
    twin = create_method(name, model2, optimizer2, context(), **required_options(name))
    model2.load_state_dict(model.state_dict())
    optimizer2.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin.load_state_dict(copy.deepcopy(method.state_dict()))
    a, b = step(method, batches(2)), step(twin, batches(2))
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=0)
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_ce_is_one_sgd_step_on_mean_cross_entropy():
    model, optimizer = model_and_optimizer()
    reference, reference_optimizer = model_and_optimizer()
    x, y, _, _ = batches()
    result = create_method("ce", model, optimizer, context()).step(x, y)
    loss = F.cross_entropy(reference(x), y)
    reference_optimizer.zero_grad()
    loss.backward()
    reference_optimizer.step()
    assert result.loss == pytest.approx(float(loss.detach()), rel=1e-6)
    assert torch.equal(result.weights, torch.ones(N))
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ce", "focal", "class-balanced"])
def test_supervised_methods_keep_a_frozen_batch_norm_backbone_frozen(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(D, 6), nn.BatchNorm1d(6), nn.ReLU()), nn.Linear(6, K))
    model[0].eval()  # the fine-tuning recipe: backbone statistics frozen, the whole model in train mode
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    frozen = {k: v.clone() for k, v in model[0][1].named_buffers()}
    first = model[0][0].weight.detach().clone()
    method = create_method(name, model, optimizer, context())
    for seed in (1, 2):
        step(method, batches(seed))
    assert model.training and not model[0].training and not model[0][1].training
    assert all(torch.equal(dict(model[0][1].named_buffers())[k], v) for k, v in frozen.items())
    assert not torch.equal(model[0][0].weight, first)  # the backbone's weights still train


@pytest.mark.parametrize(("optimizer_name", "virtual_loss", "init"),
                         [("sgd", "detached", "default"), ("adam", "detached", "default"),
                          ("sgd", "attached", "xavier")])
def test_mwnet_method_is_exactly_a_meta_reweighter(optimizer_name, virtual_loss, init):
    options = {"normalize": "mean", "meta_lr": 0.3, "meta_optimizer": optimizer_name, "meta_weight_decay": 1e-3,
               "weight_net_hidden": 6, "meta_nesterov": False, "meta_momentum": 0.5, "virtual_loss": virtual_loss,
               "weight_net_init": init}
    model, optimizer = model_and_optimizer()
    torch.manual_seed(9)
    method = create_method("mwnet", model, optimizer, context(), **options)

    ref_model, ref_optimizer = model_and_optimizer()
    torch.manual_seed(9)
    wnet = MetaWeightNet(hidden=6, init=init)
    if optimizer_name == "sgd":
        wopt = torch.optim.SGD(wnet.parameters(), lr=0.3, momentum=0.5, weight_decay=1e-3)
    else:
        wopt = torch.optim.Adam(wnet.parameters(), lr=0.3, weight_decay=1e-3)
    reference = MetaReweighter(ref_model, ref_optimizer, wnet, wopt, normalize="mean", virtual_loss=virtual_loss)
    for seed in (1, 2, 3):
        got, want = step(method, batches(seed)), reference.step(*batches(seed))
        torch.testing.assert_close(got.weights, want.weights, rtol=0, atol=0)
        assert got.meta_loss == want.meta_loss
    for p, q in zip(method.weight_net.parameters(), wnet.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    grid = torch.linspace(0, 4, 5)
    torch.testing.assert_close(method.weight_curve(grid), reference.weights(grid))


def test_mwnet_draws_meta_batches_only_on_meta_iterations():
    model, optimizer = model_and_optimizer()
    method = create_method("mwnet", model, optimizer, context(), meta_interval=3)
    wanted = []
    for seed in range(6):
        wanted.append(method.wants_meta())
        step(method, batches(seed))
    assert wanted == [True, False, False, True, False, False]


def test_unknown_method_and_bad_options_are_one_line_errors():
    model, optimizer = model_and_optimizer()
    with pytest.raises(ValueError, match=r"unknown method 'nope' \(choose from .*ce.*mwnet"):
        create_method("nope", model, optimizer, context())
    with pytest.raises(ValueError, match="method 'mwnet' has no option 'gamma'"):
        create_method("mwnet", model, optimizer, context(), gamma=2.0)
    with pytest.raises(ValueError, match="option 'meta_lr' must be a number, got 'fast'"):
        create_method("mwnet", model, optimizer, context(), meta_lr="fast")
    with pytest.raises(ValueError, match="option 'normalize' must be one of 'mean', 'sum'"):
        create_method("mwnet", model, optimizer, context(), normalize="max")
    with pytest.raises(ValueError, match="meta_lr must be positive"):
        create_method("mwnet", model, optimizer, context(), meta_lr=0.0)
    with pytest.raises(ValueError, match="method 'ce' has no option 'meta_lr'"):
        create_method("ce", model, optimizer, context(), meta_lr=1e-3)


def test_a_registered_method_plugs_in(monkeypatch):
    import mwnet.methods as registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclass(frozen=True)
    class HalfOptions:
        factor: float = 0.5

    @register_method("half")
    class Half(Method):
        Options = HalfOptions

        def step(self, x, y, x_meta=None, y_meta=None):
            return self.supervised_step(x, y, torch.full((len(y),), self.options.factor))

    assert "half" in list_methods() and method_options("half") == {"factor": float}
    model, optimizer = model_and_optimizer()
    result = create_method("half", model, optimizer, context(), factor=2).step(*batches()[:2])
    assert result.loss == pytest.approx(2 * float(result.losses.mean()), rel=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        register_method("half")(type("Other", (Method,), {}))


def test_option_coercion():
    assert coerce_value(float, 3, "x") == 3.0 and isinstance(coerce_value(float, 3, "x"), float)
    assert coerce_value(int | None, None, "x") is None
    assert coerce_value(tuple[int, ...], [3, 4], "x") == (3, 4)
    assert coerce_value(Literal["a", "b"], "b", "x") == "b"
    for annotation, value in ((int, True), (int, 1.5), (bool, 1), (float, "1"), (str, 3), (Literal[1, 2], True),
                              (tuple[int, ...], "12"), (dict, [1])):
        with pytest.raises(ValueError, match=r"^x "):
            coerce_value(annotation, value, "x")

    @dataclass(frozen=True)
    class Opts:
        a: int = 1
        b: float | None = None

    assert build_options(Opts, {"b": 2}, "thing") == Opts(a=1, b=2.0)
    with pytest.raises(ValueError, match=r"thing has no option 'c' \(options: a, b\)"):
        build_options(Opts, {"c": 1}, "thing")
