"""Every registered model against the contract (shapes, gradients, float64, classifier/features, functional_call),
parameter counts against closed-form and published references, and the registry's errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mwnet import models
from mwnet.models.resnet import PadShortcut

# Cheap options per model, so the registry loop runs in milliseconds; a model without an entry is built as is.
SMALL = {
    "resnet50": {"width": 4},
    "wrn28_10": {"depth": 10, "widen_factor": 1, "dropout": 0.3},
    "mlp": {"hidden": (16, 8)},
}
IN_CHANNELS, NUM_CLASSES, SIZE = 2, 5, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These inputs are tiny: a second OpenMP thread only adds spin-waiting, badly so on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = {**SMALL.get(name, {}), **overrides}
    return models.create(name, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, input_size=SIZE, **kwargs)


def batch(n: int = 6, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, IN_CHANNELS, SIZE, SIZE, generator=g).to(dtype)
    return x, torch.randint(0, NUM_CLASSES, (n,), generator=g)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_contract_models():
    assert models.list_models() == sorted(["cnn", "mlp", "resnet32", "resnet50", "wrn28_10"])


@pytest.mark.parametrize("name", models.list_models())
def test_forward_shape_and_every_parameter_gets_a_gradient(name):
    model = build(name).train()
    x, y = batch()
    out = model(x)
    assert out.shape == (6, NUM_CLASSES) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", models.list_models())
def test_float64_matches_float32(name):
    model32 = build(name).eval()
    model64 = build(name).double().eval()
    x, _ = batch(dtype=torch.float64)
    out64 = model64(x)
    assert out64.dtype == torch.float64 and torch.isfinite(out64).all()
    torch.testing.assert_close(model32(x.float()).double(), out64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", models.list_models())
def test_classifier_is_last_linear_and_receives_forward_features(name):
    model = build(name).eval()
    x, _ = batch()
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == NUM_CLASSES
    seen = []
    handle = model.classifier.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0]))
    out = model(x)
    handle.remove()
    features = model.forward_features(x)
    assert features.shape == (6, model.classifier.in_features)
    torch.testing.assert_close(seen[0], features, rtol=0, atol=0)
    torch.testing.assert_close(out, model.classifier(features), rtol=0, atol=0)


@pytest.mark.parametrize("name", models.list_models())
def test_functional_call_matches_module_values_and_gradients(name):
    model = build(name, dropout=0.0) if name == "wrn28_10" else build(name)
    model.train()
    x, y = batch()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    loss_fc = F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)
    grads = torch.autograd.grad(loss_fc, list(params.values()))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    torch.testing.assert_close(loss_fc, loss)
    for (pname, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(g, p.grad, msg=pname)
    # Parameters passed in are the ones used: a zero classifier weight leaves only the bias.
    zeroed = {**params, "classifier.weight": torch.zeros_like(params["classifier.weight"])}
    out = functional_call(model.eval(), {**zeroed, **buffers}, (x,))
    torch.testing.assert_close(out, params["classifier.bias"].detach().expand(6, -1))


# ---- parameter counts against closed forms and published numbers ----

def cifar_resnet_params(n: int, in_channels: int, classes: int) -> int:
    """ResNet-(6n+2) with option-A shortcuts: 3×3 convs without bias, BN (2 per channel), linear 64 -> classes."""
    total = in_channels * 16 * 9 + 2 * 16
    in_planes = 16
    for planes in (16, 32, 64):
        for _ in range(n):
            total += in_planes * planes * 9 + planes * planes * 9 + 4 * planes
            in_planes = planes
    return total + 64 * classes + classes


def wrn_params(depth: int, k: int, in_channels: int, classes: int) -> int:
    """Pre-activation WRN: BN before each conv, a 1×1 projection where the width changes, final BN + linear."""
    n = (depth - 4) // 6
    total = in_channels * 16 * 9
    in_planes = 16
    for planes in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += 2 * in_planes + in_planes * planes * 9 + 2 * planes + planes * planes * 9
            total += in_planes * planes if in_planes != planes else 0
            in_planes = planes
    return total + 2 * in_planes + in_planes * classes + classes


def test_resnet32_parameter_count():
    model = models.create("resnet32", num_classes=10)
    assert num_params(model) == cifar_resnet_params(5, 3, 10) == 464_154  # the paper's "0.46 M"
    assert abs(num_params(model) - 0.46e6) < 0.01e6
    assert num_params(models.create("resnet32", in_channels=1, num_classes=100)) == cifar_resnet_params(5, 1, 100)
    # Option A: no 1×1 projection anywhere, every conv is 3×3.
    assert all(m.kernel_size == (3, 3) for m in model.modules() if isinstance(m, nn.Conv2d))


def test_wrn_parameter_counts():
    with torch.device("meta"):  # shapes only: no 36 M-parameter allocation or initialisation
        big = models.create("wrn28_10", num_classes=10)
    assert num_params(big) == wrn_params(28, 10, 3, 10) == 36_479_194  # the WRN paper's "36.5 M"
    assert num_params(build("wrn28_10")) == wrn_params(10, 1, IN_CHANNELS, NUM_CLASSES)
    assert num_params(models.create("wrn28_10", depth=16, widen_factor=1)) == wrn_params(16, 1, 3, 10)


def test_resnet50_parameter_counts_and_stem():
    with torch.device("meta"):
        imagenet = models.create("resnet50", num_classes=1000, input_size=224)
        ten = models.create("resnet50", num_classes=10, input_size=224)
        small = models.create("resnet50", num_classes=1000, input_size=32)
    assert num_params(imagenet) == 25_557_032  # torchvision's resnet50: 23.51 M body + 2.05 M classifier
    assert num_params(ten) == 25_557_032 - 990 * 2049
    assert abs(num_params(ten) - 23.5e6) < 0.05e6
    # Below 64 px the stem is a 3×3/1 conv without max-pool (a 7×7 kernel of 3·64 weights becomes 3×3).
    assert num_params(small) == 25_557_032 - 3 * 64 * (49 - 9)
    assert any(isinstance(m, nn.MaxPool2d) for m in imagenet.modules())
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    with torch.device("meta"):
        forced = models.create("resnet50", input_size=32, stem="imagenet")
    assert any(isinstance(m, nn.MaxPool2d) for m in forced.modules())


# ---- architecture details ----

def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    x = torch.randn(2, 16, 7, 7)
    out = PadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_resnet32_classifier_starts_as_the_official_model():
    # Official ResNet-32: He-normal (fan-in) weights, bias left at nn.Linear's default U(−1/√fan_in, 1/√fan_in).
    torch.manual_seed(0)
    layer = models.create("resnet32", num_classes=100).classifier
    bound = 1 / layer.in_features**0.5
    bias = layer.bias.detach()
    assert bias.abs().max() <= bound and (bias != 0).all()
    assert bias.abs().max() > 0.8 * bound  # spread over the interval, not clustered near zero
    assert abs(layer.weight.std().item() / (2 / layer.in_features) ** 0.5 - 1) < 0.1


def test_wrn_dropout_is_active_only_in_training():
    model = build("wrn28_10")  # dropout 0.3
    x, _ = batch()
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("size", [8, 28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_cnn_accepts_digit_mnist_and_cifar_sizes(size, channels):
    model = models.create("cnn", in_channels=channels, num_classes=10, input_size=size).eval()
    assert model(torch.randn(3, channels, size, size)).shape == (3, 10)


def test_cnn_channels_last_layout_changes_speed_not_values():
    x = torch.randn(4, IN_CHANNELS, 32, 32)
    fast = build("cnn").eval()
    plain = build("cnn", channels_last=False).eval()
    assert fast.features[4].weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.features[4].weight.is_contiguous(memory_format=torch.channels_last)
    fast.load_state_dict(plain.state_dict())  # same numbers whichever layout they are stored in
    assert fast.features[4].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), plain(x))


def test_mlp_takes_tables_and_flattened_images():
    table = models.create("mlp", in_features=64, num_classes=10, hidden=32)
    assert table(torch.randn(5, 64)).shape == (5, 10)
    assert table.classifier.in_features == 32
    image = models.create("mlp", in_channels=1, input_size=28, num_classes=10, hidden=())
    assert image.classifier.in_features == 784  # no hidden layer: logistic regression on the pixels
    assert image(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    with pytest.raises(ValueError, match="784 features per sample, got input shape \\(5, 1, 8, 8\\)"):
        image(torch.randn(5, 1, 8, 8))


# ---- registry and errors ----

def test_unknown_model_names_it_and_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet18'; known models: cnn, mlp, resnet32"):
        models.create("resnet18")


def test_unexpected_options_are_named():
    with pytest.raises(ValueError, match="model 'resnet32' got unexpected option\\(s\\): dropout, widht"):
        models.create("resnet32", widht=2, dropout=0.1)
    with pytest.raises(ValueError, match="unexpected option\\(s\\): hiden; it accepts: in_features, hidden, dropout"):
        models.create("mlp", hiden=3)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("cnn", {"in_channels": 0}, "in_channels must be a positive integer, got 0"),
        ("cnn", {"num_classes": 2.5}, "num_classes must be a positive integer, got 2.5"),
        ("cnn", {"input_size": 2}, "needs input_size >= 4, got 2"),
        ("cnn", {"channels": ()}, "channels must be a non-empty sequence"),
        ("wrn28_10", {"dropout": 1.5}, "dropout must be in \\[0, 1\\), got 1.5"),
        ("wrn28_10", {"depth": 27}, "depth must be 6n\\+4 .* got 27"),
        ("wrn28_10", {"widen_factor": 0}, "widen_factor must be a positive integer, got 0"),
        ("resnet50", {"stem": "deep"}, "stem must be 'imagenet' or 'cifar', got 'deep'"),
        ("resnet50", {"width": 0}, "width must be a positive integer, got 0"),
        ("mlp", {"hidden": (8, 0)}, "hidden must be a positive integer or a sequence of them, got \\(8, 0\\)"),
        ("mlp", {"in_features": -1}, "in_features must be a positive integer, got -1"),
        ("mlp", {"dropout": -0.1}, "dropout must be in \\[0, 1\\), got -0.1"),
    ],
)
def test_bad_values_raise_one_line_value_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        models.create(name, **kwargs)
    assert "\n" not in str(info.value)


def test_register_model_adds_a_factory_and_refuses_duplicates(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))

    @models.register_model(name="tiny")
    def tiny_factory(*, in_channels: int, num_classes: int, input_size: int, bias: bool = True) -> nn.Module:
        return models.create("mlp", in_channels=in_channels, num_classes=num_classes, input_size=input_size, hidden=())

    assert "tiny" in models.list_models()
    assert models.create("tiny", in_channels=1, input_size=4)(torch.randn(2, 1, 4, 4)).shape == (2, 10)
    with pytest.raises(ValueError, match="model 'tiny' is already registered"):
        models.register_model(tiny_factory, name="tiny")
    with pytest.raises(ValueError, match="model factory 'broken' must accept keyword argument\\(s\\): input_size"):
        models.register_model(lambda *, in_channels, num_classes: None, name="broken")
