"""frozen-vnet: an earlier run's V reused frozen. Its step against a hand-written weighted CE step, V bit-identical
after training, no meta set needed, and every source without a reusable V refused with one line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cli_runner import run as run_cli
from conftest import assert_states_close, make_mlp, save_weight_net_run
from mwnet import MetaWeightNet
from mwnet.experiment import resolve_config, train
from mwnet.experiment.checkpoint import load_checkpoint, save_checkpoint
from mwnet.methods import MethodContext, create_method
from mwnet.methods.frozen_vnet import WeightNetSourceError, load_weight_net

# Digits with 40 % uniform noise and no meta set at all, a small MLP, one epoch.
TINY_FROZEN = {"dataset": "digits", "noise": "uniform:0.4", "num_meta": 0, "model": "mlp",
               "model_options": {"hidden": [32]}, "epochs": 1, "batch_size": 100, "device": "cpu",
               "method": "frozen-vnet"}


def weight_net(seed: int = 0) -> MetaWeightNet:
    torch.manual_seed(seed)
    return MetaWeightNet(hidden=(8, 4))  # a deeper V: its widths must be read from the checkpoint


@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_a_step_is_weighted_cross_entropy_with_the_frozen_weights(tmp_path, normalize):
    source = save_weight_net_run(tmp_path / "v", weight_net(), normalize=normalize)
    model = make_mlp(5, 7, 3, dtype=torch.float32)
    reference = make_mlp(5, 7, 3, dtype=torch.float32)
    sgd = {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-3}
    optimizer, reference_optimizer = (torch.optim.SGD(m.parameters(), **sgd) for m in (model, reference))
    method = create_method("frozen-vnet", model, optimizer, MethodContext(3, (4, 4, 4)), weight_net_from=str(source))
    v = weight_net()
    v_before = {k: t.clone() for k, t in method.weight_net.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(12, 5, generator=g), torch.randint(0, 3, (12,), generator=g)
        result = method.step(x, y)
        losses = F.cross_entropy(reference(x), y, reduction="none")
        with torch.no_grad():
            weights = v(losses)
        z = weights.sum() if normalize == "sum" else 12
        loss = (weights * losses).sum() / z
        reference_optimizer.zero_grad()
        loss.backward()
        reference_optimizer.step()
        assert result.loss == pytest.approx(float(loss.detach()), rel=1e-6)
        torch.testing.assert_close(result.weights, weights, rtol=0, atol=0)
        assert not result.meta_updated and not method.wants_meta()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert_states_close(method.weight_net.state_dict(), v_before)  # bit-identical
    assert all(p.grad is None and not p.requires_grad for p in method.weight_net.parameters())
    grid = torch.linspace(0, 4, 5)
    torch.testing.assert_close(method.weight_curve(grid), v(grid).detach(), rtol=0, atol=0)


def test_the_first_third_of_the_epochs_is_plain_cross_entropy(tmp_path):
    source = save_weight_net_run(tmp_path / "v", weight_net())
    model, twin = make_mlp(5, 7, 3, dtype=torch.float32), make_mlp(5, 7, 3, dtype=torch.float32)
    method = create_method("frozen-vnet", model, torch.optim.SGD(model.parameters(), lr=0.3),
                           MethodContext(3, (4, 4, 4), epochs=7), weight_net_from=str(source))
    ce = create_method("ce", twin, torch.optim.SGD(twin.parameters(), lr=0.3), MethodContext(3, (4, 4, 4)))
    assert method.warmup_epochs == 2  # 7 // 3
    x, y = torch.randn(12, 5, generator=torch.Generator().manual_seed(2)), torch.arange(12) % 3
    for epoch in range(2):
        method.start_epoch(epoch)
        a, b = method.step(x, y), ce.step(x, y)
        assert torch.equal(a.weights, torch.ones(12)) and a.loss == pytest.approx(b.loss, rel=1e-6)
    method.start_epoch(2)
    with torch.no_grad():
        expected = weight_net()(F.cross_entropy(model(x), y, reduction="none"))
    torch.testing.assert_close(method.step(x, y).weights, expected, rtol=0, atol=0)
    explicit = create_method("frozen-vnet", model, torch.optim.SGD(model.parameters(), lr=0.3),
                             MethodContext(3, (4, 4, 4), epochs=7), weight_net_from=str(source),
                             weight_net_warmup_epochs=0)
    assert explicit.warmup_epochs == 0 and explicit.weighting


def test_a_run_needs_no_meta_set_and_never_changes_v(tmp_path):
    source = save_weight_net_run(tmp_path / "source", weight_net())
    source_bytes = (source / "checkpoint.pt").read_bytes()
    summary = train(resolve_config(None, {**TINY_FROZEN, "weight_net_from": str(source)}), tmp_path / "run")
    assert summary["meta_size"] == 0 and summary["method"] == "frozen-vnet" and summary["completed"]
    assert summary["train_size"] == 1437  # digits' 1,797 less the 20 % test holdout: nothing carved for a meta set
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["method"]
    assert_states_close(state["weight_net"], weight_net().state_dict())  # bit-identical after 15 steps
    assert state["normalize"] == "sum"
    assert (source / "checkpoint.pt").read_bytes() == source_bytes
    # The weight of every sample is V at its loss: what suspects.csv and the weight statistics report.
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    curve = last["weight_curve"]
    with torch.no_grad():
        expected = weight_net()(torch.tensor(curve["loss"], dtype=torch.float32))
    torch.testing.assert_close(torch.tensor(curve["weight"], dtype=torch.float32), expected, rtol=1e-5, atol=1e-6)


def test_reads_the_weight_net_of_a_real_mwnet_run(tmp_path):
    config = {**TINY_FROZEN, "method": "mwnet", "num_meta": None, "meta_per_class": 10, "weight_net_hidden": 16}
    train(resolve_config(None, config), tmp_path / "mw")
    net, normalize = load_weight_net(tmp_path / "mw")
    saved = load_checkpoint(tmp_path / "mw" / "checkpoint.pt")["method"]["weight_net"]
    assert_states_close(net.state_dict(), saved)
    assert net.hidden == (16,) and normalize == "sum" and not net.training


def _sources(tmp_path):
    save_weight_net_run(tmp_path / "ce", MetaWeightNet(hidden=4), method="ce")
    save_checkpoint({"method": {}}, tmp_path / "ce" / "checkpoint.pt")  # what a ce run's checkpoint holds
    trunk = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))  # 3 heads
    save_weight_net_run(tmp_path / "heads", trunk, method="cmwnet")
    save_weight_net_run(tmp_path / "nockpt", MetaWeightNet(hidden=4))
    (tmp_path / "nockpt" / "checkpoint.pt").unlink()
    return {"ce": "learns no weight net", "heads": "not a loss-only V", "nockpt": "no checkpoint.pt",
            "absent": "no such run directory"}


def test_sources_without_a_reusable_weight_net_are_refused(tmp_path):
    for name, message in _sources(tmp_path).items():
        with pytest.raises(WeightNetSourceError, match=message) as raised:
            load_weight_net(tmp_path / name)
        assert raised.value.run_dir == tmp_path / name and "\n" not in str(raised.value)


@pytest.mark.parametrize(("flags", "message"), [
    (["--method", "frozen-vnet", "--weight-net-from", "{tmp}/ce"], "learns no weight net"),
    (["--method", "frozen-vnet", "--weight-net-from", "{tmp}/heads"], "not a loss-only V"),
    (["--method", "frozen-vnet", "--weight-net-from", "{tmp}/absent"], "no such run directory"),
    (["--method", "frozen-vnet"], "needs weight_net_from"),
    (["--method", "mwnet", "--weight-net-from", "{tmp}/ce"], "an option of method frozen-vnet, not of 'mwnet'"),
    (["--method", "mwnet"], "needs a clean meta set"),
])
def test_the_command_line_refuses_with_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    _sources(tmp_path)
    argv = ["train", "--dataset", "digits", "--num-meta", "0", "--model", "mlp", "--epochs", "1", "--device", "cpu",
            "--out", str(tmp_path / "out"), "--quiet", *(f.format(tmp=tmp_path) for f in flags)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
