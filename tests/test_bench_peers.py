"""The peer rows (higher, torchopt, Betty) do what their semantics lines say, and a missing peer is a note.

Each installed peer is held to an independent reference in float64: the exact peers to the official yardstick
(`mwnet.reference.official_step`), Betty to the formula its line states. CI installs none of them, so these tests
skip there, except those of the skip notes, which need no peer.
"""

from __future__ import annotations

import copy
import importlib
import sys

import pytest
import torch
import torch.nn.functional as F

from bench_fixtures import DTYPE, assert_states_close, optimizers, tiny_batches, tiny_model, wnet_grads
from mwnet import MetaWeightNet
from mwnet.bench import SpeedConfig, format_markdown, run_speed_benchmark
from mwnet.bench.peers import PEER_METHODS, PEERS, build_peer, unavailable
from mwnet.losses import normalize_weights
from mwnet.reference import official_step


def start():
    model = tiny_model()
    torch.manual_seed(1)
    return model, MetaWeightNet(hidden=16).to(DTYPE)


def peer_and_official(method: str, normalize: str, steps: int):
    """`steps` iterations of the peer row and of the official step from the same model, weight net and batches."""
    x, y, xm, ym = batches = tiny_batches()
    model, wnet = start()
    ref_model, ref_wnet = copy.deepcopy(model), copy.deepcopy(wnet)
    ref_opt, ref_wopt = optimizers(ref_model, ref_wnet)
    opt, wopt = optimizers(model, wnet)
    peer = build_peer(method, model, opt, wnet, wopt, batches, normalize)
    for _ in range(steps):
        peer.step()
        official_step(ref_model, ref_opt, ref_wnet, ref_wopt, x, y, xm, ym, normalize=normalize)
    return model, wnet, peer, ref_model, ref_wnet


def parameters_close(a: torch.nn.Module, b: torch.nn.Module, tol: float) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert (p.detach() - q.detach()).abs().max().item() < tol, name


@pytest.mark.parametrize("normalize", ["mean", "sum"])
@pytest.mark.parametrize("method", ["higher", "torchopt"])
def test_exact_peer_equals_official_step(method, normalize):
    pytest.importorskip(method)
    model, wnet, peer, ref_model, ref_wnet = peer_and_official(method, normalize, steps=2)
    hyper = wnet_grads(ref_wnet)
    assert hyper.abs().max() > 1e-6  # the last step's hypergradient is not trivially zero
    torch.testing.assert_close(wnet_grads(wnet), hyper, rtol=1e-8, atol=1e-12)
    assert_states_close(wnet, ref_wnet, 1e-8)
    parameters_close(model, ref_model, 1e-8)
    # The classifier's optimizer still steps the model's own parameters (torchopt swapped them and back).
    assert [id(p) for g in peer.optimizer.param_groups for p in g["params"]] == [id(p) for p in model.parameters()]


def test_running_statistics_move_as_the_semantics_lines_say():
    """higher's functional copy clones the buffers (they move once, as in the official code); torchopt's virtual and
    meta forwards use the model's own (they move three times)."""
    pytest.importorskip("higher")
    pytest.importorskip("torchopt")
    model, _, _, ref_model, _ = peer_and_official("higher", "mean", steps=1)
    assert "once per step" in PEERS["higher"].semantics
    assert_states_close(model, ref_model, 1e-12)  # buffers included
    model, _, _, ref_model, _ = peer_and_official("torchopt", "mean", steps=1)
    assert "three times per step" in PEERS["torchopt"].semantics
    mean, ref_mean = model.features[1].running_mean, ref_model.features[1].running_mean
    assert (mean - ref_mean).abs().max() > 1e-4


