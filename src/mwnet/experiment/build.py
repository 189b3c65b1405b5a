"""Building a run from its config: data → split → model → optimizer and schedule → method → loaders.

Nothing here writes a file: a bad config, data set or method option fails in `build` before the run directory is
touched.
"""

from __future__ import annotations

import dataclasses
import math
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


def build(config: TrainConfig, device: torch.device, ranks: Any = None) -> Setup:
    """Load the data, split it, resolve "auto" fields and build model, optimizer, schedule, method and loaders.

    With `ranks` (several processes), the loaders yield this rank's block of each global batch, the device is the
    rank's own, and each rank gets its own random stream once the model is built (mwnet.experiment.ranks).
    """
    from mwnet import models
    from mwnet.data import BatchLoader, MetaSampler, load_dataset, make_split

    if ranks is not None:
        ranks.check_method(config.method)
        device = ranks.device(device)
    shard = None if ranks is None else ranks.shard
    dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    split = make_split(dataset, noise=config.noise, imbalance=config.imbalance, num_meta=config.num_meta,
                       meta_per_class=config.meta_per_class, train_subset=config.train_subset, seed=config.seed,
                       meta_from_unverified=config.meta_from_unverified)
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
    config = dataclasses.replace(config, model=model_name, epochs=epochs)

    shape = tuple(split.input_shape)
    in_channels, input_size = (shape[0], shape[1]) if len(shape) == 3 else (int(np.prod(shape)), 1)
    model = models.create(model_name, in_channels=in_channels, num_classes=split.num_classes,
                          input_size=input_size, **config.model_options).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.lr_milestones), gamma=config.lr_gamma)
    meta_size = 0 if split.y_meta is None else len(split.y_meta)
    counts = torch.bincount(torch.as_tensor(split.y_train), minlength=split.num_classes)
    context = MethodContext(num_classes=split.num_classes, class_counts=tuple(int(c) for c in counts),
                            epochs=epochs, device=device)
    method = create_method(config.method, model, optimizer, context, **method_arguments(config))
    if method.uses_meta and meta_size == 0:
        raise ValueError(f"method {config.method!r} needs a clean meta set: give --num-meta or --meta-per-class")
    if ranks is not None:
        ranks.check_batches("training", "--batch-size", train_size, config.batch_size)
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
    if ranks is not None:
        ranks.seed_streams(config.seed)
    return Setup(config, device, split, model, optimizer, scheduler, method, loader, meta, test_loader,
                 iterations_per_epoch, total, epochs, ranks)
