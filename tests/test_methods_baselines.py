"""The baselines (focal, class-balanced, fine-tune, l2rw) against hand formulas and naive float64 implementations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import mwnet.methods.class_balanced
import mwnet.methods.fine_tune
import mwnet.methods.focal
import mwnet.methods.l2rw  # noqa: F401  (importing a module registers its method)
from conftest import assert_states_close, make_cnn, make_mlp
from mwnet.methods import Method, MethodContext, create_method
from mwnet.methods.class_balanced import class_balanced_weights
from mwnet.methods.fine_tune import default_fine_tune_epochs

DTYPE = torch.float64
N, M, K = 12, 8, 3
BASELINES = ("focal", "class-balanced", "fine-tune", "l2rw")


def make_optimizer(model: nn.Module, *, two_groups: bool = False, lr: float = 0.1) -> torch.optim.Optimizer:
    params = list(model.parameters())
    groups = [{"params": params[:2], "lr": 0.3}, {"params": params[2:]}] if two_groups else params
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)


def data(seed: int = 0, n: int = N, m: int = M) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 6, 6, generator=g, dtype=DTYPE), torch.randint(0, K, (n,), generator=g),
            torch.randn(m, 1, 6, 6, generator=g, dtype=DTYPE), torch.randint(0, K, (m,), generator=g))


def context(epochs: int = 4, counts: tuple[int, ...] = (6, 4, 2)) -> MethodContext:
    return MethodContext(num_classes=len(counts), class_counts=counts, epochs=epochs)


def run_step(method: Method, batch: tuple[torch.Tensor, ...]):
    x, y, xm, ym = batch
    return method.step(x, y, *((xm, ym) if method.wants_meta() else (None, None)))


# -- focal ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_step_is_sgd_on_the_hand_written_focal_loss(gamma):
    model, reference = make_cnn(), make_cnn()
    method = create_method("focal", model, make_optimizer(model), context(), gamma=gamma)
    ref_opt = make_optimizer(reference)
    for seed in (1, 2):
        x, y, _, _ = data(seed)
        reference.train()
        logits = reference(x)
        # −(1 − pₜ)^γ log pₜ from the softmax written out, not from F.cross_entropy.
        p = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
        p_t = p[torch.arange(N), y]
        hand = -((1 - p_t) ** gamma) * torch.log(p_t)
        ref_opt.zero_grad()
        hand.mean().backward()
        ref_opt.step()
        result = method.step(x, y)
        assert abs(result.loss - float(hand.mean().detach())) < 1e-12
        torch.testing.assert_close(result.weights, ((1 - p_t) ** gamma).detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(result.losses, -torch.log(p_t).detach(), rtol=0, atol=1e-12)
        assert_states_close(model, reference, 1e-12)
    curve = method.weight_curve(torch.tensor([0.0, 0.5, 3.0], dtype=DTYPE))
    torch.testing.assert_close(curve, (1 - torch.exp(-torch.tensor([0.0, 0.5, 3.0], dtype=DTYPE))) ** gamma)


def test_focal_with_gamma_zero_is_cross_entropy():
    model, reference = make_cnn(), make_cnn()
    focal = create_method("focal", model, make_optimizer(model), context(), gamma=0.0)
    ce = create_method("ce", reference, make_optimizer(reference), context())
    for seed in (1, 2):
        a, b = run_step(focal, data(seed)), run_step(ce, data(seed))
        assert a.loss == b.loss
        assert torch.equal(a.weights, b.weights)
    assert_states_close(model, reference)


def test_focal_gradient_stays_finite_for_certain_samples():
    # γ < 1: d(1 − p)^γ/dp is infinite at p = 1; a sample the model is certain of must not produce NaN.
    model = nn.Linear(2, K).to(DTYPE)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([200.0, 0.0, 0.0]))
    method = create_method("focal", model, torch.optim.SGD(model.parameters(), lr=0.1), context(), gamma=0.5)
    result = method.step(torch.zeros(4, 2, dtype=DTYPE), torch.tensor([0, 0, 1, 2]))
    assert math.isfinite(result.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- class-balanced ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
def test_class_balanced_weights_follow_the_effective_number_formula(beta):
    counts = [5000, 1200, 300, 50, 7]
    effective = [(1 - beta**n) / (1 - beta) for n in counts]
    raw = [1 / e for e in effective]
    expected = [len(counts) * r / sum(raw) for r in raw]
    got = class_balanced_weights(counts, beta)
    assert got == pytest.approx(expected, rel=1e-12)
    assert sum(got) == pytest.approx(len(counts), rel=1e-12)
    if beta == 0:
        assert got == pytest.approx([1.0] * len(counts), rel=1e-12)  # β = 0 is plain CE


def test_class_balanced_gives_empty_classes_zero_and_near_one_beta_inverse_frequency():
    got = class_balanced_weights([100, 0, 25], 0.9999)
    assert got[1] == 0.0 and sum(got) == pytest.approx(3.0, rel=1e-12)
    inverse = class_balanced_weights([1000, 100, 10], 1 - 1e-12)
    raw = [1 / 1000, 1 / 100, 1 / 10]
    assert inverse == pytest.approx([3 * r / sum(raw) for r in raw], rel=1e-6)


def test_class_balanced_step_is_weighted_cross_entropy():
    counts = (6, 4, 2)
    model, reference = make_cnn(), make_cnn()
    method = create_method("class-balanced", model, make_optimizer(model), context(counts=counts), beta=0.9)
    ref_opt = make_optimizer(reference)
    raw = [(1 - 0.9) / (1 - 0.9**n) for n in counts]
    table = torch.tensor([3 * r / sum(raw) for r in raw], dtype=DTYPE)
    x, y, _, _ = data(1)
    reference.train()
    ref_opt.zero_grad()
    (table[y] * F.cross_entropy(reference(x), y, reduction="none")).mean().backward()
    ref_opt.step()
    result = method.step(x, y)
    torch.testing.assert_close(result.weights, table[y], rtol=0, atol=1e-15)
    torch.testing.assert_close(method.sample_weights(result.losses, y), table[y], rtol=0, atol=1e-15)
    assert method.weight_curve(result.losses) is None
    assert_states_close(model, reference, 1e-14)


# -- fine-tune --------------------------------------------------------------------------------------------------


def test_fine_tune_default_length():
    assert [default_fine_tune_epochs(e) for e in (1, 2, 5, 14, 15, 30, 100)] == [0, 1, 1, 1, 2, 3, 10]


def test_fine_tune_trains_on_training_batches_then_on_meta_batches():
    factor, lr = 0.1, 0.1
    model, reference = make_cnn(), make_cnn()
    optimizer = make_optimizer(model, lr=lr)
    method = create_method("fine-tune", model, optimizer, context(epochs=5), fine_tune_epochs=2,
                           fine_tune_lr_factor=factor)
    ref_opt = make_optimizer(reference, lr=lr)
    reference.train()
    for epoch in range(5):
        method.start_epoch(epoch)
        tuning = epoch >= 3
        assert method.wants_meta() is tuning
        x, y, xm, ym = data(epoch)
        # The report: CE of the training batch at the parameters before the step, with batch statistics.
        with torch.no_grad():
            train_logits = copy.deepcopy(reference)(x)
        # The reference update: plain CE on x, or CE on the meta batch at the lr times the factor.
        if tuning:
            ref_opt.param_groups[0]["lr"] = lr * factor
        ref_opt.zero_grad()
        F.cross_entropy(reference(xm if tuning else x), ym if tuning else y).backward()
        ref_opt.step()
        ref_opt.param_groups[0]["lr"] = lr
        result = method.step(x, y, *((xm, ym) if method.wants_meta() else (None, None)))
        assert optimizer.param_groups[0]["lr"] == lr  # the scheduled lr is left as it was
        torch.testing.assert_close(result.logits, train_logits, rtol=0, atol=1e-12)
        torch.testing.assert_close(result.losses, F.cross_entropy(train_logits, y, reduction="none"), rtol=0,
                                   atol=1e-12)
        assert torch.equal(result.weights, torch.full((N,), 0.0 if tuning else 1.0, dtype=DTYPE))
        assert torch.equal(method.sample_weights(result.losses, y), result.weights)
        # Parameters and batch-norm running statistics (from x, then from the meta batches only) match.
        assert_states_close(model, reference, 1e-12)
    with pytest.raises(ValueError, match="meta batch"):
        method.step(*data(9)[:2])


# -- l2rw -------------------------------------------------------------------------------------------------------


def naive_l2rw_weights(model: nn.Module, optimizer: torch.optim.Optimizer, x, y, xm, ym) -> torch.Tensor:
    """Ren et al.'s weights the textbook way: a copy of the model, a leaf ε = 0, a virtual SGD step built with
    create_graph, the meta loss at the virtual parameters, its gradient w.r.t. ε, clipped and normalised."""
    clone = copy.deepcopy(model).train()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    names = [k for k, _ in model.named_parameters()]
    lrs = [lr_of[id(p)] for p in model.parameters()]
    params = [p for _, p in clone.named_parameters()]
    eps = torch.zeros(x.shape[0], dtype=DTYPE, requires_grad=True)
    losses = F.cross_entropy(clone(x), y, reduction="none")
    grads = torch.autograd.grad((eps * losses).sum(), params, create_graph=True)
    virtual = {k: p - lr * g for k, p, lr, g in zip(names, params, lrs, grads)}
    meta_loss = F.cross_entropy(functional_call(clone, virtual, (xm,)), ym)
    (grad_eps,) = torch.autograd.grad(meta_loss, eps)
    w = torch.clamp(-grad_eps, min=0)
    return w / w.sum() if w.sum() > 0 else w


@pytest.mark.parametrize(("mode", "dropout"), [("forward", 0.0), ("double-backward", 0.0), ("forward", 0.3)])
def test_l2rw_equals_a_naive_implementation(mode, dropout):
    model, reference = make_cnn(dropout=dropout), make_cnn(dropout=dropout)
    optimizer = make_optimizer(model, two_groups=True)
    method = create_method("l2rw", model, optimizer, context(), hypergradient=mode)
    ref_opt = make_optimizer(reference, two_groups=True)
    clipped = kept = 0
    for seed in (1, 2, 3):
        x, y, xm, ym = data(seed)
        torch.manual_seed(100 + seed)  # the same dropout masks for both, in the same order
        expected = naive_l2rw_weights(reference, ref_opt, x, y, xm, ym)
        torch.manual_seed(100 + seed)
        reference.train()
        ref_opt.zero_grad()
        (expected * F.cross_entropy(reference(x), y, reduction="none")).sum().backward()
        ref_opt.step()
        torch.manual_seed(100 + seed)
        result = method.step(x, y, xm, ym)
        torch.testing.assert_close(result.weights / N, expected, rtol=0, atol=1e-10)
        assert_states_close(model, reference, 1e-10)
        clipped += int((expected == 0).sum())
        kept += int((expected > 0).sum())
        assert result.meta_updated and math.isfinite(result.meta_loss)
    assert clipped > 0 and kept > 0  # both sides of the clip were exercised


def test_l2rw_finite_difference_mode_is_close():
    # A smooth model: central differences across ReLU kinks would measure the kinks, not the method.
    model, reference = make_mlp(36, 16, K), make_mlp(36, 16, K)
    method = create_method("l2rw", model, make_optimizer(model), context(), hypergradient="finite-difference")
    x, y, xm, ym = data(1)
    x, xm = x.flatten(1), xm.flatten(1)
    expected = naive_l2rw_weights(reference, make_optimizer(reference), x, y, xm, ym)
    torch.testing.assert_close(method.step(x, y, xm, ym).weights / N, expected, rtol=0, atol=1e-7)


def test_l2rw_weights_stay_zero_when_every_sample_opposes_the_meta_gradient():
    # A bias-only classifier at 0: a training label 0 and a meta label 1 have gradients with inner product −1/3.
    model = nn.Linear(2, K).to(DTYPE)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    method = create_method("l2rw", model, torch.optim.SGD(model.parameters(), lr=0.1), context())
    x = torch.zeros(5, 2, dtype=DTYPE)
    result = method.step(x, torch.zeros(5, dtype=torch.long), x[:3], torch.ones(3, dtype=torch.long))
    assert torch.equal(result.weights, torch.zeros(5, dtype=DTYPE)) and result.loss == 0.0
    assert torch.equal(model.bias, torch.zeros(K, dtype=DTYPE))  # no sample, no update
    with pytest.raises(ValueError, match="meta batch"):
        method.step(x, torch.zeros(5, dtype=torch.long))


# -- every baseline ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_state_dict_round_trip_continues_identically(name):
    model = make_cnn()
    optimizer = make_optimizer(model)
    method = create_method(name, model, optimizer, context(epochs=4))
    for epoch in range(4):  # fine-tune: 3 CE epochs, then 1 fine-tuning epoch (the default 10 %, at least 1)
        method.start_epoch(epoch)
        result = run_step(method, data(epoch))
        assert result.weights.shape == result.losses.shape == (N,) and result.logits.shape == (N, K)
    # A resumed method, with model and optimizer restored by the caller and no start_epoch call, goes on the same.
    twin_model = make_cnn(7)
    twin_optimizer = make_optimizer(twin_model)
    twin = create_method(name, twin_model, twin_optimizer, context(epochs=4))
    twin_model.load_state_dict(model.state_dict())
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # torch shares the buffers
    twin.load_state_dict(copy.deepcopy(method.state_dict()))
    assert twin.wants_meta() == method.wants_meta() == (name in ("fine-tune", "l2rw"))
    a, b = run_step(method, data(5)), run_step(twin, data(5))
    assert torch.equal(a.weights, b.weights) and a.loss == b.loss
    assert_states_close(model, twin_model)


@pytest.mark.parametrize(("name", "options", "match"), [
    ("focal", {"gamma": -0.5}, "gamma"),
    ("focal", {"gamma": math.nan}, "gamma"),
    ("focal", {"gamma": "2"}, "gamma"),
    ("class-balanced", {"beta": 1.0}, "beta"),
    ("class-balanced", {"beta": -0.1}, "beta"),
    ("fine-tune", {"fine_tune_epochs": 4}, "fine_tune_epochs"),
    ("fine-tune", {"fine_tune_epochs": -1}, "fine_tune_epochs"),
    ("fine-tune", {"fine_tune_lr_factor": 0.0}, "fine_tune_lr_factor"),
    ("fine-tune", {"fine_tune_lr_factor": math.inf}, "fine_tune_lr_factor"),
    ("l2rw", {"hypergradient": "last-layer"}, "hypergradient"),
    ("l2rw", {"normalize": "sum"}, "normalize"),
])
def test_bad_options_are_one_line_errors_naming_the_option(name, options, match):
    model = make_cnn()
    with pytest.raises(ValueError, match=match) as info:
        create_method(name, model, make_optimizer(model), context(epochs=4), **options)
    assert "\n" not in str(info.value)


def test_class_balanced_rejects_counts_that_do_not_fit():
    model = make_cnn()
    bad = MethodContext(num_classes=4, class_counts=(1, 2, 3))
    with pytest.raises(ValueError, match="class_counts"):
        create_method("class-balanced", model, make_optimizer(model), bad)
    with pytest.raises(ValueError, match="class counts"):
        class_balanced_weights([0, 0, 0], 0.9)
