"""MetaWeightNet: shapes, range, architecture, and its starting point."""

import pytest
import torch
from torch import nn

from mwnet import MetaWeightNet


def test_default_is_the_papers_1_100_1_mlp_with_sigmoid_output():
    net = MetaWeightNet()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1, 100), (100, 1)]
    assert sum(p.numel() for p in net.parameters()) == 100 + 100 + 100 + 1


@pytest.mark.parametrize("hidden", [(100, 100), (10, 10), (3,)])
def test_tuple_hidden_builds_a_deeper_net(hidden):
    net = MetaWeightNet(hidden=hidden)
    widths = [m.out_features for m in net.modules() if isinstance(m, nn.Linear)]
    assert widths == [*hidden, 1]


def test_accepts_n_and_n1_and_returns_weights_in_0_1():
    torch.manual_seed(0)
    net = MetaWeightNet()
    losses = torch.linspace(0, 20, 50)
    flat, column = net(losses), net(losses[:, None])
    assert flat.shape == (50,)
    torch.testing.assert_close(flat, column)
    assert ((flat > 0) & (flat < 1)).all()
    # Zero biases and a ReLU of a one-dimensional input: V(0) = sigmoid(0) exactly.
    assert net(torch.zeros(1)).item() == pytest.approx(0.5, abs=1e-7)


def test_output_matches_a_hand_written_forward():
    torch.manual_seed(1)
    net = MetaWeightNet(hidden=(4, 3)).double()
    x = torch.rand(7, dtype=torch.float64) * 5
    l1, l2, l3 = (m for m in net.modules() if isinstance(m, nn.Linear))
    h = torch.relu(x[:, None] @ l1.weight.T + l1.bias)
    h = torch.relu(h @ l2.weight.T + l2.bias)
    expected = torch.sigmoid(h @ l3.weight.T + l3.bias).squeeze(1)
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("hidden", [0, (), (5, -1), 2.5])
def test_bad_hidden_is_named(hidden):
    with pytest.raises(ValueError, match="hidden must be"):
        MetaWeightNet(hidden=hidden)


def test_bad_input_shape_is_named():
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 1\)"):
        MetaWeightNet()(torch.zeros(3, 2))
