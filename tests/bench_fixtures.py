"""Tiny float64 model, batches and optimizers shared by the tests of mwnet.bench."""

from __future__ import annotations

import torch

from mwnet import models
from mwnet.bench.runners import CLASSIFIER_SGD, random_batches

DTYPE = torch.float64


def tiny_model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return models.create("cnn", in_channels=1, input_size=8, channels=(4,), hidden=8).to(DTYPE)


def tiny_batches():
    return random_batches(1, 8, 12, 10, seed=0, dtype=DTYPE)


def optimizers(model, wnet, wlr=0.5):
    opt = torch.optim.SGD(model.parameters(), **CLASSIFIER_SGD)
    wopt = torch.optim.SGD(wnet.parameters(), lr=wlr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return opt, wopt


def assert_states_close(a: torch.nn.Module, b: torch.nn.Module, tol: float) -> None:
    for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        if ta.is_floating_point():
            assert (ta - tb).abs().max().item() < tol, ka
        else:
            assert torch.equal(ta, tb), ka


def wnet_grads(wnet):
    return torch.cat([p.grad.flatten() for p in wnet.parameters()])
