"""The benchmark's timed steps really are the steps they claim to be.

Timings are never asserted (they depend on the machine); what is timed is checked against independent references:
the official yardstick (mwnet.reference) and the mwnet exact modes give the same update in float64, the CE step is
a hand-written Nesterov SGD step.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bench_fixtures import DTYPE, assert_states_close, optimizers, tiny_batches, tiny_model, wnet_grads
from mwnet import MetaReweighter, MetaWeightNet
from mwnet.bench.runners import CLASSIFIER_SGD, METHODS, build_runners
from mwnet.reference import official_step


@pytest.mark.parametrize("normalize", ["mean", "sum"])
@pytest.mark.parametrize("mode", ["double-backward", "forward"])
def test_official_yardstick_equals_metareweighter_update(mode, normalize):
    x, y, xm, ym = tiny_batches()
    model = tiny_model()
    torch.manual_seed(1)
    wnet = MetaWeightNet(hidden=16).to(DTYPE)
    ref_model, ref_wnet = copy.deepcopy(model), copy.deepcopy(wnet)
    opt, wopt = optimizers(model, wnet)
    ref_opt, ref_wopt = optimizers(ref_model, ref_wnet)
    rw = MetaReweighter(model, opt, wnet, wopt, normalize=normalize, hypergradient=mode)
    for _ in range(2):
        meta_loss = rw.step(x, y, xm, ym).meta_loss
        ref_meta_loss = official_step(ref_model, ref_opt, ref_wnet, ref_wopt, x, y, xm, ym, normalize=normalize)
        assert abs(meta_loss - ref_meta_loss) < 1e-12
    hyper = wnet_grads(wnet)
    assert hyper.abs().max() > 1e-6  # a hypergradient that is not trivially zero
    torch.testing.assert_close(hyper, wnet_grads(ref_wnet), rtol=1e-9, atol=1e-12)
    assert_states_close(wnet, ref_wnet, 1e-10)
    assert_states_close(model, ref_model, 1e-10)  # parameters and batch-norm statistics


def test_every_runner_performs_its_step():
    batches = x, y, _, _ = tiny_batches()
    model = tiny_model()
    runners = build_runners(model, batches, methods=METHODS, interval=3)
    assert list(runners) == list(METHODS)
    theta0 = torch.cat([p.detach().flatten() for p in runners["official"].weight_net.parameters()])
    for runner in runners.values():
        assert runner.model is not model  # every method on its own copy
        runner.step()

    # CE: one Nesterov SGD step with weight decay from zero momentum, p ← p − lr (1 + μ) (g + λ p), by hand.
    grads = torch.autograd.grad(F.cross_entropy(model.train()(x), y), list(model.parameters()))
    lr, mu, wd = CLASSIFIER_SGD["lr"], CLASSIFIER_SGD["momentum"], CLASSIFIER_SGD["weight_decay"]
    for p, g, q in zip(model.parameters(), grads, runners["ce"].model.parameters()):
        torch.testing.assert_close(q.detach(), p.detach() - lr * (1 + mu) * (g + wd * p.detach()), rtol=1e-9,
                                   atol=1e-12)

    # The exact rows agree with the yardstick; the approximate ones move Θ in nearly the same direction.
    official = runners["official"]
    for method in ("forward", "double-backward"):
        torch.testing.assert_close(wnet_grads(runners[method].weight_net), wnet_grads(official.weight_net),
                                   rtol=1e-9, atol=1e-13)
        assert_states_close(runners[method].model, official.model, 1e-10)
    fd = wnet_grads(runners["finite-difference"].weight_net)
    exact = wnet_grads(official.weight_net)
    assert (fd - exact).norm() < 1e-4 * exact.norm()
    last = wnet_grads(runners["last-layer"].weight_net)
    assert last.norm() > 0 and not torch.allclose(last, exact)

    # Every meta method moved Θ and the model; the interval row ran a whole cycle of 3 iterations, one meta.
    for method in METHODS[1:]:
        theta = torch.cat([p.detach().flatten() for p in runners[method].weight_net.parameters()])
        assert not torch.equal(theta, theta0), method
    for runner in runners.values():
        assert not torch.equal(runner.model.classifier.weight, model.classifier.weight), runner.method
    interval = runners["interval"]
    assert interval.calls == 3 and interval.reweighter.iteration == 3
    assert interval.reweighter.meta_interval == 3
    assert [runners[m].reweighter.iteration for m in ("forward", "last-layer")] == [1, 1]


def test_meta_rows_state_their_normalisation():
    runners = build_runners(tiny_model(), tiny_batches(), methods=("forward", "interval"))
    assert {r.reweighter.normalize for r in runners.values()} == {"mean"}


def test_bf16_rows_run_the_classifier_under_autocast():
    """--precision bf16: mwnet rows through MetaReweighter(precision=...), CE, official and peers under autocast."""
    model = tiny_model().float()
    batches = tuple(t.float() if t.is_floating_point() else t for t in tiny_batches())
    runners = build_runners(model, batches, methods=("ce", "official", "forward"), precision="bf16")
    assert runners["forward"].reweighter.precision == "bf16"
    for runner in runners.values():
        seen: list[torch.dtype] = []
        runner.model.classifier.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.dtype))
        runner.step()
        assert seen and set(seen) == {torch.bfloat16}, runner.method
        assert all(p.dtype == torch.float32 for p in runner.model.parameters())  # float32 master weights
