"""CMW-Net-SL against hand computations: its loss row by row as the authors' script writes it (with and without
mixup), its hypergradient against float64 central differences, the EMA teacher, warm-up and resuming."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_central_differences, assert_states_close, make_mlp
from mwnet.hypergradients import EXACT_HYPERGRADIENTS
from mwnet.label_correction import LabelCorrectingReweighter, soft_label_loss_terms
from mwnet.methods import MethodContext, create_method
from mwnet.weighting import ClassAwareWeightNet, class_heads

N, M, D, K = 10, 6, 5, 3
LR = 0.4
DTYPE = torch.float64


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, D, generator=g, dtype=DTYPE), torch.randint(0, K, (N,), generator=g),
            torch.randn(M, D, generator=g, dtype=DTYPE), torch.randint(0, K, (M,), generator=g))


def setup(*, weight_lr: float = 0.0, **kwargs):
    model = make_mlp(D, 8, K, seed=0)
    torch.manual_seed(3)
    wnet = ClassAwareWeightNet(class_heads([30, 9, 2]), hidden=6, init="xavier").to(DTYPE)  # no dead trunk
    rw = LabelCorrectingReweighter(model, torch.optim.SGD(model.parameters(), lr=LR), wnet,
                                   torch.optim.SGD(wnet.parameters(), lr=weight_lr), **kwargs)
    return model, wnet, rw


def draws(seed: int, alpha: float):
    """The mixup draws a step makes after torch.manual_seed(seed), in its order: the training batch's, the meta's."""
    torch.manual_seed(seed)
    out = []
    for n, a in ((N, alpha), (M, 1.0)):
        lam = float(torch.distributions.Beta(a, a).sample())
        out += [max(lam, 1 - lam), torch.randperm(n)]
    return out


def hand_loss(model, wnet, x, y, probs, lam=1.0, perm=None):
    """The authors' batch loss, row by row: row i (λxᵢ + (1 − λ)x_π(i)) pays λ[vᵢ CE(zᵢ, yᵢ) + (1 − vᵢ) H(p̃ᵢ, zᵢ)]
    + (1 − λ)[v_π(i) CE(zᵢ, y_π(i)) + (1 − v_π(i)) H(p̃_π(i), zᵢ)], with vⱼ = V(CE(zⱼ, yⱼ), yⱼ) a constant."""
    perm = torch.arange(N) if perm is None else perm
    z = model(lam * x + (1 - lam) * x[perm])
    log_p = F.log_softmax(z, 1)
    with torch.no_grad():
        v = wnet(F.cross_entropy(z, y, reduction="none"), y)
    rows = []
    for i in range(N):
        j = int(perm[i])
        own = v[i] * -log_p[i, y[i]] + (1 - v[i]) * -(probs[i] * log_p[i]).sum()
        other = v[j] * -log_p[i, y[j]] + (1 - v[j]) * -(probs[j] * log_p[i]).sum()
        rows.append(lam * own + (1 - lam) * other)
    return torch.stack(rows).mean(), v


@pytest.mark.parametrize("mixup", [None, 0.7])
def test_the_loss_and_the_update_equal_a_hand_computation(mixup):
    model, wnet, rw = setup(mixup_alpha=mixup, teacher_decay=0.9)
    reference, start = copy.deepcopy(model), copy.deepcopy(model)
    x, y, xm, ym = data()
    lam, perm = draws(7, mixup or 1.0)[:2] if mixup else (1.0, None)
    with torch.no_grad():
        probs = F.softmax(reference(x), 1)  # the teacher starts as a copy of the model
    loss, v = hand_loss(reference, wnet, x, y, probs, lam, perm)
    torch.manual_seed(7)
    result = rw.step(x, y, xm, ym)
    assert result.loss == pytest.approx(float(loss.detach()), rel=1e-12)
    torch.testing.assert_close(result.weights, v, rtol=0, atol=1e-14)
    # The reported losses are V's input: each row's cross-entropy on its own label.
    torch.testing.assert_close(result.losses, F.cross_entropy(result.logits, y, reduction="none"))
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    with torch.no_grad():
        for p, g in zip(reference.parameters(), grads):
            p -= LR * g
    assert_states_close(model, reference, 1e-13)
    # The EMA teacher: t ← 0.9 t + 0.1 w after the real update.
    for (name, p0), p1 in zip(start.named_parameters(), model.parameters()):
        torch.testing.assert_close(rw.teacher.params[name], 0.9 * p0 + 0.1 * p1, rtol=0, atol=1e-15)


def test_loss_terms_by_hand():
    z = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], dtype=DTYPE)
    y = torch.tensor([0, 2])
    probs = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=DTYPE)
    s0 = torch.log(torch.exp(torch.tensor(1.0, dtype=DTYPE)) + 1 + torch.exp(torch.tensor(-1.0, dtype=DTYPE)))
    s1 = torch.log(2 * torch.exp(torch.tensor(0.5, dtype=DTYPE)) + torch.exp(torch.tensor(2.0, dtype=DTYPE)))
    # log softmax rows: z − logsumexp(z).
    label = torch.stack([s0 - 1.0, s1 - 2.0])
    soft = torch.stack([0.2 * (s0 - 1) + 0.3 * s0 + 0.5 * (s0 + 1), s1 - 0.5])
    terms = soft_label_loss_terms(z, y, probs)
    torch.testing.assert_close(terms, torch.stack([label, soft], 1), rtol=0, atol=1e-14)
    # Mixed with π = (1, 0): sample 0's terms also come from row 1 with weight 1 − λ, and vice versa.
    mixed = soft_label_loss_terms(z, y, probs, lam=0.75, partner=torch.tensor([1, 0]))
    cross_label = torch.stack([s1 - 0.5, s0 + 1.0])  # CE(z₁, y₀), CE(z₀, y₁)
    cross_soft = torch.stack([0.2 * (s1 - 0.5) + 0.3 * (s1 - 0.5) + 0.5 * (s1 - 2), s0 - 1.0])
    expected = torch.stack([0.75 * label + 0.25 * cross_label, 0.75 * soft + 0.25 * cross_soft], 1)
    torch.testing.assert_close(mixed, expected, rtol=0, atol=1e-14)


def hand_meta_objective(model, wnet, x, y, xm, ym, probs, lam, perm, meta_lam, meta_perm):
    """L_meta(ŵ(Θ)): deepcopy, one SGD step on the hand loss, the (mixed) meta loss."""
    clone = copy.deepcopy(model)
    loss, _ = hand_loss(clone, wnet, x, y, probs, lam, perm)
    grads = torch.autograd.grad(loss, list(clone.parameters()))
    with torch.no_grad():
        for p, g in zip(clone.parameters(), grads):
            p -= LR * g
        z = clone(meta_lam * xm + (1 - meta_lam) * xm[meta_perm])
        return float(meta_lam * F.cross_entropy(z, ym) + (1 - meta_lam) * F.cross_entropy(z, ym[meta_perm]))


@pytest.mark.parametrize(("mode", "mixup"), [*((m, None) for m in EXACT_HYPERGRADIENTS), ("forward", 0.7)])
def test_hypergradient_matches_central_differences(mode, mixup):
    model, wnet, rw = setup(hypergradient=mode, mixup_alpha=mixup)
    reference = copy.deepcopy(model)
    x, y, xm, ym = data(1)
    lam, perm, meta_lam, meta_perm = draws(11, mixup) if mixup else (1.0, None, 1.0, torch.arange(M))
    with torch.no_grad():
        probs = F.softmax(reference(x), 1)
    theta = [p.detach().clone() for p in wnet.parameters()]
    torch.manual_seed(11)
    rw.step(x, y, xm, ym)
    hyper = [p.grad.clone() for p in wnet.parameters()]  # weight lr 0: Θ stays, .grad is the hypergradient
    assert all(g.abs().sum() > 0 for g in hyper)
    assert_matches_central_differences(
        wnet, theta, hyper, lambda probe: hand_meta_objective(reference, probe, x, y, xm, ym, probs, lam, perm,
                                                              meta_lam, meta_perm),
        torch.Generator().manual_seed(4))


def method_setup(**options):
    model = make_mlp(D, 8, K, seed=0, dtype=torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    torch.manual_seed(5)
    context = MethodContext(num_classes=K, class_counts=(30, 9, 2), epochs=4)
    return model, optimizer, create_method("cmwnet-sl", model, optimizer, context, **options)


def batches(seed: int):
    return tuple(t.float() if t.is_floating_point() else t for t in data(seed))


def test_warm_up_is_plain_cross_entropy_then_the_meta_step():
    model, _, method = method_setup(ce_warmup_epochs=1, meta_interval=2)
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=LR, momentum=0.9)
    method.start_epoch(0)
    assert not method.wants_meta()
    x, y, _, _ = batches(0)
    result = method.step(x, y)
    ref_opt.zero_grad()
    F.cross_entropy(reference(x), y).backward()
    ref_opt.step()
    assert_states_close(model, reference, 1e-6)
    assert torch.equal(result.weights, torch.ones(N))
    method.start_epoch(1)
    wanted = []
    for seed in range(4):
        wanted.append(method.wants_meta())
        x, y, xm, ym = batches(seed)
        method.step(x, y, *((xm, ym) if wanted[-1] else (None, None)))
    assert wanted == [True, False, True, False]


def test_a_restored_method_continues_identically_after_warm_up():
    model, optimizer, method = method_setup(ce_warmup_epochs=0, mixup=True, teacher_decay=0.5, meta_lr=0.1)
    for seed in range(2):
        method.step(*batches(seed))
    model2, optimizer2, twin = method_setup(ce_warmup_epochs=0, mixup=True, teacher_decay=0.5, meta_lr=0.1)
    model2.load_state_dict(model.state_dict())
    optimizer2.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin.load_state_dict(copy.deepcopy(method.state_dict()))
    torch.manual_seed(9)
    a = method.step(*batches(3))
    torch.manual_seed(9)
    b = twin.step(*batches(3))
    assert torch.equal(a.weights, b.weights) and a.loss == b.loss
    assert_states_close(model, model2)
    curves = method.head_curves(torch.linspace(0, 3, 5))
    assert list(curves) == ["classes 0 (n 30)", "classes 1 (n 9)", "classes 2 (n 2)"]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="not 'last-layer'"):
        setup(hypergradient="last-layer")
    with pytest.raises(ValueError, match="mixup_alpha must be positive"):
        setup(mixup_alpha=0.0)
    with pytest.raises(ValueError, match=r"teacher decay must be in \[0, 1\]"):
        setup(teacher_decay=1.5)
    with pytest.raises(ValueError, match="virtual_loss must be 'detached'"):
        method_setup(virtual_loss="attached")
    _, _, rw = setup()
    x, y, _, _ = data()
    with pytest.raises(ValueError, match="a meta batch"):
        rw.step(x, y)
