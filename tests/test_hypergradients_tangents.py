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
