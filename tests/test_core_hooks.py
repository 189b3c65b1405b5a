"""The step in the user's own loop: any output type, ops without forward-mode AD, clipping, accumulation, a
gradient scaler, a full state_dict, and one clear ValueError for wrong dtypes and labels."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_states_close, make_cnn, make_mlp, nested_equal
from mwnet import MetaReweighter, MetaWeightNet
from mwnet.core import ForwardModeFallbackWarning

DTYPE = torch.float64


def batches(n: int = 12, m: int = 8, seed: int = 0, features: int = 5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, features, generator=g, dtype=DTYPE), torch.randint(0, 3, (n,), generator=g),
            torch.randn(m, features, generator=g, dtype=DTYPE), torch.randint(0, 3, (m,), generator=g))


def setup(model: nn.Module | None = None, **kwargs) -> tuple[MetaReweighter, nn.Module, nn.Module]:
    model = model if model is not None else make_mlp(5, 16, 3, seed=0)
    torch.manual_seed(1)
    wnet = MetaWeightNet(hidden=(7,)).to(DTYPE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    wopt = torch.optim.SGD(wnet.parameters(), lr=0.05, momentum=0.9)
    return MetaReweighter(model, opt, wnet, wopt, **kwargs), model, wnet


def full_state(rw: MetaReweighter) -> list:
    return copy.deepcopy([rw.model.state_dict(), rw.optimizer.state_dict(), rw.weight_net.state_dict(),
                          rw.weight_optimizer.state_dict()])


# ---- outputs of any type ----------------------------------------------------------------------------------


class DictOutput(nn.Module):
    """A Hugging Face-style model: the logits inside a dict, beside other outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = make_mlp(5, 16, 3, seed=0)

    def forward(self, x):
        logits = self.inner(x)
        return {"logits": logits, "hidden": torch.tanh(logits)}


def dict_ce(out, y):
    return F.cross_entropy(out["logits"], y, reduction="none")


def test_dict_output_model_trains_with_a_loss_that_takes_it_and_equals_the_plain_model():
    plain, _, _ = setup(normalize="mean")
    wrapped, _, _ = setup(DictOutput(), normalize="mean", loss_fn=dict_ce,
                          meta_loss_fn=lambda out, y: F.cross_entropy(out["logits"], y))
    for step in range(2):
        a, b = plain.step(*batches(seed=step)), wrapped.step(*batches(seed=step))
        assert isinstance(b.logits, dict) and not b.logits["logits"].requires_grad
        torch.testing.assert_close(a.logits, b.logits["logits"], rtol=0, atol=0)
    assert_states_close(plain.model, wrapped.model.inner, 0.0)
    assert_states_close(plain.weight_net, wrapped.weight_net, 0.0)


def test_dict_output_with_the_default_loss_is_one_clear_error_and_changes_nothing():
    rw, _, _ = setup(DictOutput())
    before = full_state(rw)
    with pytest.raises(ValueError, match="default cross-entropy needs \\(n, K\\) logits, got dict"):
        rw.step(*batches())
    assert nested_equal(before, full_state(rw))


# ---- ops without forward-mode AD, compiled models ---------------------------------------------------------


