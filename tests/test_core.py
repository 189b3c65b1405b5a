"""The bi-level step against independent references: finite differences and a naive implementation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_matches_central_differences, nested_equal
from mwnet import MetaReweighter, MetaWeightNet, NonFiniteLossError
from mwnet.hypergradients import EXACT_HYPERGRADIENTS, HYPERGRADIENTS
from mwnet.losses import normalize_weights
from mwnet.reference import official_step
from mwnet.step import STEP_PHASES

DTYPE = torch.float64


class SmallCNN(nn.Module):
    """Conv-BN-ReLU twice, average pooling, linear head: batch norm everywhere the step must handle it."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(dropout),
        )
        self.classifier = nn.Linear(24, 3)

    def forward(self, x):
        return self.classifier(self.features(x))


class TwoInputMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.b = nn.Linear(2, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x1, x2):
        return self.classifier(torch.tanh(self.a(x1) + self.b(x2)))


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(kind: str, n: int = 12, m: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (1, 6, 6) if kind == "cnn" else (5,)
    x = torch.randn(n, *shape, generator=g, dtype=DTYPE)
    xm = torch.randn(m, *shape, generator=g, dtype=DTYPE)
    return x, torch.randint(0, 3, (n,), generator=g), xm, torch.randint(0, 3, (m,), generator=g)


def make_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallCNN() if kind == "cnn" else make_mlp()
    return model.to(DTYPE)


def make_setup(kind: str, *, momentum=0.9, weight_decay=5e-4, nesterov=False, two_groups=False, seed=0):
    model = make_model(kind, seed)
    torch.manual_seed(seed + 1)
    wnet = MetaWeightNet(hidden=(7, 5)).to(DTYPE)
    params = list(model.parameters())
    groups = [{"params": params[:2], "lr": 0.3}, {"params": params[2:]}] if two_groups else params
    opt = torch.optim.SGD(groups, lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    wopt = torch.optim.SGD(wnet.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)
    return model, opt, wnet, wopt


def meta_objective(model, wnet, x, y, xm, ym, lrs, normalize, only=None):
    """L_meta(ŵ(Θ)) written out plainly: deepcopy, virtual SGD step, meta forward (all in train mode)."""
    clone = copy.deepcopy(model).train()
    names = [k for k, p in clone.named_parameters() if p.requires_grad and (only is None or k in only)]
    params = dict(clone.named_parameters())
    losses = F.cross_entropy(clone(x), y, reduction="none")
    v = normalize_weights(wnet(losses.detach()), normalize)
    grads = torch.autograd.grad((v.detach() * losses).sum(), [params[k] for k in names])
    with torch.no_grad():
        for k, g in zip(names, grads):
            params[k] -= lrs[k] * g
    return F.cross_entropy(clone(xm), ym).detach()


def assert_states_close(a: nn.Module, b: nn.Module, tol: float) -> None:
    for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        if ta.is_floating_point():
            err = (ta - tb).abs().max().item()
            assert err < tol, f"{ka}: {err}"
        else:
            assert torch.equal(ta, tb), ka


# ---- finite differences ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", EXACT_HYPERGRADIENTS)
@pytest.mark.parametrize("normalize", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_hypergradient_matches_central_differences(kind, normalize, mode):
    model, opt, wnet, _ = make_setup(kind, momentum=0.0, weight_decay=0.0, two_groups=True)
    x, y, xm, ym = batches(kind)
    names = [k for k, _ in model.named_parameters()]
    lrs = {k: (0.3 if i < 2 else 0.1) for i, k in enumerate(names)}
    reference_model = copy.deepcopy(model)
    theta = [p.detach().clone() for p in wnet.parameters()]
    # A weight optimizer with lr 0 leaves Θ where it was, so .grad is the hypergradient at Θ.
    rw = MetaReweighter(model, opt, wnet, torch.optim.SGD(wnet.parameters(), lr=0.0), normalize=normalize,
                        hypergradient=mode)
    rw.step(x, y, xm, ym)
    hyper = [p.grad.clone() for p in wnet.parameters()]

    assert_matches_central_differences(
        wnet, theta, hyper, lambda probe: meta_objective(reference_model, probe, x, y, xm, ym, lrs, normalize),
        torch.Generator().manual_seed(3))


# ---- equivalence with the naive official algorithm ----------------------------------------------------------


@pytest.mark.parametrize("mode", EXACT_HYPERGRADIENTS)
@pytest.mark.parametrize("normalize", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_three_steps_equal_naive_official_algorithm(kind, normalize, mode):
    model, opt, wnet, wopt = make_setup(kind, nesterov=True, two_groups=True)
    ref = [copy.deepcopy(t) for t in (model, wnet)]
    ref_opt = torch.optim.SGD([{"params": list(ref[0].parameters())[:2], "lr": 0.3},
                               {"params": list(ref[0].parameters())[2:]}], lr=0.1, momentum=0.9,
                              weight_decay=5e-4, nesterov=True)
    ref_wopt = torch.optim.SGD(ref[1].parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    # An LR schedule that changes between steps: the virtual step must use the current lr.
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.5)
    rw = MetaReweighter(model, opt, wnet, wopt, normalize=normalize, hypergradient=mode)
    for it in range(3):
        x, y, xm, ym = batches(kind, seed=it)
        result = rw.step(x, y, xm, ym)
        ref_meta = official_step(ref[0], ref_opt, ref[1], ref_wopt, x, y, xm, ym, normalize=normalize)
        sched.step()
        ref_sched.step()
        assert abs(result.meta_loss - ref_meta) < 1e-10
    assert_states_close(model, ref[0], 1e-10)
    assert_states_close(wnet, ref[1], 1e-10)
    assert result.weights.shape == (12,) and result.losses.shape == (12,)
    assert result.meta_updated


def test_result_fields_are_the_real_update():
    model, opt, wnet, wopt = make_setup("mlp")
    x, y, xm, ym = batches("mlp")
    rw = MetaReweighter(model, opt, wnet, wopt, normalize="sum")
    before = copy.deepcopy(model)
    result = rw.step(x, y, xm, ym)
    losses = F.cross_entropy(before(x), y, reduction="none")
    torch.testing.assert_close(result.losses, losses.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(result.weights, wnet(losses.detach()).detach(), rtol=0, atol=1e-12)
    expected = (result.weights / result.weights.sum() * losses).sum().detach().item()
    assert abs(result.loss - expected) < 1e-12
    assert not result.weights.requires_grad and result.logits.shape == (12, 3)


# ---- batch norm, frozen parameters, tuple inputs -------------------------------------------------------------


@pytest.mark.parametrize("mode", HYPERGRADIENTS)
def test_batch_norm_buffers_move_once_from_the_train_batch(mode):
    model, opt, wnet, wopt = make_setup("cnn")
    x, y, xm, ym = batches("cnn")
    expected = copy.deepcopy(model).train()
    expected(x)
    model.eval()  # the step trains regardless, and puts the mode back
    MetaReweighter(model, opt, wnet, wopt, hypergradient=mode).step(x, y, xm, ym)
    assert not model.training
    for (name, got), want in zip(model.named_buffers(), expected.buffers()):
        assert torch.equal(got, want), name
    assert int(model.features[1].num_batches_tracked) == 1


def test_frozen_parameters_stay_untouched_and_step_matches_naive():
    model, _, wnet, wopt = make_setup("cnn")
    model.features[0].weight.requires_grad_(False)
    frozen = model.features[0].weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    ref, ref_wnet = copy.deepcopy(model), copy.deepcopy(wnet)
    ref_opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    ref_wopt = torch.optim.SGD(ref_wnet.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rw = MetaReweighter(model, opt, wnet, wopt, normalize="mean")
    for it in range(2):
        x, y, xm, ym = batches("cnn", seed=it)
        rw.step(x, y, xm, ym)
        official_step(ref, ref_opt, ref_wnet, ref_wopt, x, y, xm, ym, normalize="mean")
    assert torch.equal(model.features[0].weight, frozen)
    assert_states_close(model, ref, 1e-10)
    assert_states_close(wnet, ref_wnet, 1e-10)


def test_tuple_input_matches_single_tensor_reformulation():
    torch.manual_seed(0)
    model = TwoInputMLP().to(DTYPE)
    wnet = MetaWeightNet().to(DTYPE)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(10, 5, generator=g, dtype=DTYPE), torch.randn(10, 2, generator=g, dtype=DTYPE))
    xm = (torch.randn(6, 5, generator=g, dtype=DTYPE), torch.randn(6, 2, generator=g, dtype=DTYPE))
    y, ym = torch.randint(0, 3, (10,), generator=g), torch.randint(0, 3, (6,), generator=g)

    class Packed(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner(z[:, :5], z[:, 5:])

    packed = Packed(copy.deepcopy(model))
    packed_wnet = copy.deepcopy(wnet)
    results = []
    for m, w, xs, xms in ((model, wnet, x, xm), (packed, packed_wnet, torch.cat(x, 1), torch.cat(xm, 1))):
        rw = MetaReweighter(m, torch.optim.SGD(m.parameters(), lr=0.1), w, torch.optim.SGD(w.parameters(), lr=0.1))
        results.append(rw.step(xs, y, xms, ym))
    assert abs(results[0].meta_loss - results[1].meta_loss) < 1e-12
    assert_states_close(model, packed.inner, 1e-12)
    assert_states_close(wnet, packed_wnet, 1e-12)


@pytest.mark.parametrize("mode", ["forward", "finite-difference"])
def test_dropout_masks_are_replayed_in_the_extra_forward_passes(mode):
    """With dropout, the dual/finite-difference pass must see the masks of the first forward."""
    states = []
    for hypergradient in ("double-backward", mode):
        torch.manual_seed(0)
        model = SmallCNN(dropout=0.5).to(DTYPE)
        wnet = MetaWeightNet().to(DTYPE)
        rw = MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), wnet,
                            torch.optim.SGD(wnet.parameters(), lr=0.1), hypergradient=hypergradient)
        torch.manual_seed(5)
        for it in range(2):
            rw.step(*batches("cnn", seed=it))
        states.append((model, wnet, torch.rand(1)))
    tol = 1e-10 if mode == "forward" else 1e-5
    assert_states_close(states[0][1], states[1][1], tol)
    assert_states_close(states[0][0], states[1][0], tol)
    assert torch.equal(states[0][2], states[1][2]), "modes must consume the global RNG identically"


# ---- approximate modes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "epsilon", "tol"), [(torch.float64, 1e-7, 1e-5), (torch.float32, 1e-4, 5e-2)])
def test_finite_difference_mode_approximates_the_exact_hypergradient(dtype, epsilon, tol):
    grads = {}
    for mode in ("double-backward", "finite-difference"):
        model, opt, wnet, _ = make_setup("cnn")
        model.to(dtype)
        wnet.to(dtype)
        x, y, xm, ym = batches("cnn")
        rw = MetaReweighter(model, opt, wnet, torch.optim.SGD(wnet.parameters(), lr=0.0), hypergradient=mode,
                            epsilon=epsilon)
        rw.step(x.to(dtype), y, xm.to(dtype), ym)
        grads[mode] = torch.cat([p.grad.flatten() for p in wnet.parameters()]).double()
    exact, approx = grads["double-backward"], grads["finite-difference"]
    assert (exact - approx).norm() / exact.norm() < tol


def test_last_layer_mode_equals_virtual_step_on_the_last_layer_only():
    model, opt, wnet, wopt = make_setup("cnn", two_groups=True)
    ref, ref_wnet = copy.deepcopy(model), copy.deepcopy(wnet)
    ref_opt = torch.optim.SGD([{"params": list(ref.parameters())[:2], "lr": 0.3},
                               {"params": list(ref.parameters())[2:]}], lr=0.1, momentum=0.9, weight_decay=5e-4)
    ref_wopt = torch.optim.SGD(ref_wnet.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rw = MetaReweighter(model, opt, wnet, wopt, hypergradient="last-layer", normalize="sum")
    assert rw.last_layer is model.classifier
    for it in range(3):
        x, y, xm, ym = batches("cnn", seed=it)
        result = rw.step(x, y, xm, ym)
        ref_meta = official_step(ref, ref_opt, ref_wnet, ref_wopt, x, y, xm, ym, normalize="sum",
                                 only={"classifier.weight", "classifier.bias"})
        assert abs(result.meta_loss - ref_meta) < 1e-10
    assert_states_close(model, ref, 1e-10)
    assert_states_close(wnet, ref_wnet, 1e-10)


def test_last_layer_mode_rejects_a_model_whose_output_is_not_the_last_linear():
    class Scaled(SmallCNN):
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    model = Scaled().to(DTYPE)
    wnet = MetaWeightNet().to(DTYPE)
    rw = MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), wnet,
                        torch.optim.SGD(wnet.parameters(), lr=0.1), hypergradient="last-layer")
    with pytest.raises(ValueError, match="final linear layer's output"):
        rw.step(*batches("cnn"))


def test_meta_interval_updates_theta_every_kth_step_only():
    model, opt, wnet, wopt = make_setup("mlp")
    rw = MetaReweighter(model, opt, wnet, wopt, meta_interval=3)
    updated = []
    for it in range(6):
        before = [p.detach().clone() for p in wnet.parameters()]
        x, y, xm, ym = batches("mlp", seed=it)
        result = rw.step(x, y, xm, ym) if it % 3 == 0 else rw.step(x, y)
        moved = any(not torch.equal(b, p) for b, p in zip(before, wnet.parameters()))
        assert moved == result.meta_updated
        assert (result.meta_loss == result.meta_loss) == result.meta_updated  # nan when skipped
        updated.append(result.meta_updated)
    assert updated == [True, False, False, True, False, False]
    restored = MetaReweighter(model, opt, wnet, wopt, meta_interval=3)
    restored.load_state_dict(rw.state_dict())
    assert restored.iteration == 6


# ---- dtypes and devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", HYPERGRADIENTS)
def test_float32_modes_agree_with_float64(mode):
    results = []
    for dtype in (torch.float32, torch.float64):
        model, opt, wnet, wopt = make_setup("cnn")
        model.to(dtype)
        wnet.to(dtype)
        x, y, xm, ym = batches("cnn")
        rw = MetaReweighter(model, opt, wnet, wopt, hypergradient=mode)
        results.append((rw.step(x.to(dtype), y, xm.to(dtype), ym), wnet))
    (r32, w32), (r64, w64) = results
    assert r32.weights.dtype == torch.float32 and r64.weights.dtype == torch.float64
    assert abs(r32.meta_loss - r64.meta_loss) < 1e-4
    for a, b in zip(w32.parameters(), w64.parameters()):
        assert (a.double() - b).abs().max() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("mode", HYPERGRADIENTS)
def test_cuda_matches_cpu(mode):
    outs = []
    for device in ("cpu", "cuda"):
        model, opt, wnet, wopt = make_setup("cnn")
        model.to(device)
        wnet.to(device)
        x, y, xm, ym = (t.to(device) for t in batches("cnn"))
        rw = MetaReweighter(model, opt, wnet, wopt, hypergradient=mode)
        outs.append(rw.step(x, y, xm, ym).meta_loss)
    assert abs(outs[0] - outs[1]) < 1e-8


# ---- bad input ----------------------------------------------------------------------------------------------


def snapshot(*objects):
    state = []
    for o in objects:
        sd = o.state_dict()
        state.append(copy.deepcopy(sd))
    return state


def states_equal(a, b) -> bool:
    return all(nested_equal(u, v) for u, v in zip(a, b))


def make_bad_cases():
    x, y, xm, ym = batches("cnn")
    nan_x = x.clone()
    nan_x[0, 0, 0, 0] = float("nan")
    return {
        "empty": ((x[:0], y[:0], xm, ym), "empty training batch"),
        "lengths": ((x, y[:-1], xm, ym), "12 inputs but 11 targets"),
        "meta lengths": ((x, y, xm, ym[:3]), "meta batch has 8 inputs but 3 targets"),
        "empty meta": ((x, y, xm[:0], ym[:0]), "empty meta batch"),
        "non-finite": ((nan_x, y, xm, ym), "non-finite training loss"),
        "no meta": ((x, y, None, None), "meta batch"),
    }


@pytest.mark.parametrize("case", list(make_bad_cases()))
def test_bad_input_raises_and_changes_nothing(case):
    args, message = make_bad_cases()[case]
    model, opt, wnet, wopt = make_setup("cnn")
    rw = MetaReweighter(model, opt, wnet, wopt)
    rw.step(*batches("cnn", seed=9))  # optimizers now hold momentum state
    before = snapshot(model, opt, wnet, wopt)
    with pytest.raises(ValueError, match=message):
        rw.step(*args)
    assert states_equal(before, snapshot(model, opt, wnet, wopt))
    assert rw.iteration == 1


def test_optimizer_with_foreign_parameters_is_rejected():
    model, _, wnet, wopt = make_setup("cnn")
    stranger = nn.Parameter(torch.zeros(2, 2, dtype=DTYPE))
    opt = torch.optim.SGD([*model.parameters(), stranger], lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer holds a parameter of shape \(2, 2\) that is not in the model"):
        MetaReweighter(model, opt, wnet, wopt)
    ok = torch.optim.SGD(model.parameters(), lr=0.1)
    rw = MetaReweighter(model, ok, wnet, wopt)
    ok.add_param_group({"params": [stranger]})
    before = snapshot(model, wnet)
    with pytest.raises(ValueError, match="not in the model"):
        rw.step(*batches("cnn"))
    assert states_equal(before, snapshot(model, wnet))
    with pytest.raises(ValueError, match="not in the weight net"):
        MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), wnet, torch.optim.SGD([stranger], lr=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"normalize": "max"}, "normalize must be one of"), ({"hypergradient": "magic"}, "hypergradient must be one of"),
     ({"meta_interval": 0}, "meta_interval must be a positive integer"), ({"epsilon": 0.0}, "epsilon must be"),
     ({"virtual_loss": "glued"}, "virtual_loss must be one of"),
     ({"virtual_loss": "attached", "hypergradient": "last-layer"}, "needs an exact or finite-difference")],
)
def test_bad_options_are_named(kwargs, message):
    model, opt, wnet, wopt = make_setup("mlp")
    with pytest.raises(ValueError, match=message):
        MetaReweighter(model, opt, wnet, wopt, **kwargs)



