"""The model a run selects on held-out data: `best_model.pt`, the weights of the epoch with the best meta-set accuracy.

The paper reports the best *test* accuracy over the epochs (`best_test_acc` in summary.json): a number chosen on the
test set, fine for comparing with the paper but optimistic as an estimate, and no model is kept for it. A model to
use must be chosen without the test set. mwnet chooses on the clean meta set, as a whole, after every epoch
(accuracy, ties to the lower loss, then to the earlier epoch), rather than on a validation split carved from it:

* the meta set is the only data the user has vouched for; carving a validation split from it would shrink the set
  that trains V (often 10 images per class) and change the method against the paper;
* the classifier is never trained on it: plain CE, focal and class-balanced runs ignore it entirely, and MW-Net
  sees it only through V's update (a few scalar weights per batch), so its accuracy there is close to held-out.
  The exception is a method that trains the classifier on it (fine-tune, in its last epochs): there the
  meta-set accuracy is optimistic, and summary.json says so.

best_model.pt is one dict of tensors, numbers and strings, loadable with `torch.load(weights_only=True)`: the
model's state_dict, the epoch, its meta-set and test accuracy, and what rebuilds the model (name, options, input
shape, class count), written atomically. `load_selected_model(run_dir)` returns the model itself; a model of your
own (`--model module:callable`) you build and pass in: mwnet imports no code that a file names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mwnet.experiment.build import Setup
from mwnet.experiment.checkpoint import load_checkpoint, save_checkpoint

SELECTED_MODEL = "best_model.pt"
SELECTED_FORMAT = "mwnet-selected-model-1"
# Methods whose classifier trains on the meta set itself: their meta-set accuracy is not a held-out figure.
TRAINS_ON_META = ("fine-tune",)


def selection_note(method: str) -> str:
    """One sentence for summary.json: how the model in best_model.pt was chosen, and how far to trust that."""
    note = "chosen on the clean meta set (accuracy, ties to the lower loss), never on the test set"
    if method in TRAINS_ON_META:
        note += f"; method {method} trains the classifier on the meta set, so its meta-set accuracy is optimistic"
    return note


def save_selected_model(setup: Setup, metrics: dict, path: str | Path) -> None:
    """Write the model as it stands after the epoch of `metrics` to `path` (atomically)."""
    split, config = setup.split, setup.config
    save_checkpoint({
        "format": SELECTED_FORMAT,
        "model": setup.model.state_dict(),
        "epoch": int(metrics["epoch"]),
        "meta_set_acc": float(metrics["meta_set_acc"]),
        "test_acc": float(metrics["test_acc"]),
        "model_name": config.model,
        "model_options": dict(config.model_options),
        "input_shape": [int(s) for s in split.input_shape],
        "num_classes": int(split.num_classes),
        "classes": [str(c) for c in split.classes],
        "mean": None if split.mean is None else [float(v) for v in split.mean],
        "std": None if split.std is None else [float(v) for v in split.std],
    }, path)


def read_selected_model(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict `save_selected_model` wrote (nothing in it can execute code); ValueError for another file."""
    state = load_checkpoint(path, map_location=map_location)
    if state.get("format") != SELECTED_FORMAT or not isinstance(state.get("model"), dict):
        raise ValueError(f"not an mwnet selected model ({SELECTED_MODEL}): {path}")
    return state


def load_selected_model(run_dir: str | Path, model: nn.Module | None = None,
                        map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(the model of RUN_DIR/best_model.pt in eval mode, the file's other entries: epoch, accuracies, classes, the
    normalisation mean/std of inputs scaled to [0, 1]).

    A registered model is rebuilt from its name; a model of your own (`module:callable`) must be passed as `model`
    (built as for training), since mwnet never imports code that a file names.
    """
    from mwnet import models

    path = Path(run_dir) / SELECTED_MODEL
    state = read_selected_model(path, map_location)
    name, options, shape = state["model_name"], dict(state["model_options"]), tuple(state["input_shape"])
    if model is None:
        if models.is_model_spec(name):
            raise ValueError(f"{path} holds your own model {name!r}: build it and pass it as model= (mwnet imports "
                             f"no code that a file names)")
        in_channels, size = (shape[0], shape[1]) if len(shape) == 3 else (int(torch.tensor(shape).prod()), 1)
        model = models.create(name, in_channels=in_channels, num_classes=state["num_classes"], input_size=size,
                              **options)
    try:
        model.load_state_dict(state.pop("model"))
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit model {name!r} ({str(exc).splitlines()[0][:200]})") from None
    return model.to(map_location).eval(), state