class NoJvpTanh(torch.autograd.Function):
    """tanh with a backward but no forward-mode rule, like many custom kernels."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class CustomOpMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_mlp(5, 16, 3, seed=0)

    def forward(self, x):
        return self.net[2](NoJvpTanh.apply(self.net[0](x)))


def test_forward_mode_falls_back_to_double_backward_once_with_a_warning():
    reference, ref_model, ref_wnet = setup(CustomOpMLP(), hypergradient="double-backward")
    rw, model, wnet = setup(CustomOpMLP())
    with pytest.warns(ForwardModeFallbackWarning, match="double-backward"):
        rw.step(*batches(seed=0))
    assert rw.hypergradient == "double-backward"
    rw.step(*batches(seed=1))  # no second warning (warnings are errors in this suite)
    for step in range(2):
        reference.step(*batches(seed=step))
    assert_states_close(model, ref_model, 1e-12)
    assert_states_close(wnet, ref_wnet, 1e-12)


def test_a_compiled_model_is_stepped_through_its_original_module():
    reference, ref_model, _ = setup()
    compiled = torch.compile(make_mlp(5, 16, 3, seed=0), backend="eager")
    rw, _, _ = setup(compiled)
    assert rw.model is compiled._orig_mod
    for step in range(2):
        rw.step(*batches(seed=step))
        reference.step(*batches(seed=step))
    assert_states_close(compiled._orig_mod, ref_model, 0.0)


# ---- clipping, accumulation, a gradient scaler, state_dict ------------------------------------------------


def test_max_grad_norm_clips_the_real_update():
    norms = {}
    for clip in (None, 1e-3):
        rw, model, _ = setup(max_grad_norm=clip)
        rw.optimizer.param_groups[0].update(momentum=0.0, weight_decay=0.0)
        before = [p.detach().clone() for p in model.parameters()]
        rw.step(*batches())
        norms[clip] = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())]).norm()
    # lr · max norm (torch divides by ‖g‖ + 1e-6), where the unclipped step is far longer.
    assert abs(norms[1e-3].item() / (0.1 * 1e-3) - 1) < 1e-5
    assert norms[None] > 100 * norms[1e-3]


def test_gradient_accumulation_steps_the_optimizer_every_kth_call_on_the_summed_gradients():
    rw, model, wnet = setup(grad_accumulation=2)
    rw.optimizer.param_groups[0].update(momentum=0.0, weight_decay=0.0)
    start = copy.deepcopy(model.state_dict())
    rw.step(*batches(seed=0))
    assert nested_equal(start, model.state_dict())  # not stepped yet
    first = [p.grad.clone() for p in model.parameters()]
    # The second micro-batch's gradient, from an independent one-call step at the same w, Θ and lr.
    probe_model, probe_wnet = copy.deepcopy(model), copy.deepcopy(wnet)
    probe_wopt = torch.optim.SGD(probe_wnet.parameters(), lr=0.05, momentum=0.9)
    probe_wopt.load_state_dict(copy.deepcopy(rw.weight_optimizer.state_dict()))  # its buffers are updated in place
    probe = MetaReweighter(probe_model, torch.optim.SGD(probe_model.parameters(), lr=0.1), probe_wnet, probe_wopt,
                           normalize=rw.normalize)
    probe.step(*batches(seed=1))
    second = [(w - p.detach()) / 0.1 for w, p in zip(model.parameters(), probe_model.parameters())]
    rw.step(*batches(seed=1))
    for w0, p, g1, g2 in zip(start.values(), model.parameters(), first, second):
        torch.testing.assert_close(p.detach(), w0 - 0.1 * (g1 + g2), rtol=0, atol=1e-12)


def test_a_gradient_scaler_overflow_skips_the_step_and_changes_nothing_but_the_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126, growth_interval=1)
    model = make_mlp(5, 16, 3, seed=0, dtype=torch.float32)
    wnet = MetaWeightNet(hidden=(7,))
    rw = MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), wnet,
                        torch.optim.SGD(wnet.parameters(), lr=0.05, momentum=0.9), scaler=scaler)
    x, y, xm, ym = (t.float() if t.is_floating_point() else t for t in batches())
    x = x * 1e4  # float32 gradients of a few hundred, times 2^126, overflow
    before = full_state(rw)
    scale = scaler.get_scale()
    result = rw.step(x, y, xm, ym)
    assert result.skipped and not result.meta_updated and result.loss != result.loss
    assert nested_equal(before, full_state(rw)) and rw.iteration == 0
    assert scaler.get_scale() == scale / 2
    scaler.update(new_scale=2.0**4)
    result = rw.step(x, y, xm, ym)
    assert not result.skipped and rw.iteration == 1


def test_a_scaled_step_equals_the_unscaled_one():
    plain, plain_model, _ = setup()
    scaled, scaled_model, _ = setup(scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000))
    for step in range(2):
        plain.step(*batches(seed=step))
        scaled.step(*batches(seed=step))
    assert_states_close(plain_model, scaled_model, 1e-12)


def test_state_dict_holds_the_whole_method():
    rw, _, _ = setup()
    rw.step(*batches(seed=0))
    state = copy.deepcopy(rw.state_dict())
    resumed, _, _ = setup(copy.deepcopy(rw.model))
    resumed.optimizer.load_state_dict(copy.deepcopy(rw.optimizer.state_dict()))
    resumed.load_state_dict(state)
    assert resumed.iteration == 1
    a, b = rw.step(*batches(seed=1)), resumed.step(*batches(seed=1))
    assert a.meta_loss == b.meta_loss
    assert_states_close(rw.weight_net, resumed.weight_net, 0.0)
    assert_states_close(rw.model, resumed.model, 0.0)


# ---- one ValueError for wrong dtypes and labels -----------------------------------------------------------


def bad_cases():
    x, y, xm, ym = batches()
    images = torch.randint(0, 255, (12, 1, 6, 6), dtype=torch.uint8)
    return {
        "uint8 images": (make_cnn(0), (images, y, xm, ym), r"failed on the training batch \(inputs uint8"),
        "float targets": (None, (x, y.double(), xm, ym), "targets must be integer class indices"),
        "label out of range": (None, (x, torch.full_like(y, 3), xm, ym), r"targets must lie in \[0, 3\)"),
        "ignore-index label": (None, (x, torch.full_like(y, -100), xm, ym), "labels from -100"),
    }


@pytest.mark.parametrize("case", list(bad_cases()))
def test_wrong_dtypes_and_labels_are_one_value_error_and_change_nothing(case):
    model, args, message = bad_cases()[case]
    rw, _, _ = setup(model)
    before = full_state(rw)
    with pytest.raises(ValueError, match=message):
        rw.step(*args)
    assert nested_equal(before, full_state(rw))
