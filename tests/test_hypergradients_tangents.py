"""The tangent-only dual pass: the same sensitivities as the full forward-mode pass, with less work."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import assert_states_close, make_cnn
from mwnet import MetaReweighter, MetaWeightNet
from mwnet.hypergradients import tangents

DTYPE = torch.float64


class Awkward(nn.Module):
    """What the cache must survive: grouped and strided convolutions, a linear layer followed by an in-place
    ReLU, a layer called twice in one forward, batch norm, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.shared = nn.Linear(16, 16)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.grouped(self.conv(x)))).flatten(1)
        h = self.act(self.shared(h))
        h = self.act(self.shared(self.drop(h)))
        return self.head(h)


def batches(seed: int, shape=(2, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(12, *shape, generator=g, dtype=DTYPE), torch.randint(0, 3, (12,), generator=g),
            torch.randn(8, *shape, generator=g, dtype=DTYPE), torch.randint(0, 3, (8,), generator=g))


@pytest.mark.parametrize("kind", ["awkward", "cnn"])
def test_tangent_only_pass_equals_the_full_dual_pass(kind, monkeypatch):
    torch.manual_seed(0)
    model = Awkward().to(DTYPE) if kind == "awkward" else make_cnn(0)
    shape = (2, 4, 4) if kind == "awkward" else (1, 6, 6)
    products = []
    original = tangents._product
    monkeypatch.setattr(tangents, "_product", lambda *args: products.append(1) or original(*args))
    states = []
    for tangent_only in (False, True):
        torch.manual_seed(1)
        m, wnet = copy.deepcopy(model), MetaWeightNet(hidden=(7,)).to(DTYPE)
        rw = MetaReweighter(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), wnet,
                            torch.optim.SGD(wnet.parameters(), lr=0.05, momentum=0.9), tangent_only=tangent_only)
        torch.manual_seed(2)
        for step in range(2):
            rw.step(*batches(step, shape))
        states.append((m, wnet))
        if not tangent_only:
            assert products == []
    assert len(products) > 0  # the tangent-only layers ran
    assert_states_close(states[0][1], states[1][1], 1e-12)
    assert_states_close(states[0][0], states[1][0], 1e-12)


class Norms(nn.Module):
    """Every kind of batch norm the tangent-only pass meets: 2-d and 1-d, without affine parameters, with frozen
    ones, without running statistics, on running statistics (a sub-module in eval mode: its ordinary forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.plain = nn.BatchNorm2d(4, affine=False)
        self.frozen = nn.BatchNorm2d(4)
        self.stateless = nn.BatchNorm2d(4, track_running_stats=False, momentum=None)
        self.fc = nn.Linear(64, 8)
        self.bn1d = nn.BatchNorm1d(8)
        self.evaluated = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.frozen.weight.uniform_(0.5, 1.5)
            self.frozen.bias.uniform_(-0.5, 0.5)
            self.evaluated.running_mean.uniform_(-0.2, 0.2)
        self.evaluated.eval()

    def forward(self, x):
        h = self.stateless(self.frozen(self.plain(self.conv(x))))
        h = torch.relu(self.bn1d(self.fc(h.flatten(1))))
        return self.head(self.evaluated(h))

    def train(self, mode: bool = True):  # the eval-mode sub-module stays in eval mode
        super().train(mode)
        self.evaluated.eval()
        return self


def test_batch_norm_tangents_equal_the_full_dual_pass(monkeypatch):
    torch.manual_seed(0)
    model = Norms().to(DTYPE)
    calls = []
    original = tangents.batch_norm_dual
    monkeypatch.setattr(tangents, "batch_norm_dual", lambda module, *args: calls.append(module)
                        or original(module, *args))
    states = []
    for tangent_only in (False, True):
        torch.manual_seed(1)
        m, wnet = copy.deepcopy(model), MetaWeightNet(hidden=(7,)).to(DTYPE)
        rw = MetaReweighter(m, torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1,
                                               momentum=0.9), wnet,
                            torch.optim.SGD(wnet.parameters(), lr=0.05, momentum=0.9), tangent_only=tangent_only)
        for step in range(2):
            rw.step(*batches(step))
        states.append((m, wnet))
    m = states[1][0]
    # Every batch-statistics norm took the tangent-only path in both steps; the eval-mode one never did.
    assert [id(c) for c in calls] == 2 * [id(m.plain), id(m.frozen), id(m.stateless), id(m.bn1d)]
    assert_states_close(states[0][1], states[1][1], 1e-12)
    assert_states_close(states[0][0], states[1][0], 1e-12)


def test_batch_norm_dual_is_forward_mode_ad_of_batch_norm():
    """The formulas themselves, against torch's forward-mode AD of F.batch_norm (γ̇, β̇ and ẋ all non-zero)."""
    import torch.autograd.forward_ad as fwAD
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    bn = nn.BatchNorm2d(5).to(DTYPE)
    x, dx = (torch.randn(6, 5, 3, 4, generator=g, dtype=DTYPE) * 3 + 1 for _ in range(2))
    weight, bias = torch.rand(5, generator=g, dtype=DTYPE) + 0.5, torch.randn(5, generator=g, dtype=DTYPE)
    dweight, dbias = torch.randn(5, generator=g, dtype=DTYPE), torch.randn(5, generator=g, dtype=DTYPE)
    with fwAD.dual_level():
        y = F.batch_norm(fwAD.make_dual(x, dx), None, None, fwAD.make_dual(weight, dweight),
                         fwAD.make_dual(bias, dbias), True, 0.1, bn.eps)
        expected, expected_tangent = fwAD.unpack_dual(y)
        del bn.weight, bn.bias
        bn.weight, bn.bias = fwAD.make_dual(weight, dweight), fwAD.make_dual(bias, dbias)
        got, got_tangent = tangents.batch_norm_dual(bn, x, dx)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_tangent, expected_tangent, rtol=0, atol=1e-12)
    assert expected_tangent.abs().max() > 0.1


def test_batch_norm_outputs_are_not_kept():
    """Nothing else keeps a batch norm's output alive through the step, so the cache must not: it holds the
    convolution and linear outputs (which autograd saves anyway) and only a list of the norms."""
    model = Norms().to(DTYPE)
    cache = tangents.PrimalCache()
    with cache.recording(model):
        model(batches(0)[0])
    assert set(cache.outputs) == {model.conv, model.fc, model.head}
    assert cache.norms == [model.plain, model.frozen, model.stateless, model.bn1d, model.evaluated]
