"""Building a run from its config: data → split → model → optimizer and schedule → method → loaders.

Nothing here writes a file: a bad config, data set or method option fails in `build` before the run directory is
touched.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mwnet.experiment.config import TrainConfig, method_arguments
from mwnet.methods import Method, MethodContext, create_method


@dataclass
class Setup:
    """Everything a run is made of once built; `config` has its "auto" fields resolved and its epoch count set."""

    config: TrainConfig
    device: torch.device
    split: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    method: Method
    loader: Any
    meta: Any
    test_loader: Any
    iterations_per_epoch: int
    total_iterations: int
    epochs: int
    # The whole meta set, in order, unaugmented: the held-out data the run selects its model on (best_model.pt).
    meta_eval_loader: Any = None
    # Whether split.y_true is known to be the truth (verified labels), not merely the labels as given.
    truth_known: bool = True
    ranks: Any = None  # mwnet.experiment.ranks.Ranks when several processes train the run (torchrun), else None


def resolve_device(requested: str) -> torch.device:
    """"auto" → CUDA when available, else CPU; an unavailable explicit device is a ValueError."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available (use --device cpu)")
    if requested == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available (use --device cpu)")
    return torch.device(requested)


def auto_model(input_shape: tuple[int, ...]) -> str:
    """The default model for an input shape: mlp for tables, cnn up to 28 px, resnet32 up to 32 px, else resnet50."""
    if len(input_shape) != 3:
        return "mlp"
    side = max(input_shape[1:])
    return "cnn" if side <= 28 else "resnet32" if side <= 32 else "resnet50"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(config: TrainConfig, device: torch.device, dataset: Any = None, ranks: Any = None) -> Setup:
    """Load the data (unless `dataset` is given), split it, resolve "auto" fields and build model, optimizer,
    schedule, method and loaders.

    With `ranks` (several processes), the loaders yield this rank's block of each global batch, the device is the
    rank's own, and each rank gets its own random stream once the model is built (mwnet.experiment.ranks).
    """
    from mwnet.data import BatchLoader, MetaSampler

    if ranks is not None:
        ranks.check_method(config.method)
        device = ranks.device(device)
    shard = None if ranks is None else ranks.shard
    dataset = load_run_dataset(config) if dataset is None else dataset
    split, config, iterations_per_epoch, total = split_and_schedule(config, dataset)
    epochs = config.epochs
    model = create_model(config, split, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.lr_milestones), gamma=config.lr_gamma)
    meta_size = 0 if split.y_meta is None else len(split.y_meta)
    method = create_run_method(config, split, model, optimizer, device)
    if ranks is not None:
        ranks.check_batches("training", "--batch-size", len(split.y_train), config.batch_size)
        if meta_size:
            ranks.check_batches("meta", "--meta-batch-size", meta_size, config.meta_batch_size)
    loader = BatchLoader(split.x_train, split.y_train, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                         device=device, augment=config.augment, mean=split.mean, std=split.std, shard=shard)
    meta = None
    if meta_size:
        meta = MetaSampler(split.x_meta, split.y_meta, batch_size=min(config.meta_batch_size, meta_size),
                           seed=config.seed + 1, device=device, augment=config.augment, mean=split.mean,
                           std=split.std, shard=shard)
    test_loader = BatchLoader(split.x_test, split.y_test, batch_size=config.eval_batch_size, shuffle=False,
                              seed=0, device=device, augment=False, mean=split.mean, std=split.std, shard=shard)
    meta_eval = None if not meta_size else BatchLoader(
        split.x_meta, split.y_meta, batch_size=config.eval_batch_size, shuffle=False, seed=0, device=device,
        augment=False, mean=split.mean, std=split.std, shard=shard)
    truth_known = dataset.labels_verified or dataset.y_train_true is not None
    if ranks is not None:
        ranks.seed_streams(config.seed)
    return Setup(config, device, split, model, optimizer, scheduler, method, loader, meta, test_loader,
                 iterations_per_epoch, total, epochs, meta_eval, truth_known, ranks)


def load_run_dataset(config: TrainConfig, *, verify: bool = True) -> Any:
    """The data set of `config` (downloaded where allowed and missing; `verify`: check official checksums)."""
    from mwnet.data import load_dataset

    return load_dataset(config.dataset, data_dir=config.data_dir, labels_csv=config.labels_csv,
                        trusted_csv=config.trusted_csv, verify=verify)