def test_betty_computes_the_hypergradient_its_line_states(capsys):
    """Θ's gradient is −∂²L_train/∂Θ∂w · ∇L_meta(w′) at the updated w′, V's input differentiated too (a finite
    difference of length 0.01, so to about 1 %); it is not the exact Meta-Weight-Net hypergradient."""
    pytest.importorskip("betty")
    x, y, xm, ym = batches = tiny_batches()
    model, wnet = start()
    theta0 = copy.deepcopy(wnet)
    opt, wopt = optimizers(model, wnet)
    peer = build_peer("betty", model, opt, wnet, wopt, batches, "mean")
    seen = {}
    peer.weight_optimizer.register_step_pre_hook(lambda *_: seen.update(grad=wnet_grads(wnet).clone()))
    w0 = [p.detach().clone() for p in model.parameters()]
    peer.step()
    assert capsys.readouterr().out == ""  # Betty's set-up log is muted
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), w0))  # the classifier stepped
    assert all(not torch.equal(p, q) for p, q in zip(wnet.parameters(), theta0.parameters()))  # and Θ

    # The stated formula, by autograd at w′ (the model after Betty's step) and the Θ the step started from.
    w, theta = list(model.parameters()), list(theta0.parameters())
    meta_grad = torch.autograd.grad(F.cross_entropy(model(xm), ym), w)
    losses = F.cross_entropy(model(x), y, reduction="none")
    train = (normalize_weights(theta0(losses), "mean") * losses).sum()  # V's input attached
    grads = torch.autograd.grad(train, w, create_graph=True)
    along = sum((g * v).sum() for g, v in zip(grads, meta_grad))
    stated = -torch.cat([t.flatten() for t in torch.autograd.grad(along, theta)])
    betty = seen["grad"]
    assert (betty - stated).norm() < 0.05 * stated.norm()

    # The exact hypergradient of the same first iteration (official step from the same start) is another vector.
    ref_model, ref_wnet = start()
    ref_opt, ref_wopt = optimizers(ref_model, ref_wnet)
    official_step(ref_model, ref_opt, ref_wnet, ref_wopt, x, y, xm, ym, normalize="mean")
    exact = wnet_grads(ref_wnet)
    assert (betty - exact).norm() > 0.5 * exact.norm()
    assert PEERS["betty"].hypergradient.startswith("approximate")


def test_missing_peer_is_a_note_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "higher", None)  # `import higher` now raises ImportError
    assert unavailable("higher") == "not installed: pip install higher"
    config = SpeedConfig(models=("cnn",), methods=("ce", "higher"), batch_size=4, steps=1, warmup=0, threads=1,
                         memory=False, profile_model=None)
    report = run_speed_benchmark(config)
    assert [r.method for r in report.results[0].methods] == ["ce"]
    (note,) = report.peers
    assert note.method == "higher" and note.version is None
    text = format_markdown(report)
    assert "**higher**: not timed; not installed: pip install higher" in text
    assert "higher (peer" not in text  # no row


@pytest.mark.parametrize("error", [AttributeError("module 'torch' has no attribute '_six'"),
                                   ImportError("cannot import name '_six' from 'torch'"),
                                   ModuleNotFoundError("No module named 'torch._six'", name="torch._six")])
def test_peer_that_fails_to_import_says_why(monkeypatch, error):
    """Installed but broken (an import from torch that no longer exists) is not "not installed"."""
    real = importlib.import_module

    def broken(name, *args):
        if name == "torchopt":
            raise error
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    assert unavailable("torchopt") == f"unusable with torch {torch.__version__}: {type(error).__name__}: {error}"


def test_installed_peers_get_rows_and_their_semantics_in_the_report():
    installed = [m for m in PEER_METHODS if unavailable(m) is None]
    if not installed:
        pytest.skip("no peer installed (pip install 'mwnet[bench]')")
    config = SpeedConfig(models=("cnn",), methods=("ce", *installed), batch_size=4, steps=1, warmup=0, threads=1,
                         memory=False, profile_model=None)
    report = run_speed_benchmark(config)
    rows = report.results[0].methods
    assert [r.method for r in rows] == ["ce", *installed]
    assert all(r.median_ms > 0 for r in rows)
    text = format_markdown(report)
    for method in installed:
        peer = PEERS[method]
        assert f"| {peer.label} | {peer.hypergradient} |" in text
        assert peer.semantics in text
