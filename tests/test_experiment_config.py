"""Presets against the official scripts' values (read from the scripts and copied here independently of the presets
and of docs/algorithm.md), the shared Fashion-MNIST protocol, and type-checked overrides."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mwnet.experiment.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    method_arguments,
    resolve_config,
)
from mwnet.experiment.presets import PRESETS

# Each official script's values as TrainConfig fields, read from the script (argparse defaults and the optimisers it
# builds). Milestones count as mwnet's scheduler does (the lr drops once that many epochs or iterations are done):
# the WRN-28-10 and long-tail scripts call adjust_learning_rate(optimizer, epoch + 1) with `epoch >= 80`, so their lr
# drops after 79 epochs (17,999 iterations); MW-Net.py passes the 0-based epoch.
_NOISY_WEIGHT_NET = {"meta_optimizer": "sgd", "meta_lr": 1e-3, "meta_momentum": 0.9, "meta_nesterov": True,
                     "meta_weight_decay": 5e-4}  # optimizer_c = SGD(vnet.params(), 1e-3, momentum, nesterov, wd)
_EVERY_SCRIPT = {"method": "mwnet", "augment": True, "batch_size": 100, "meta_batch_size": 100, "lr": 0.1,
                 "momentum": 0.9, "weight_decay": 5e-4, "lr_gamma": 0.1, "weight_net_hidden": 100,
                 "weight_net_init": "default", "meta_interval": 1, "model_options": {}}
SCRIPTS = {
    # xjtushujun/meta-weight-net: vnet(cost_v.data), the weighted loss divided by Σv.
    "train_WRN-28-10_Meta_PGC.py": {
        **_EVERY_SCRIPT, **_NOISY_WEIGHT_NET, "model": "wrn28_10", "nesterov": True, "iterations": 20000,
        "lr_milestones": (17999, 18999), "lr_unit": "iteration", "num_meta": 1000, "meta_per_class": None,
        "imbalance": 1.0, "normalize": "sum", "virtual_loss": "detached"},
    # The same script with its commented-out "For ResNet32" schedule (iters >= 20000, >= 25000) and 60 epochs of 500
    # iterations (its --epochs default and the 500 its progress line divides by).
    "train_WRN-28-10_Meta_PGC.py, ResNet-32 schedule": {
        **_EVERY_SCRIPT, **_NOISY_WEIGHT_NET, "model": "resnet32", "nesterov": True, "iterations": 30000,
        "lr_milestones": (19999, 24999), "lr_unit": "iteration", "num_meta": 1000, "meta_per_class": None,
        "imbalance": 1.0, "normalize": "sum", "virtual_loss": "detached"},
    # MW-Net.py: SGD without nesterov=, lr from the 0-based epoch, torch.sum(cost_v * v_lambda) / len(cost_v),
    # Adam(vnet.params(), 1e-3, weight_decay=1e-4).
    "MW-Net.py": {
        **_EVERY_SCRIPT, "model": "resnet32", "nesterov": False, "epochs": 120, "iterations": None,
        "lr_milestones": (80, 100), "lr_unit": "epoch", "num_meta": 1000, "meta_per_class": None, "imbalance": 1.0,
        "normalize": "mean", "virtual_loss": "detached", "meta_optimizer": "adam", "meta_lr": 1e-3,
        "meta_weight_decay": 1e-4},
    # xjtushujun/Meta-weight-net_class-imbalance: vnet(cost_v) without .data, Σv, SGD(vnet.params(), 1e-5, the
    # classifier's momentum, nesterov and weight decay), --num_meta 10 per class.
    "meta-weight-net-class-imbalance.py": {
        **_EVERY_SCRIPT, **_NOISY_WEIGHT_NET, "meta_lr": 1e-5, "model": "resnet32", "nesterov": True, "epochs": 100,
        "iterations": None, "lr_milestones": (79, 89), "lr_unit": "epoch", "meta_per_class": 10, "num_meta": None,
        "noise": None, "normalize": "sum", "virtual_loss": "attached"},
    # No script was published for Clothing1M: the paper's text (ResNet-50, SGD 0.01, wd 1e-3, batch 32, 10 epochs,
    # ×0.1 after 5, weight net lr 1e-3); the rest is mwnet's choice (docs/algorithm.md says which).
    "none (Clothing1M, the paper's text)": {
        "method": "mwnet", "model": "resnet50", "model_options": {}, "lr": 0.01, "momentum": 0.9, "nesterov": False,
        "weight_decay": 1e-3, "epochs": 10, "iterations": None, "lr_milestones": (5,), "lr_unit": "epoch",
        "lr_gamma": 0.1, "batch_size": 32, "meta_batch_size": 32, "augment": True, "num_meta": None,
        "meta_per_class": None, **_NOISY_WEIGHT_NET, "normalize": "sum", "virtual_loss": "detached",
        "weight_net_init": "default"},
}
# Every paper preset: (the script it follows, the values of its own setting).
PAPER_PRESETS = {"paper-clothing1m": ("none (Clothing1M, the paper's text)", {})}
for ds in ("cifar10", "cifar100"):
    for rate in (40, 60):
        PAPER_PRESETS[f"paper-{ds}-uniform-{rate}"] = (
            "train_WRN-28-10_Meta_PGC.py", {"dataset": ds, "noise": f"uniform:0.{rate // 10}"})
        PAPER_PRESETS[f"paper-{ds}-stable-uniform-{rate}"] = (
            "MW-Net.py", {"dataset": ds, "noise": f"uniform:0.{rate // 10}"})
    for rate in (20, 40):
        PAPER_PRESETS[f"paper-{ds}-flip-{rate}"] = (
            "train_WRN-28-10_Meta_PGC.py, ResNet-32 schedule", {"dataset": ds, "noise": f"flip:0.{rate // 10}"})
    for factor in (200, 100, 50, 20, 10, 1):  # --imb_factor is 1 / IF
        PAPER_PRESETS[f"paper-{ds}-lt-{factor}"] = (
            "meta-weight-net-class-imbalance.py", {"dataset": ds, "imbalance": float(factor)})

FMNIST_SETTINGS = {"fmnist-clean": (None, 1.0), "fmnist-uniform-40": ("uniform:0.4", 1.0),
                   "fmnist-uniform-60": ("uniform:0.6", 1.0), "fmnist-flip2-20": ("flip2:0.2", 1.0),
                   "fmnist-flip2-40": ("flip2:0.4", 1.0), "fmnist-lt-100": (None, 100.0),
                   "fmnist-lt-200": (None, 200.0)}


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_paper_preset_resolves_to_its_scripts_values(name):
    script, setting = PAPER_PRESETS[name]
    config = resolve_config(name)
    mismatches = {key: (getattr(config, key), value) for key, value in {**SCRIPTS[script], **setting}.items()
                  if getattr(config, key) != value}
    assert mismatches == {}  # field: (preset, script)
    assert config.preset == name
    # Every value the preset sets is one the table above holds against its script.
    assert set(PRESETS[name]) <= set(SCRIPTS[script]) | set(setting)


def test_every_paper_setting_has_a_preset():
    assert {n for n in PRESETS if n.startswith("paper-")} == set(PAPER_PRESETS)


def test_fashion_mnist_protocol_is_one_schedule_for_every_setting():
    configs = {name: resolve_config(name) for name in FMNIST_SETTINGS}
    shared = ("dataset", "train_subset", "model", "epochs", "iterations", "momentum", "nesterov",
              "weight_decay", "lr_milestones", "lr_unit", "lr_gamma", "batch_size", "augment", "normalize",
              "meta_optimizer", "meta_lr", "meta_weight_decay")
    for key in shared:
        assert len({getattr(c, key) for c in configs.values()}) == 1, key
    first = next(iter(configs.values()))
    assert (first.dataset, first.train_subset, first.model) == ("fashion-mnist", 20000, "mlp")
    assert all(c.model_options == {"hidden": [512, 512]} for c in configs.values())
    for name, (noise, imbalance) in FMNIST_SETTINGS.items():
        config = configs[name]
        assert (config.noise, config.imbalance) == (noise, imbalance)
        assert config.meta_per_class == (10 if imbalance > 1 else 100) and config.num_meta is None
        assert config.lr == (0.05 if imbalance > 1 else 0.1)  # lr 0.1 diverges on the long tail
    # Every method runs the same preset: switching method changes nothing else.
    ce = resolve_config("fmnist-uniform-60", {"method": "ce"})
    assert dataclasses.replace(ce, method="mwnet") == configs["fmnist-uniform-60"]


def test_overrides_win_and_are_type_checked():
    config = resolve_config("paper-cifar10-uniform-40", {"lr": 1, "lr_milestones": [5, 9], "seed": 3})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.lr_milestones == (5, 9) and config.seed == 3
    # --epochs clears a preset's iteration count; --meta-per-class clears its --num-meta.
    config = resolve_config("paper-cifar10-uniform-40", {"epochs": 3, "meta_per_class": 5})
    assert (config.epochs, config.iterations, config.meta_per_class, config.num_meta) == (3, None, 5, None)
    for overrides, message in (
        ({"lr": "fast"}, "lr must be a number, got 'fast'"),
        ({"epochs": 1.5}, "epochs must be an integer"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"augment": 1}, "augment must be true or false"),
        ({"lr_unit": "step"}, "lr_unit must be one of 'epoch', 'iteration'"),
        ({"colour": "red"}, "unknown config field 'colour'"),
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"lr": -0.1}, "lr must be positive"),
        ({"imbalance": 0.5}, "imbalance must be >= 1"),
        ({"lr_milestones": [5, 3]}, "lr_milestones must be positive and increasing"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"method": "ce", "method_options": {"gamma": 2}}, "method 'ce' has no option 'gamma'"),
        ({"method_options": {"meta_lr": 2}}, "method option 'meta_lr' is a config field"),
    ):
        with pytest.raises(ValueError, match=message):
            resolve_config("fmnist-uniform-40", overrides)
    with pytest.raises(ValueError, match="unknown preset 'paper-mnist'"):
        resolve_config("paper-mnist")


def test_method_arguments_take_config_fields_then_method_options():
    config = resolve_config("paper-cifar10-lt-100")
    assert method_arguments(config) == {"normalize": "sum", "hypergradient": "forward", "meta_interval": 1,
                                        "virtual_loss": "attached", "weight_net_hidden": 100,
                                        "weight_net_init": "default", "meta_optimizer": "sgd", "meta_lr": 1e-5,
                                        "meta_momentum": 0.9, "meta_nesterov": True, "meta_weight_decay": 5e-4,
                                        "precision": "fp32"}
    assert method_arguments(dataclasses.replace(config, method="ce")) == {}


def test_config_round_trips_through_json(tmp_path):
    config = resolve_config("paper-cifar100-flip-40", {"model_options": {"dropout": 0.3}})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_to_dict(config)))
    assert load_config(path) == config
    assert config_from_dict(config_to_dict(TrainConfig())) == TrainConfig()
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"not a JSON file .*config\.json"):
        load_config(path)
    with pytest.raises(ValueError, match="give num_meta or meta_per_class, not both"):
        config_from_dict({**config_to_dict(config), "num_meta": 10, "meta_per_class": 1})
    assert apply_overrides(config, {}) == config
