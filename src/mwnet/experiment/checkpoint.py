"""Checkpoints: what a run's state maps to in checkpoint.pt and back, atomically, with every random state.

A checkpoint is one dict of tensors, numbers, strings, lists and dicts, so that it loads with
`torch.load(weights_only=True)`: nothing in it can execute code. It is written atomically
(`mwnet.experiment.files.write_atomic`), so a crash at any moment leaves either the old or the new checkpoint.
It holds the model, both optimizers and the schedule, the method's state, the loaders' positions, the epoch in
progress and the global random states: a run resumed from it computes the numbers of an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.experiment.build import Setup
from mwnet.experiment.config import config_difference, config_from_dict, config_to_dict
from mwnet.experiment.digest import content_digest
from mwnet.experiment.files import first_line, write_atomic
from mwnet.experiment.loop import EpochRecord, RunState

CHECKPOINT_FORMAT = 2  # 2: with the content checksum and the config compared on resume
CHECKSUM_KEY = "content_sha256"


class CorruptCheckpointError(ValueError):
    """A checkpoint whose content does not match the checksum it was saved with (or that lacks one)."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` and the checksum of its content (`mwnet.experiment.digest`) to `path` atomically.

    The archive is built in memory first, so that a full disk or a read-only folder is an OSError naming `path`
    (not an error from inside torch's zip writer), with the old file left in place.
    """
    buffer = io.BytesIO()
    torch.save({**state, CHECKSUM_KEY: content_digest(state)} if isinstance(state, dict) else state, buffer)
    write_atomic(path, buffer.getbuffer())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    require_checksum: bool = False) -> dict[str, Any]:
    """The dict saved by `save_checkpoint` (without its checksum); FileNotFoundError if absent, ValueError if
    unreadable, CorruptCheckpointError if its content does not match its checksum (or, with `require_checksum`,
    it has none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        raise ValueError(f"unreadable checkpoint {path} (not a torch.save zip archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise ValueError(f"unreadable checkpoint {path} ({first_line(exc)[:200]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"not an mwnet checkpoint (no dict inside): {path}")
    checksum = state.pop(CHECKSUM_KEY, None)
    if checksum is None and require_checksum:
        raise CorruptCheckpointError(f"checkpoint without a content checksum (not written by this mwnet): {path}")
    if checksum is not None and checksum != content_digest(state):
        raise CorruptCheckpointError(f"corrupted checkpoint {path}: its content does not match the checksum it was "
                                     f"saved with")
    return state


def save_run(setup: Setup, state: RunState, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Checkpoint a run as it stands (between two iterations); `extra` entries are added (several processes:
    mwnet.experiment.ranks)."""
    save_checkpoint({
        "format": CHECKPOINT_FORMAT,
        "config": config_to_dict(setup.config),
        "epochs_done": state.epochs_done,
        "iteration": state.iteration,
        "best_test_acc": state.best_test_acc,
        "best_epoch": state.best_epoch,
        "selected": {"epoch": state.selected_epoch, "meta_acc": state.selected_meta_acc,
                     "meta_loss": state.selected_meta_loss, "test_acc": state.selected_test_acc},
        "train_seconds": state.train_seconds,
        "eval_seconds": state.eval_seconds,
        "resumes": state.resumes,
        "epoch": None if state.epoch is None else state.epoch.state_dict(),
        "last_record": None if state.last_record is None else json.dumps(state.last_record),
        "model": setup.model.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "method": setup.method.state_dict(),
        "loader": setup.loader.state_dict(),
        "meta": None if setup.meta is None else setup.meta.state_dict(),
        "rng": rng_state(),
        **(extra or {}),
    }, path)


def restore_run(path: Path, setup: Setup, state: RunState) -> dict[str, Any]:
    """Load the checkpoint at `path` into a freshly built `setup` and `state` (counting one more resume); returns
    the checkpoint."""
    checkpoint = load_checkpoint(path, map_location=setup.device, require_checksum=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not an mwnet checkpoint of format {CHECKPOINT_FORMAT}: {path}")
    check_same_run(checkpoint, setup, path)
    try:
        setup.model.load_state_dict(checkpoint["model"])
        setup.optimizer.load_state_dict(checkpoint["optimizer"])
        setup.scheduler.load_state_dict(checkpoint["scheduler"])
        setup.method.load_state_dict(checkpoint["method"])
        setup.loader.load_state_dict(checkpoint["loader"])
        if setup.meta is not None:
            setup.meta.load_state_dict(checkpoint["meta"])
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"checkpoint does not match this run ({first_line(exc)[:200]}): {path}") from None
    set_rng_state(checkpoint["rng"])
    state.epochs_done = int(checkpoint["epochs_done"])
    state.iteration = int(checkpoint["iteration"])
    state.best_test_acc = float(checkpoint["best_test_acc"])
    state.best_epoch = int(checkpoint["best_epoch"])
    selected = checkpoint.get("selected") or {}  # absent from checkpoints written before model selection
    state.selected_epoch = int(selected.get("epoch", 0))
    state.selected_meta_acc = float(selected.get("meta_acc", -1.0))
    state.selected_meta_loss = float(selected.get("meta_loss", float("inf")))
    state.selected_test_acc = selected.get("test_acc")
    state.train_seconds = float(checkpoint["train_seconds"])
    state.eval_seconds = float(checkpoint["eval_seconds"])
    state.resumes = int(checkpoint["resumes"]) + 1
    epoch = checkpoint["epoch"]
    state.epoch = None if epoch is None else EpochRecord.from_state(
        {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in epoch.items()})
    state.last_record = None if checkpoint["last_record"] is None else json.loads(checkpoint["last_record"])
    return checkpoint


def check_same_run(checkpoint: dict[str, Any], setup: Setup, path: Path) -> None:
    """ValueError unless the config a checkpoint was saved with is the run's (device and data_dir may differ):
    a checkpoint copied from another run of the same shapes would otherwise resume silently."""
    if not isinstance(checkpoint.get("config"), dict):
        raise ValueError(f"checkpoint without its run's config: {path}")
    saved = config_from_dict(checkpoint["config"], f"the config in {path}")
    difference = config_difference(saved, setup.config)
    if difference is not None:
        name, was, now = difference
        raise ValueError(f"{path} belongs to another run: {name} is {was!r} there but {now!r} in this run's config")


def rng_state() -> dict[str, Any]:
    """Every global random state a run may touch: Python, NumPy, torch CPU and CUDA (as tensors and numbers)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only where CUDA is in use)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