def split_and_schedule(config: TrainConfig, dataset: Any) -> tuple[Any, TrainConfig, int, int]:
    """(the split of `dataset`, `config` with its model and epochs resolved, iterations per epoch, total
    iterations)."""
    from mwnet.data import make_split

    split = make_split(dataset, noise=config.noise, imbalance=config.imbalance, num_meta=config.num_meta,
                       meta_per_class=config.meta_per_class, train_subset=config.train_subset, seed=config.seed,
                       meta_from_unverified=config.meta_from_unverified,
                       subsample_shipped_meta=config.subsample_meta)
    train_size = len(split.y_train)
    if train_size == 0:
        raise ValueError(f"the training set of {config.dataset} is empty after the split")
    iterations_per_epoch = math.ceil(train_size / config.batch_size)
    if config.iterations is not None:
        total = config.iterations
        epochs = math.ceil(total / iterations_per_epoch)
    else:
        epochs = config.epochs
        total = epochs * iterations_per_epoch
    model_name = auto_model(tuple(split.input_shape)) if config.model == "auto" else config.model
    return split, dataclasses.replace(config, model=model_name, epochs=epochs), iterations_per_epoch, total


def create_model(config: TrainConfig, split: Any, device: torch.device) -> torch.nn.Module:
    """The classifier `config.model` (resolved) for the inputs of `split`, on `device`.

    A registered model is built on the meta device first (its options checked, nothing allocated) and refused
    when training it could not fit in the device's memory; a `module:callable` model is checked on two samples.
    """
    from mwnet import models

    if models.is_model_spec(config.model):
        model = models.create_user_model(config.model, input_shape=tuple(split.input_shape),
                                         num_classes=split.num_classes, **config.model_options).to(device)
        _check_user_model(config.model, model, split, device)
        return model
    with torch.device("meta"):
        probe = _registered_model(config, split)
    _check_fits(config.model, probe, device)
    return _registered_model(config, split).to(device)


def create_run_method(config: TrainConfig, split: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      device: torch.device) -> Method:
    """The training method of `config` for `model`; a method that needs a meta set where the split has none is a
    ValueError."""
    counts = torch.bincount(torch.as_tensor(split.y_train), minlength=split.num_classes)
    context = MethodContext(num_classes=split.num_classes, class_counts=tuple(int(c) for c in counts),
                            epochs=config.epochs, device=device)
    method = create_method(config.method, model, optimizer, context, **method_arguments(config))
    if method.uses_meta and (split.y_meta is None or len(split.y_meta) == 0):
        raise ValueError(f"method {config.method!r} needs a clean meta set: give --num-meta or --meta-per-class")
    return method


def check_buildable(config: TrainConfig, dataset: Any) -> None:
    """Raise what `build(config, ..., dataset)` would raise, without its cost: the device, the split (e.g. a meta
    set larger than a class holds), the model's options and size, the method's options. A registered model and the
    method are built on the meta device: nothing is allocated, no weight is computed."""
    from mwnet import models

    device = resolve_device(config.device)
    split, config, _, _ = split_and_schedule(config, dataset)
    meta = torch.device("meta")
    if models.is_model_spec(config.model):
        model = create_model(config, split, device)  # the user's own model: built and probed as training will
    else:
        with meta:
            model = _registered_model(config, split)
        _check_fits(config.model, model, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    create_run_method(config, split, model, optimizer, meta)  # its own modules (a weight net) go to `meta`


def device_memory(device: torch.device) -> int | None:
    """The memory of `device` in bytes (a CPU's: the machine's), or None where it cannot be read."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
    return None


def _registered_model(config: TrainConfig, split: Any) -> torch.nn.Module:
    from mwnet import models

    shape = tuple(split.input_shape)
    in_channels, input_size = (shape[0], shape[1]) if len(shape) == 3 else (int(np.prod(shape)), 1)
    return models.create(config.model, in_channels=in_channels, num_classes=split.num_classes,
                         input_size=input_size, **config.model_options)


def _check_fits(name: str, model: torch.nn.Module, device: torch.device) -> None:
    """ValueError when the model's weights, gradients and momentum alone exceed the device's memory."""
    count = sum(p.numel() for p in model.parameters())
    need = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    memory = device_memory(device)
    if memory is not None and need > memory:
        raise ValueError(f"model {name!r} has {count:,} parameters: training it needs at least {need / 2**30:.1f} "
                         f"GiB (weights, gradients, momentum), more than the {memory / 2**30:.1f} GiB of {device}")


def _check_user_model(spec: str, model: torch.nn.Module, split: Any, device: torch.device) -> None:
    """A `module:callable` model must map a batch to logits (n, K): checked on two samples before training."""
    from mwnet.data import BatchLoader
    from mwnet.data.images import take
    from mwnet.models.user import check_logits

    x, y = (split.x_test, split.y_test) if len(split.y_test) else (split.x_train, split.y_train)
    idx = torch.arange(min(2, len(y)))
    x_probe, _, _ = next(iter(BatchLoader(take(x, idx), y[idx], batch_size=len(idx), shuffle=False, device=device,
                                          mean=split.mean, std=split.std)))
    check_logits(spec, model, x_probe, split.num_classes)
