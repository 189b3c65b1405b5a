"""What a training run is: one `TrainConfig` dataclass, resolved from a preset and overrides, checked, stored.

A run's configuration is `TrainConfig()` with a preset's overrides applied (`mwnet.experiment.presets`), then the
user's overrides (every CLI flag), each value type-checked against the field's annotation and then against the
field's declared check. The resolved config is what `config.json` holds, one flat JSON object.

Each field is declared once, with its type, default, check and one-line description (`mwnet train --help` shows
it): the classifier's and the data's here, the weight net's in `mwnet.methods.mwnet.MWNetOptions` (and its
subclasses `CMWNetOptions`, `CMWNetSLOptions` for the class-aware methods), which
`TrainConfig` inherits, so the mwnet method's options and the config's fields cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mwnet.experiment.files import read_json_object
from mwnet.experiment.presets import PRESETS
from mwnet.methods import list_methods, method_options
from mwnet.methods.cmwnet_sl import CMWNetSLOptions
from mwnet.methods.frozen_vnet import FrozenWeightNetOptions
from mwnet.methods.options import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    Check,
    check_fields,
    coerce_value,
    field_types,
    option,
)

_AT_LEAST_ONE = Check(lambda v: math.isfinite(v) and v >= 1, ">= 1 (n_max / n_min) and finite")
# Every generator a run seeds (torch's, the loaders' seed + k) takes a 64-bit seed.
_SEED = Check(lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)")
_INCREASING = Check(lambda ms: all(m >= 1 for m in ms) and all(b > a for a, b in itertools.pairwise(ms)),
                    "positive and increasing")
_FACTOR = Check(lambda v: 0 < v <= 1, "in (0, 1]")
_DEVICE = Check(lambda d: d in ("auto", "cpu", "cuda", "mps") or d.startswith("cuda:"), "auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class TrainConfig(CMWNetSLOptions, FrozenWeightNetOptions):
    """Everything that determines a training run (given the same machine, the same numbers come out).

    Groups of fields (each field's own line says what it is):
        data: dataset, data_dir, noise, imbalance, num_meta / meta_per_class (setting one clears the other; every
            method gets the same split, plain CE simply ignores the meta set), meta_from_unverified,
            subsample_meta, labels_csv, trusted_csv, train_subset, augment.
        model and method: model, model_options, method, method_options (options of the method that are not
            fields here).
        classifier optimisation (SGD): epochs or iterations, batch sizes, lr, momentum, nesterov, weight_decay,
            lr_milestones, lr_gamma, lr_unit.
        weight net: the fields of `MWNetOptions` (normalize, hypergradient, meta_interval, virtual_loss,
            weight_net_hidden, weight_net_init, meta_optimizer, meta_lr, meta_momentum, meta_nesterov,
            meta_weight_decay), inherited through
            `CMWNetSLOptions`, which adds cmwnet's weight_net_heads and cmwnet-sl's teacher_decay,
            ce_warmup_epochs, mixup, mixup_alpha; and `FrozenWeightNetOptions` (weight_net_from: method
            frozen-vnet reuses an earlier run's V).
        run: seed, device, preset.
    """

    dataset: str = option("fashion-mnist", "data set: fashion-mnist, mnist, cifar10, cifar100, digits, "
                                           "folder:PATH, arrays:PATH")
    data_dir: str | None = option(None, "where data sets are looked for and downloaded")
    noise: str | None = option(None, "label noise: uniform:R, flip:R, flip2:R (R in [0, 1]) or none")
    imbalance: float = option(1.0, "long-tail imbalance factor n_max/n_min (1 = balanced)", check=_AT_LEAST_ONE)
    num_meta: int | None = option(None, "size of the clean meta set (0: none, for methods that use none)",
                                  check=NON_NEGATIVE)
    meta_per_class: int | None = option(10, "clean meta samples per class (instead of num_meta)", check=POSITIVE_INT)
    meta_from_unverified: bool = option(False, "carve the meta set from training labels nobody verified (folder "
                                               "or arrays data that ship no trusted meta set)")
    subsample_meta: bool = option(False, "keep only num_meta / meta_per_class of a meta set the data ships "
                                         "(default: all of it)")
    labels_csv: str | None = option(None, "folder:PATH only: training labels as path,label[,trusted] rows "
                                          "[PATH/noisy_labels.csv when present]")
    trusted_csv: str | None = option(None, "folder:PATH only: the training images whose label was verified, one "
                                           "path a row")
    train_subset: int | None = option(None, "train on a seeded subset of this many images", check=POSITIVE_INT)
    augment: bool = option(False, "random crop + horizontal flip on training batches")

    model: str = option("auto", "model: auto (mlp for tables, cnn up to 28 px, resnet32 up to 32 px, resnet50 "
                                "above), cnn, mlp, resnet32, resnet50, wrn28_10, or module:callable (your own: "
                                "called with input_shape= and num_classes=, returns an nn.Module)")
    model_options: dict[str, Any] = field(default_factory=dict, metadata={
        "doc": "extra keyword arguments of the model factory, e.g. dropout=0.3 for wrn28_10"})
    method: str = option("mwnet", "training method (see `mwnet info`): ce, mwnet, ...")
    method_options: dict[str, Any] = field(default_factory=dict, metadata={
        "doc": "options of the method that are not config fields, e.g. focal's gamma"})

    epochs: int = option(30, "training epochs (given alone, clears a preset's iterations)", check=POSITIVE_INT)
    iterations: int | None = option(None, "stop after exactly this many iterations instead; the epochs follow "
                                          "(the paper's noise settings)", check=POSITIVE_INT)
    batch_size: int = option(100, "training batch size", check=POSITIVE_INT)
    meta_batch_size: int = option(100, "meta batch size", check=POSITIVE_INT)
    eval_batch_size: int = option(500, "evaluation batch size", check=POSITIVE_INT)
    lr: float = option(0.1, "classifier learning rate (SGD)", check=POSITIVE)
    momentum: float = option(0.9, "classifier SGD momentum", check=NON_NEGATIVE)
    nesterov: bool = option(True, "Nesterov momentum for the classifier")
    weight_decay: float = option(5e-4, "classifier weight decay", check=NON_NEGATIVE)
    lr_milestones: tuple[int, ...] = option((), "multiply the lr by lr_gamma at these epochs or iterations",
                                            check=_INCREASING)
    lr_gamma: float = option(0.1, "lr factor at each milestone", check=_FACTOR)
    lr_unit: Literal["epoch", "iteration"] = option("epoch", "count lr_milestones in 'epoch' or 'iteration'")

    seed: int = option(0, "seed of the split, the noise, the initialisation and the data order", check=_SEED)
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N", check=_DEVICE)
    preset: str | None = option(None, "the preset this config was resolved from (a record only)")


_TYPES = field_types(TrainConfig)
# Fields whose value only says where/how to run, not what is computed: a resumed run may change them.
RUN_FIELDS = ("device", "data_dir")
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


def check_run_length(overrides: Mapping[str, Any]) -> None:
    """ValueError when the user's overrides (a command line's flags) set both epochs and iterations: the epochs
    would be silently ignored."""
    if overrides.get("epochs") is not None and overrides.get("iterations") is not None:
        raise ValueError("give --epochs or --iterations, not both (the iterations decide the number of epochs)")


def validate_config(config: TrainConfig) -> None:
    """ValueError naming the first bad value; checks everything that can be checked without loading data."""
    check_fields(config)
    if config.num_meta is not None and config.meta_per_class is not None:
        raise ValueError("give num_meta or meta_per_class, not both")
    if config.nesterov and config.momentum == 0:
        raise ValueError("nesterov needs momentum > 0")
    from mwnet.data import parse_noise

    parse_noise(config.noise)
    if config.method not in list_methods():
        raise ValueError(f"unknown method {config.method!r} (choose from {', '.join(list_methods())})")
    if config.weight_net_from is not None and "weight_net_from" not in method_options(config.method):
        raise ValueError(f"weight_net_from (--weight-net-from) is an option of method frozen-vnet, not of "
                         f"{config.method!r}: add --method frozen-vnet")
    for key in config.method_options:
        if key in _TYPES:
            raise ValueError(f"method option {key!r} is a config field: set it directly (--{key.replace('_', '-')})")
        if key not in method_options(config.method):
            known = ", ".join(k for k in method_options(config.method) if k not in _TYPES) or "none"
            raise ValueError(f"method {config.method!r} has no option {key!r} (options: {known})")
    if config.model != "auto":
        from mwnet import models

        if ":" in config.model:
            models.parse_model_spec(config.model)
        elif config.model not in models.list_models():
            raise ValueError(f"unknown model {config.model!r} (choose from auto, {', '.join(models.list_models())}, "
                             f"or module:callable for your own)")
    for name in ("labels_csv", "trusted_csv"):
        if getattr(config, name) is not None and not config.dataset.strip().lower().startswith("folder:"):
            raise ValueError(f"{name} (--{name.replace('_', '-')}) applies to folder:PATH data sets only, not "
                             f"{config.dataset!r}")


def method_arguments(config: TrainConfig) -> dict[str, Any]:
    """The keyword options of `config.method`: its fields that are config fields, then `method_options`."""
    names = method_options(config.method)
    values = {k: getattr(config, k) for k in names if k in _TYPES}
    values.update(config.method_options)
    return values


def config_difference(saved: TrainConfig, wanted: TrainConfig) -> tuple[str, Any, Any] | None:
    """The first field in which a saved run differs from `wanted`, as (name, saved value, wanted value) in JSON
    form, or None when it is the same run.

    Ignored: where it runs (RUN_FIELDS), the preset's name (a record) and what the runner resolves (model "auto";
    epochs where iterations decide them).
    """
    a, b = config_to_dict(saved), config_to_dict(wanted)
    for key in a:
        if key in (*RUN_FIELDS, "preset"):
            continue
        if (key == "model" and wanted.model == "auto") or (key == "epochs" and wanted.iterations is not None):
            continue
        if a[key] != b[key]:
            return key, a[key], b[key]
    return None


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
    return config_from_dict(read_json_object(path), str(path))
