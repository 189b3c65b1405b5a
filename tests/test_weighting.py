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


def test_default_initialisation_has_the_official_distribution():
    # Both official repositories build VNet from nn.Linear and never re-initialise it: U(−1/√fan_in, 1/√fan_in).
    torch.manual_seed(0)
    first, second = (m for m in MetaWeightNet().modules() if isinstance(m, nn.Linear))
    for layer, bound in ((first, 1.0), (second, 0.1)):
        for p in (layer.weight.detach(), layer.bias.detach()):
            assert p.abs().max() <= bound
            assert (p != 0).any()
    # Spread over the whole interval, as 100 uniform draws are (Xavier-normal, std 0.14, stays well inside ±0.9).
    assert first.weight.abs().max() > 0.9 and first.bias.abs().max() > 0.9
    assert second.weight.abs().max() > 0.09


def test_xavier_initialisation_starts_with_zero_biases():
    torch.manual_seed(0)
    net = MetaWeightNet(init="xavier")
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    # Xavier-normal first layer: std √(2 / (1 + 100)) ≈ 0.14.
    assert abs(linears[0].weight.std().item() / (2 / 101) ** 0.5 - 1) < 0.3
    # Zero biases and a ReLU of a one-dimensional input: V(0) = sigmoid(0) exactly.
    assert net(torch.zeros(1)).item() == pytest.approx(0.5, abs=1e-7)
    assert "init='xavier'" in repr(net)


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


def test_bad_init_is_named():
    with pytest.raises(ValueError, match="init must be one of default, xavier, got 'kaiming'"):
        MetaWeightNet(init="kaiming")


def test_bad_input_shape_is_named():
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 1\)"):
        MetaWeightNet()(torch.zeros(3, 2))