# ---- typed errors, all-or-nothing updates, sub-module modes, phase marks -------------------------------------


def test_non_finite_training_loss_is_a_typed_error():
    model, opt, wnet, wopt = make_setup("mlp")
    x, y, xm, ym = batches("mlp")
    x[3, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite training loss") as info:
        MetaReweighter(model, opt, wnet, wopt).step(x, y, xm, ym)
    assert info.value.what == "training loss" and isinstance(info.value, ValueError)


def test_weight_net_update_that_makes_v_non_finite_is_undone():
    model, opt, wnet, wopt = make_setup("cnn")
    rw = MetaReweighter(model, opt, wnet, wopt)
    rw.step(*batches("cnn", seed=9))  # both optimizers now hold momentum state
    before = snapshot(model, opt, wnet, wopt)
    wopt.param_groups[0]["lr"] = float("inf")
    with pytest.raises(NonFiniteLossError, match="sample weights after the weight-net update"):
        rw.step(*batches("cnn", seed=1))
    wopt.param_groups[0]["lr"] = 0.05
    assert states_equal(before, snapshot(model, opt, wnet, wopt))
    assert rw.iteration == 1


def test_non_finite_weight_on_a_non_meta_iteration_raises_before_the_update():
    model, opt, wnet, wopt = make_setup("mlp")
    rw = MetaReweighter(model, opt, wnet, wopt, meta_interval=2)
    rw.step(*batches("mlp", seed=0))
    with torch.no_grad():
        next(wnet.parameters()).fill_(float("nan"))
    before = snapshot(model, opt)
    x, y, _, _ = batches("mlp", seed=1)
    with pytest.raises(NonFiniteLossError, match="non-finite sample weights"):
        rw.step(x, y)
    assert states_equal(before, snapshot(model, opt))


def test_sub_modules_keep_the_mode_the_user_set():
    """A frozen-BN backbone (eval) inside a training model keeps its running statistics and its mode."""
    model, opt, wnet, wopt = make_setup("cnn")
    model.train()
    model.features.eval()
    stats = {k: b.clone() for k, b in model.features.named_buffers()}
    for mode in HYPERGRADIENTS:
        MetaReweighter(model, opt, wnet, wopt, hypergradient=mode).step(*batches("cnn"))
        assert model.training and not model.features.training
        assert all(not m.training for m in model.features.modules())
        for k, b in model.features.named_buffers():
            assert torch.equal(b, stats[k]), (mode, k)


@pytest.mark.parametrize("mode", HYPERGRADIENTS)
def test_every_phase_is_marked_for_the_profiler(mode):
    model, opt, wnet, wopt = make_setup("cnn")
    rw = MetaReweighter(model, opt, wnet, wopt, hypergradient=mode)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        rw.step(*batches("cnn"))
    seen = {e.name for e in prof.events()}
    expected = set(STEP_PHASES) - ({"mwnet.sensitivity"} if mode == "double-backward" else set())
    assert expected <= seen, expected - seen


# ---- the long-tail script's attached virtual loss ------------------------------------------------------------


@pytest.mark.parametrize("mode", [*EXACT_HYPERGRADIENTS])
@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_attached_virtual_loss_equals_the_long_tail_script(mode, normalize):
    model, opt, wnet, wopt = make_setup("cnn", nesterov=True)
    ref, ref_wnet = copy.deepcopy(model), copy.deepcopy(wnet)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    ref_wopt = torch.optim.SGD(ref_wnet.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    rw = MetaReweighter(model, opt, wnet, wopt, hypergradient=mode, normalize=normalize, virtual_loss="attached")
    for it in range(3):
        x, y, xm, ym = batches("cnn", seed=it)
        result = rw.step(x, y, xm, ym)
        ref_meta = official_step(ref, ref_opt, ref_wnet, ref_wopt, x, y, xm, ym, normalize=normalize,
                                 virtual_loss="attached")
        assert abs(result.meta_loss - ref_meta) < 1e-10
    assert_states_close(model, ref, 1e-10)
    assert_states_close(wnet, ref_wnet, 1e-10)


def test_attached_virtual_loss_changes_the_hypergradient():
    """The two semantics are different algorithms: the same step gives another Θ gradient."""
    grads = {}
    for virtual_loss in ("detached", "attached"):
        model, opt, wnet, _ = make_setup("cnn")
        rw = MetaReweighter(model, opt, wnet, torch.optim.SGD(wnet.parameters(), lr=0.0), virtual_loss=virtual_loss)
        rw.step(*batches("cnn"))
        grads[virtual_loss] = torch.cat([p.grad.flatten() for p in wnet.parameters()])
    relative = (grads["attached"] - grads["detached"]).norm() / grads["detached"].norm()
    assert relative > 0.05
