"""The cmwnet method is exactly a MetaReweighter around a class-aware weight net built from the training counts;
its curves are named by head."""

from __future__ import annotations

import torch

from conftest import make_mlp
from mwnet import MetaReweighter
from mwnet.methods import MethodContext, create_method
from mwnet.weighting import ClassAwareWeightNet

N, M, D, K = 12, 8, 5, 4
COUNTS = (300, 290, 40, 3)  # heads by hand: {0, 1}, {2}, {3}


def batches(seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g),
            torch.randn(M, D, generator=g), torch.randint(0, K, (M,), generator=g))


def test_cmwnet_is_a_meta_reweighter_with_the_class_aware_net():
    model = make_mlp(D, 7, K, seed=0, dtype=torch.float32)
    torch.manual_seed(4)
    method = create_method("cmwnet", model, torch.optim.SGD(model.parameters(), lr=0.3),
                           MethodContext(num_classes=K, class_counts=COUNTS), meta_optimizer="adam", meta_lr=0.1,
                           weight_net_hidden=6)
    reference = make_mlp(D, 7, K, seed=0, dtype=torch.float32)
    torch.manual_seed(4)
    wnet = ClassAwareWeightNet([0, 0, 1, 2], hidden=6)
    rw = MetaReweighter(reference, torch.optim.SGD(reference.parameters(), lr=0.3), wnet,
                        torch.optim.Adam(wnet.parameters(), lr=0.1, weight_decay=5e-4))
    for seed in range(3):
        got, want = method.step(*batches(seed)), rw.step(*batches(seed))
        assert torch.equal(got.weights, want.weights) and got.meta_loss == want.meta_loss
    assert method.weight_net.head_of_class.tolist() == [0, 0, 1, 2]
    grid = torch.linspace(0, 3, 5)
    curves = method.head_curves(grid)
    assert list(curves) == ["classes 0, 1 (n 300–290)", "classes 2 (n 40)", "classes 3 (n 3)"]
    torch.testing.assert_close(torch.stack(list(curves.values()), 1), wnet.head_weights(grid))
    labels = torch.tensor([3, 0, 2, 1, 3])
    torch.testing.assert_close(method.sample_weights(grid, labels), wnet(grid, labels))
    assert method.weight_curve(grid) is None
