"""Mixed precision: bf16 autocast on CPU gives the float32 hypergradient within bf16 tolerance; fp16 needs CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_cnn
from mwnet import MetaReweighter, MetaWeightNet
from mwnet.hypergradients import HYPERGRADIENTS


def hypergradient(model, wnet, precision: str, mode: str, batches) -> tuple[torch.Tensor, float]:
    """∇Θ L_meta at Θ (a weight optimizer with lr 0 leaves Θ and keeps .grad) and the meta loss."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rw = MetaReweighter(model, opt, wnet, torch.optim.SGD(wnet.parameters(), lr=0.0), hypergradient=mode,
                        precision=precision)
    result = rw.step(*batches)
    return torch.cat([p.grad.flatten() for p in wnet.parameters()]), result.meta_loss


def cnn_batches(n: int = 32, m: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g),
            torch.randn(m, 1, 8, 8, generator=g), torch.randint(0, 3, (m,), generator=g))


@pytest.mark.parametrize("mode", HYPERGRADIENTS)
def test_bf16_hypergradient_is_the_float32_one_within_bf16_tolerance(mode):
    model = make_cnn(0, dtype=torch.float32)
    torch.manual_seed(1)
    wnet = MetaWeightNet(hidden=16)
    batches = cnn_batches()
    exact, meta32 = hypergradient(copy.deepcopy(model), copy.deepcopy(wnet), "fp32", mode, batches)
    approx, meta16 = hypergradient(copy.deepcopy(model), copy.deepcopy(wnet), "bf16", mode, batches)
    assert approx.dtype == torch.float32  # the weight net and its gradient stay in float32
    # bf16 keeps 8 bits of mantissa (relative spacing 2^-8 ≈ 0.4 %); a sum of many such products stays within
    # a few percent of the float32 value, and far from it if a pass had run in the wrong dtype or not at all.
    assert (approx - exact).norm() / exact.norm() < 0.1
    assert abs(meta16 - meta32) < 0.02 * abs(meta32)


def test_bf16_moves_the_model_like_float32_and_keeps_float32_parameters():
    model = make_cnn(0, dtype=torch.float32)
    torch.manual_seed(1)
    wnet = MetaWeightNet(hidden=16)
    states = []
    for precision in ("fp32", "bf16"):
        m, w = copy.deepcopy(model), copy.deepcopy(wnet)
        rw = MetaReweighter(m, torch.optim.SGD(m.parameters(), lr=0.1), w, torch.optim.Adam(w.parameters(), 1e-3),
                            precision=precision)
        for step in range(3):
            rw.step(*cnn_batches(seed=step))
        states.append(m)
    for (name, a), b in zip(states[0].named_parameters(), states[1].parameters()):
        assert b.dtype == torch.float32
        assert (a - b).abs().max() < 2e-2 * max(1.0, a.abs().max().item()), name


def test_fp16_needs_cuda_and_an_unknown_precision_is_named():
    model = make_cnn(0, dtype=torch.float32)
    wnet = MetaWeightNet(hidden=4)
    opt, wopt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(wnet.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="precision must be one of"):
        MetaReweighter(model, opt, wnet, wopt, precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
            MetaReweighter(model, opt, wnet, wopt, precision="fp16").step(*cnn_batches())


def test_a_bf16_training_run_reaches_the_float32_accuracy(tmp_path):
    """MW-Net on noisy digits for a few epochs: bf16 autocast ends within noise of float32 (the same seed)."""
    from mwnet.experiment import resolve_config, train

    accuracy = {}
    for precision in ("fp32", "bf16"):
        config = resolve_config("demo-digits", {"epochs": 3, "lr_milestones": (2,), "precision": precision})
        summary = train(config, tmp_path / precision, log=lambda _line: None)
        accuracy[precision] = summary["best_test_acc"]
    assert accuracy["fp32"] > 70  # the run learned something: the comparison below is not between two failures
    assert abs(accuracy["bf16"] - accuracy["fp32"]) < 3.0, accuracy
