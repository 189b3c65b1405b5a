"""MetaWeightNet: shapes, range, architecture, and its starting point; the class-aware net (CMW-Net): its heads
against brute-force k-means, its routing, its equality with MetaWeightNet, its hypergradient against finite
differences."""

import copy
import itertools
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_matches_central_differences, assert_states_close, make_mlp
from mwnet import MetaReweighter, MetaWeightNet
from mwnet.hypergradients import EXACT_HYPERGRADIENTS
from mwnet.weighting import ClassAwareWeightNet, class_heads


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


# ---- the class-aware weight net (CMW-Net) ------------------------------------------------------------------


def brute_force_kmeans_cost(counts, k):
    """The least within-cluster sum of squares over every assignment of the classes to k labels (exact)."""
    best = None
    for labels in itertools.product(range(k), repeat=len(counts)):
        cost = Fraction(0)
        for c in range(k):
            members = [counts[i] for i, label in enumerate(labels) if label == c]
            if members:
                mean = Fraction(sum(members), len(members))
                cost += sum((m - mean) ** 2 for m in members)
        best = cost if best is None else min(best, cost)
    return best


def clustering_cost(counts, heads):
    cost = Fraction(0)
    for h in set(heads):
        members = [c for c, g in zip(counts, heads) if g == h]
        mean = Fraction(sum(members), len(members))
        cost += sum((m - mean) ** 2 for m in members)
    return cost


def test_class_heads_are_the_kmeans_clusters_of_a_hand_made_count_vector():
    counts = [500, 480, 300, 20, 25, 310, 10]
    # By hand: {500, 480} (head 0, the largest classes), {300, 310} (head 1), {20, 25, 10} (head 2).
    assert class_heads(counts) == (0, 0, 1, 2, 2, 1, 2)
    assert class_heads(counts, 2) == (0, 0, 0, 1, 1, 0, 1)
    assert class_heads(counts, 1) == (0,) * 7
    # The paper's CIFAR-10 IF 100 counts: the largest class alone, the next two, the tail.
    assert class_heads([4990, 2991, 1793, 1075, 644, 386, 231, 138, 83, 49]) == (0, 1, 1, 2, 2, 2, 2, 2, 2, 2)
    # Equal counts share a head; fewer distinct counts than heads give one head each.
    assert class_heads([7, 7, 7]) == (0, 0, 0) and class_heads([9, 2, 9, 2]) == (0, 1, 0, 1)


@pytest.mark.parametrize("seed", range(6))
def test_class_heads_reach_the_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 60, (7,), generator=g).tolist()
    heads = class_heads(counts)
    assert clustering_cost(counts, heads) == brute_force_kmeans_cost(counts, 3)
    # Heads are numbered from the largest classes down.
    means = [sum(c for c, h in zip(counts, heads) if h == g) / heads.count(g) for g in sorted(set(heads))]
    assert means == sorted(means, reverse=True)


def test_samples_are_routed_to_the_head_of_their_class():
    counts = [500, 480, 300, 20, 25, 310, 10]
    torch.manual_seed(0)
    net = ClassAwareWeightNet(class_heads(counts), hidden=6).double()
    losses = torch.linspace(0, 3, 7, dtype=torch.float64)
    targets = torch.tensor([3, 0, 5, 6, 1, 2, 4])
    # By hand: trunk, then the head of each sample's class.
    h = torch.relu(losses[:, None] @ net.trunk.weight.T + net.trunk.bias)
    expected = [torch.sigmoid(h[i] @ net.heads[head].weight[0] + net.heads[head].bias[0])
                for i, head in enumerate([2, 0, 1, 2, 0, 1, 2])]
    torch.testing.assert_close(net(losses, targets), torch.stack(expected), rtol=0, atol=1e-15)
    assert net.head_weights(losses).shape == (7, 3)


def test_one_head_with_no_class_input_is_meta_weight_net_in_the_core():
    x, y, xm, ym = (torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,)),
                    torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,)))
    runs = []
    for make in (lambda: MetaWeightNet(hidden=9), lambda: ClassAwareWeightNet(hidden=9)):
        model = make_mlp(5, 16, 3, seed=0)
        torch.manual_seed(1)
        wnet = make().double()
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
        rw = MetaReweighter(model, opt, wnet, torch.optim.Adam(wnet.parameters(), lr=0.05))
        results = [rw.step(x + 0.1 * i, y, xm, ym) for i in range(3)]
        runs.append((model, wnet, results))
    (model_a, wnet_a, results_a), (model_b, wnet_b, results_b) = runs
    assert_states_close(model_a, model_b)
    for p, q in zip(wnet_a.parameters(), wnet_b.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(results_a, results_b):
        assert torch.equal(a.weights, b.weights) and a.meta_loss == b.meta_loss


def class_aware_meta_objective(model, wnet, x, y, xm, ym, lr):
    """L_meta(ŵ(Θ)) written out plainly for V(ℓ, y): deepcopy, virtual SGD step on Σ ṽᵢ ℓᵢ (Z = Σ v), meta loss."""
    clone = copy.deepcopy(model).train()
    losses = F.cross_entropy(clone(x), y, reduction="none")
    v = wnet(losses.detach(), y)
    grads = torch.autograd.grad(((v / v.sum()).detach() * losses).sum(), list(clone.parameters()))
    with torch.no_grad():
        for p, g in zip(clone.parameters(), grads):
            p -= lr * g
    return float(F.cross_entropy(clone(xm), ym).detach())


@pytest.mark.parametrize("mode", EXACT_HYPERGRADIENTS)
def test_hypergradient_through_a_class_aware_net_matches_central_differences(mode):
    g = torch.Generator().manual_seed(0)
    x, xm = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    y, ym = torch.randint(0, 3, (12,), generator=g), torch.randint(0, 3, (8,), generator=g)
    model = make_mlp(5, 16, 3, seed=0)
    reference = copy.deepcopy(model)
    torch.manual_seed(2)
    wnet = ClassAwareWeightNet(class_heads([40, 12, 3]), hidden=7).double()
    theta = [p.detach().clone() for p in wnet.parameters()]
    # lr 0 leaves Θ in place, so .grad is the hypergradient at Θ.
    rw = MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.4), wnet,
                        torch.optim.SGD(wnet.parameters(), lr=0.0), hypergradient=mode)
    rw.step(x, y, xm, ym)
    hyper = [p.grad.clone() for p in wnet.parameters()]
    assert all(gr.abs().sum() > 0 for gr in hyper)  # every head is used and gets a gradient
    assert_matches_central_differences(
        wnet, theta, hyper, lambda probe: class_aware_meta_objective(reference, probe, x, y, xm, ym, 0.4), g)


def test_class_aware_net_refuses_bad_input():
    with pytest.raises(ValueError, match="heads must number the heads 0, 1"):
        ClassAwareWeightNet([0, 2, 2])
    with pytest.raises(ValueError, match="needs the samples' labels"):
        ClassAwareWeightNet([0, 1])(torch.zeros(2))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\)"):
        ClassAwareWeightNet([0, 1])(torch.zeros(2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="counts must be"):
        class_heads([3, -1])
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        class_heads([3, 1], 0)
