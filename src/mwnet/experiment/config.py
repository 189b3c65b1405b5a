"""What a training run is: one `TrainConfig` dataclass, and the paper's settings as presets (data, not code).

A run's configuration is `TrainConfig()` with a preset's overrides applied, then the user's overrides (every CLI
flag), each value type-checked against the field's annotation. The resolved config is what `config.json` holds.

Every hyper-parameter of the paper's official scripts lives in PRESETS below and nowhere else (../shared/PAPER.md,
"Hyper-parameters of the official scripts"). Normalisation: the scripts that produced the paper's tables divide the
weighted loss by Σ vᵢ ("sum"), so every preset uses "sum"; it is also the default, because it keeps the weighted
loss on the scale of plain cross-entropy, so CE and MW-Net can share one learning-rate schedule.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mwnet.methods import list_methods, method_options
from mwnet.methods.mwnet import MWNetOptions
from mwnet.methods.options import coerce_value, field_types

# The mwnet method's defaults are the runner's defaults for the same fields (one source of truth).
_MW = MWNetOptions()


@dataclass
class TrainConfig:
    """Everything that determines a training run (given the same machine, the same numbers come out).

    Data:
        dataset: a name accepted by `mwnet.data.load_dataset` (fashion-mnist, cifar10, digits, folder:PATH, …).
        data_dir: where to look for / download the data set [the data module's default].
        noise: label corruption, "uniform:0.4", "flip:0.2", "flip2:0.4", or None.
        imbalance: long-tail imbalance factor n_max / n_min (1 = balanced).
        num_meta / meta_per_class: size of the clean meta set, in total or per class [10 per class]; setting
            one clears the other. Every method gets the same split (plain CE simply ignores the meta set).
        train_subset: use a seeded subset of this many training images.
        augment: random crop + flip on training batches (CIFAR-style).
    Model and method:
        model: a name from `mwnet.models.list_models()`, or "auto" (mlp for tables, cnn up to 28 px, resnet32 up
            to 32 px, resnet50 above).
        model_options: extra keyword arguments of the model factory (e.g. {"dropout": 0.3} for wrn28_10).
        method: a name from `mwnet.methods.list_methods()`.
        method_options: options of the method that are not fields below (e.g. a baseline's γ).
    Classifier optimisation (SGD):
        epochs: training epochs; iterations: when set, the run stops after exactly this many iterations and the
            number of epochs follows from it (the paper's noise settings count iterations).
        batch_size, meta_batch_size, eval_batch_size: samples per training / meta / evaluation batch.
        lr, momentum, nesterov, weight_decay: the classifier's SGD.
        lr_milestones, lr_gamma, lr_unit: multiply the lr by lr_gamma at each milestone, counted in epochs or in
            iterations.
    Weight net (methods that learn weights; see `mwnet.methods.mwnet.MWNetOptions`):
        normalize, hypergradient, meta_interval, weight_net_hidden, meta_optimizer, meta_lr, meta_momentum,
        meta_nesterov, meta_weight_decay.
    Run:
        seed: seeds the split, the noise, the initialisation and the data order.
        device: "auto" (CUDA when available), "cpu" or "cuda" (or "cuda:1").
        preset: the preset this config was resolved from (a record only).
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    noise: str | None = None
    imbalance: float = 1.0
    num_meta: int | None = None
    meta_per_class: int | None = 10
    train_subset: int | None = None
    augment: bool = False

    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    method: str = "mwnet"
    method_options: dict[str, Any] = field(default_factory=dict)

    epochs: int = 30
    iterations: int | None = None
    batch_size: int = 100
    meta_batch_size: int = 100
    eval_batch_size: int = 500
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    lr_unit: Literal["epoch", "iteration"] = "epoch"

    normalize: Literal["mean", "sum"] = _MW.normalize
    hypergradient: Literal["forward", "double-backward", "finite-difference", "last-layer"] = _MW.hypergradient
    meta_interval: int = _MW.meta_interval
    weight_net_hidden: int = _MW.weight_net_hidden
    meta_optimizer: Literal["sgd", "adam"] = _MW.meta_optimizer
    meta_lr: float = _MW.meta_lr
    meta_momentum: float = _MW.meta_momentum
    meta_nesterov: bool = _MW.meta_nesterov
    meta_weight_decay: float = _MW.meta_weight_decay

    seed: int = 0
    device: str = "auto"
    preset: str | None = None


# --------------------------------------------------------------------------------------------------------------
# Presets: name -> overrides of TrainConfig. Built from a few shared dicts so that each number appears once.
# --------------------------------------------------------------------------------------------------------------

# The classifier optimiser shared by the CIFAR scripts (uniform, flip, long-tail): SGD 0.1, momentum 0.9, Nesterov,
# weight decay 5e-4, batch 100 / meta batch 100, the CIFAR augmentation, Σv normalisation.
_PAPER_CIFAR = {
    "method": "mwnet", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "lr_gamma": 0.1,
    "batch_size": 100, "meta_batch_size": 100, "augment": True, "normalize": "sum",
}
# The weight-net optimiser of the noisy-label scripts: SGD 1e-3, momentum 0.9, Nesterov, weight decay 5e-4.
_PAPER_WEIGHT_NET = {
    "meta_optimizer": "sgd", "meta_lr": 1e-3, "meta_momentum": 0.9, "meta_nesterov": True, "meta_weight_decay": 5e-4,
}
# Uniform noise: WRN-28-10, 20k iterations (≈40 epochs), lr ×0.1 at iterations 18k and 19k, 1000 meta images.
_PAPER_UNIFORM = {
    **_PAPER_CIFAR, **_PAPER_WEIGHT_NET, "model": "wrn28_10", "iterations": 20_000,
    "lr_milestones": (18_000, 19_000), "lr_unit": "iteration", "num_meta": 1000,
}
# Flip noise: ResNet-32, 30k iterations (≈60 epochs), lr ×0.1 at iterations 20k and 25k, 1000 meta images.
_PAPER_FLIP = {
    **_PAPER_CIFAR, **_PAPER_WEIGHT_NET, "model": "resnet32", "iterations": 30_000,
    "lr_milestones": (20_000, 25_000), "lr_unit": "iteration", "num_meta": 1000,
}
# The "stable" noisy-label script: ResNet-32, SGD without Nesterov, 120 epochs ×0.1 at 80 and 100, weight net
# Adam 1e-3 with weight decay 1e-4.
_PAPER_STABLE = {
    **_PAPER_CIFAR, "nesterov": False, "model": "resnet32", "epochs": 120, "lr_milestones": (80, 100),
    "lr_unit": "epoch", "num_meta": 1000, "meta_optimizer": "adam", "meta_lr": 1e-3, "meta_weight_decay": 1e-4,
}
# Long-tail: ResNet-32, 100 epochs ×0.1 at 80 and 90, 10 meta images per class, weight net SGD 1e-5 fixed (the
# official script passes the classifier's momentum, Nesterov and weight decay to it too).
_PAPER_LONG_TAIL = {
    **_PAPER_CIFAR, **_PAPER_WEIGHT_NET, "model": "resnet32", "epochs": 100, "lr_milestones": (80, 90),
    "lr_unit": "epoch", "meta_per_class": 10, "meta_lr": 1e-5,
}
# Clothing1M: ImageNet-pretrained ResNet-50, SGD 0.01 (momentum 0.9, no Nesterov), weight decay 1e-3, 10 epochs
# ×0.1 after 5, batch 32, weight net lr 1e-3, the data set's 7k clean validation images as the meta set. The data
# set must be given with --dataset folder:PATH; mwnet has no ImageNet weights, so the model starts from scratch.
_PAPER_CLOTHING1M = {
    **_PAPER_WEIGHT_NET, "method": "mwnet", "model": "resnet50", "lr": 0.01, "momentum": 0.9, "nesterov": False,
    "weight_decay": 1e-3, "epochs": 10, "lr_milestones": (5,), "lr_unit": "epoch", "lr_gamma": 0.1,
    "batch_size": 32, "meta_batch_size": 32, "augment": True, "normalize": "sum", "num_meta": None,
    "meta_per_class": None,
}

# The Fashion-MNIST protocol we can run on CPU (one optimiser and schedule for every method and setting): a seeded
# 20,000-image training subset, SGD 0.1 for 10 epochs, then 0.01 until epoch 25, then 0.001 to 30: the long
# low-lr phase is where plain CE memorises wrong labels. The model is an MLP 784-512-512-10 rather than the small
# cnn: measured on this protocol at 60 % uniform noise, the 0.07 M-parameter cnn does not memorise within 30
# epochs (CE best 86.47, last 85.93; benchmarks/fashion-mnist/README.md has the command), while the MLP does (CE
# best 82.25, last 74.78 over 3 seeds), and the memorising regime is the one sample weighting is for. The meta
# set is 100 clean images per class for noise, 10 per class for long-tail.
_FMNIST = {
    "dataset": "fashion-mnist", "train_subset": 20_000, "model": "mlp", "model_options": {"hidden": [512, 512]},
    "epochs": 30, "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "lr_milestones": (10, 25),
    "lr_unit": "epoch", "lr_gamma": 0.1, "batch_size": 100, "meta_batch_size": 100, "augment": False,
    "normalize": "sum", "meta_optimizer": "adam", "meta_lr": 1e-3, "meta_weight_decay": 1e-4,
}
_FMNIST_NOISE_META = {"meta_per_class": 100}
# Long tail: lr 0.05. At 0.1 plain CE on the imbalanced MLP diverges (a non-finite loss at iteration 20, measured;
# so do focal, fine-tune and MW-Net), a majority-class gradient that momentum keeps amplifying.
_FMNIST_LONG_TAIL_META = {"meta_per_class": 10, "lr": 0.05}

# `mwnet demo`: the Fashion-MNIST 40 % uniform setting cut to fit in a few minutes on 2 CPU cores: 5,000 images
# (1,000 of them the meta set), trained long enough that plain CE starts memorising the wrong labels.
_DEMO = {**_FMNIST, **_FMNIST_NOISE_META, "noise": "uniform:0.4", "train_subset": 5_000, "model": "cnn",
         "model_options": {}, "epochs": 30, "lr_milestones": (22,)}
# Its fallback where Fashion-MNIST is absent: scikit-learn's 8×8 digits (1,797 images) with an MLP.
_DEMO_DIGITS = {**_DEMO, "dataset": "digits", "model": "mlp", "train_subset": None, "meta_per_class": 10,
                "batch_size": 50, "meta_batch_size": 50, "epochs": 40, "lr_milestones": (30,)}

_CIFARS = ("cifar10", "cifar100")

PRESETS: dict[str, dict[str, Any]] = {
    **{f"paper-{ds}-uniform-{pct}": {**_PAPER_UNIFORM, "dataset": ds, "noise": f"uniform:{pct / 100}"}
       for ds in _CIFARS for pct in (40, 60)},
    **{f"paper-{ds}-flip-{pct}": {**_PAPER_FLIP, "dataset": ds, "noise": f"flip:{pct / 100}"}
       for ds in _CIFARS for pct in (20, 40)},
    **{f"paper-{ds}-stable-uniform-{pct}": {**_PAPER_STABLE, "dataset": ds, "noise": f"uniform:{pct / 100}"}
       for ds in _CIFARS for pct in (40, 60)},
    **{f"paper-{ds}-lt-{factor}": {**_PAPER_LONG_TAIL, "dataset": ds, "imbalance": float(factor)}
       for ds in _CIFARS for factor in (200, 100, 50, 20, 10, 1)},
    "paper-clothing1m": _PAPER_CLOTHING1M,
    "fmnist-clean": {**_FMNIST, **_FMNIST_NOISE_META},
    **{f"fmnist-uniform-{pct}": {**_FMNIST, **_FMNIST_NOISE_META, "noise": f"uniform:{pct / 100}"}
       for pct in (40, 60)},
    **{f"fmnist-flip2-{pct}": {**_FMNIST, **_FMNIST_NOISE_META, "noise": f"flip2:{pct / 100}"} for pct in (20, 40)},
    **{f"fmnist-lt-{factor}": {**_FMNIST, **_FMNIST_LONG_TAIL_META, "imbalance": float(factor)}
       for factor in (100, 200)},
    "demo": _DEMO,
    "demo-digits": _DEMO_DIGITS,
}


# --------------------------------------------------------------------------------------------------------------
# Resolution and validation
# --------------------------------------------------------------------------------------------------------------

_TYPES = field_types(TrainConfig)
# Fields whose value only says where/how to run, not what is computed: a resumed run may change them.
RUN_FIELDS = ("device", "data_dir")


def list_presets() -> list[str]:
    return sorted(PRESETS)


# Pairs of fields of which at most one is set: overriding one with a value clears the other.
_EXCLUSIVE = (("num_meta", "meta_per_class"), ("meta_per_class", "num_meta"))


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any], what: str = "override") -> TrainConfig:
    """A copy of `config` with `overrides` applied, each type-checked; unknown keys are a ValueError."""
    values = {}
    for key, value in overrides.items():
        if key not in _TYPES:
            raise ValueError(f"unknown config field {key!r} in {what}")
        values[key] = coerce_value(_TYPES[key], value, key)
    for key, other in _EXCLUSIVE:
        if values.get(key) is not None and other not in values:
            values[other] = None
    return dataclasses.replace(config, **values)


def resolve_config(preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """TrainConfig() ← the preset's overrides ← `overrides`, type-checked and validated.

    Giving `epochs` without `iterations` clears a preset's iteration count, so that `--epochs` always wins.
    """
    overrides = dict(overrides or {})
    config = TrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r} (see `mwnet train --list-presets`)")
        config = apply_overrides(config, PRESETS[preset], f"preset {preset!r}")
        config = dataclasses.replace(config, preset=preset)
    if "epochs" in overrides and "iterations" not in overrides:
        overrides["iterations"] = None
    config = apply_overrides(config, overrides)
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    """ValueError naming the first bad value; checks everything that can be checked without loading data."""
    positive_ints = ("epochs", "batch_size", "meta_batch_size", "eval_batch_size", "meta_interval",
                     "weight_net_hidden")
    for name in positive_ints:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(config, name)}")
    for name in ("iterations", "num_meta", "meta_per_class", "train_subset"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if config.num_meta is not None and config.meta_per_class is not None:
        raise ValueError("give num_meta or meta_per_class, not both")
    if not config.imbalance >= 1:
        raise ValueError(f"imbalance must be >= 1 (n_max / n_min), got {config.imbalance}")
    if not config.lr > 0:
        raise ValueError(f"lr must be positive, got {config.lr}")
    for name in ("momentum", "weight_decay", "meta_momentum", "meta_weight_decay"):
        if not getattr(config, name) >= 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    if config.nesterov and config.momentum == 0:
        raise ValueError("nesterov needs momentum > 0")
    if not config.meta_lr > 0:
        raise ValueError(f"meta_lr must be positive, got {config.meta_lr}")
    if not 0 < config.lr_gamma <= 1:
        raise ValueError(f"lr_gamma must be in (0, 1], got {config.lr_gamma}")
    milestones = config.lr_milestones
    if any(m < 1 for m in milestones) or any(b <= a for a, b in itertools.pairwise(milestones)):
        raise ValueError(f"lr_milestones must be positive and increasing, got {list(milestones)}")
    from mwnet.data import parse_noise

    parse_noise(config.noise)
    if config.method not in list_methods():
        raise ValueError(f"unknown method {config.method!r} (choose from {', '.join(list_methods())})")
    shared = set(_TYPES)
    for key in config.method_options:
        if key in shared:
            raise ValueError(f"method option {key!r} is a config field: set it directly (--{key.replace('_', '-')})")
        if key not in method_options(config.method):
            known = ", ".join(k for k in method_options(config.method) if k not in shared) or "none"
            raise ValueError(f"method {config.method!r} has no option {key!r} (options: {known})")
    if config.model != "auto":
        from mwnet import models

        if config.model not in models.list_models():
            raise ValueError(f"unknown model {config.model!r} (choose from auto, {', '.join(models.list_models())})")
    device = config.device
    if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def method_arguments(config: TrainConfig) -> dict[str, Any]:
    """The keyword options of `config.method`: its fields that are config fields, then `method_options`."""
    names = method_options(config.method)
    values = {k: getattr(config, k) for k in names if k in _TYPES}
    values.update(config.method_options)
    return values


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON-ready dict (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(values: Mapping[str, Any], what: str = "config") -> TrainConfig:
    """A TrainConfig from a dict such as `config_to_dict` wrote; unknown or mistyped fields are a ValueError."""
    config = apply_overrides(TrainConfig(), values, what)
    validate_config(config)
    return config


def load_config(path: str | Path) -> TrainConfig:
    """The TrainConfig stored in a run directory's config.json."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON file ({exc.msg} at line {exc.lineno}): {path}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file does not hold a JSON object: {path}")
    return config_from_dict(values, str(path))
