"""Presets against the official scripts' values (copied here independently from the table in docs/algorithm.md),
the shared Fashion-MNIST protocol, and type-checked overrides."""

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

CLASSIFIER = {"method": "mwnet", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
              "batch_size": 100, "meta_batch_size": 100, "augment": True, "normalize": "sum", "lr_gamma": 0.1}
WEIGHT_NET = {"meta_optimizer": "sgd", "meta_lr": 1e-3, "meta_momentum": 0.9, "meta_nesterov": True,
              "meta_weight_decay": 5e-4}
EXPECTED = {}
for ds in ("cifar10", "cifar100"):
    for rate in (40, 60):
        EXPECTED[f"paper-{ds}-uniform-{rate}"] = {
            **CLASSIFIER, **WEIGHT_NET, "dataset": ds, "noise": f"uniform:0.{rate // 10}", "model": "wrn28_10",
            "iterations": 20000, "lr_milestones": (18000, 19000), "lr_unit": "iteration", "num_meta": 1000,
            "meta_per_class": None, "imbalance": 1.0}
    for rate in (20, 40):
        EXPECTED[f"paper-{ds}-flip-{rate}"] = {
            **CLASSIFIER, **WEIGHT_NET, "dataset": ds, "noise": f"flip:0.{rate // 10}", "model": "resnet32",
            "iterations": 30000, "lr_milestones": (20000, 25000), "lr_unit": "iteration", "num_meta": 1000}
        EXPECTED[f"paper-{ds}-stable-uniform-{rate + 20}"] = {
            **CLASSIFIER, "nesterov": False, "dataset": ds, "noise": f"uniform:0.{(rate + 20) // 10}",
            "model": "resnet32", "epochs": 120, "iterations": None, "lr_milestones": (80, 100), "lr_unit": "epoch",
            "meta_optimizer": "adam", "meta_lr": 1e-3, "meta_weight_decay": 1e-4, "num_meta": 1000}
    for factor in (200, 100, 50, 20, 10, 1):
        EXPECTED[f"paper-{ds}-lt-{factor}"] = {
            **CLASSIFIER, **WEIGHT_NET, "meta_lr": 1e-5, "dataset": ds, "imbalance": float(factor), "noise": None,
            "model": "resnet32", "epochs": 100, "iterations": None, "lr_milestones": (80, 90), "lr_unit": "epoch",
            "meta_per_class": 10, "num_meta": None}
EXPECTED["paper-clothing1m"] = {
    "method": "mwnet", "model": "resnet50", "lr": 0.01, "weight_decay": 1e-3, "epochs": 10, "lr_milestones": (5,),
    "lr_unit": "epoch", "lr_gamma": 0.1, "batch_size": 32, "meta_lr": 1e-3, "normalize": "sum", "num_meta": None,
    "meta_per_class": None}

FMNIST_SETTINGS = {"fmnist-clean": (None, 1.0), "fmnist-uniform-40": ("uniform:0.4", 1.0),
                   "fmnist-uniform-60": ("uniform:0.6", 1.0), "fmnist-flip2-20": ("flip2:0.2", 1.0),
                   "fmnist-flip2-40": ("flip2:0.4", 1.0), "fmnist-lt-100": (None, 100.0),
                   "fmnist-lt-200": (None, 200.0)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_preset_resolves_to_the_official_values(name):
    config = resolve_config(name)
    for key, value in EXPECTED[name].items():
        assert getattr(config, key) == value, key
    assert config.preset == name


def test_every_paper_setting_has_a_preset():
    assert {n for n in PRESETS if n.startswith("paper-")} == set(EXPECTED)


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
                                        "weight_net_hidden": 100, "meta_optimizer": "sgd", "meta_lr": 1e-5,
                                        "meta_momentum": 0.9, "meta_nesterov": True, "meta_weight_decay": 5e-4}
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
