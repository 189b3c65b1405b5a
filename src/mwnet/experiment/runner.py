"""Train one configuration into a run directory: data → split → model → method → epochs → metrics → files.

    from mwnet.experiment import resolve_config, train
    summary = train(resolve_config("fmnist-uniform-40", {"method": "ce"}), "runs/ce")

`train` wires the parts together: `lock` (one writer per run directory), `build` (the run from its config), `loop`
(the epochs), `checkpoint` (the run's state in checkpoint.pt), `rundir` and `manifest` (the files of the run
directory) and `signals` (Ctrl-C). docs/reliability.md states what survives kills, full disks and concurrency.

Interrupts: SIGINT (Ctrl-C) between two iterations saves a mid-epoch checkpoint, with the loaders' positions,
and raises `TrainingInterrupted`; `train(..., resume=True)` continues exactly. A hard kill loses at most the
current epoch: resuming restarts it from the last epoch checkpoint and truncates metrics.jsonl to match; a run
killed before its first checkpoint was complete resumes from the beginning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mwnet.experiment.build import build, resolve_device, seed_everything
from mwnet.experiment.checkpoint import restore_run, save_run
from mwnet.experiment.config import RUN_FIELDS, TrainConfig, config_difference, load_config, validate_config
from mwnet.experiment.lock import RunLock
from mwnet.experiment.loop import LoopHooks, RunState, train_epochs
from mwnet.experiment.ranks import agreement, current_ranks, resume_streams
from mwnet.experiment.rundir import EpochFiles, check_run_directory, data_line, finish_run
from mwnet.experiment.selection import SELECTED_MODEL, save_selected_model
from mwnet.experiment.signals import sigint_flag

Log = Callable[[str], None]


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
          tensorboard: bool = False, progress: bool | None = False, log: Log | None = None,
          on_event: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Train `config` into the run directory `out` and return the summary (also written to summary.json).

    Args:
        config: a validated TrainConfig (see `resolve_config`).
        out: the run directory: missing or empty for a new run; one that already holds a run is refused unless
            `resume` or `overwrite`, one that holds anything else always.
        resume: continue the run in `out` from its checkpoint (the config must match the saved one, except for
            device and data_dir); a run with no complete checkpoint starts again from the beginning.
        overwrite: delete the files the run in `out` wrote (its manifest lists them) first; nothing else.
        tensorboard: also write TensorBoard events to out/tensorboard (needs the tensorboard package).
        progress: a tqdm bar per epoch [False]; None = only when stderr is a terminal.
        log: receives one line per epoch and a few status lines (the first says what was trained on, and where
            the meta set came from) [silent].
        on_event: receives ("iteration", n) after global iteration n and ("epoch-end", e) after epoch e's
            metrics line is written, before its checkpoint [none]; the resume tests kill the process there.

    Under torch.distributed with several ranks (`torchrun ... -m mwnet train`), every rank calls `train` and the
    ranks train one run together: each takes its block of every global batch, rank 0 alone locks and writes the
    run directory, and an error on one rank raises on all (mwnet.experiment.ranks, docs/distributed.md).
    Raises:
        ValueError / FileNotFoundError: a bad config, data set or run directory; nothing is written then.
        RunDirectoryLocked: another process is writing `out` (a ValueError).
        OSError: the disk is full or `out` cannot be written; the last checkpoint stays valid.
        TrainingInterrupted: SIGINT arrived; the checkpoint in `out` resumes the run.
    """
    ranks = current_ranks()  # several processes (torchrun): mwnet.experiment.ranks; None in one process
    log = log or (lambda _line: None)
    if ranks is not None and not ranks.writer:
        log, progress = (lambda _line: None), False
    lock = RunLock(out) if ranks is None or ranks.writer else contextlib.nullcontext()
    with agreement(ranks):  # a bad config, or another process holding `out`, stops every rank
        validate_config(config)
        lock.__enter__()
    try:  # held until the run ends: no other process can write `out` meanwhile
        return _train_locked(config, Path(out), ranks, resume=resume, overwrite=overwrite, tensorboard=tensorboard,
                             progress=progress, log=log, on_event=on_event)
    finally:
        lock.__exit__(None, None, None)


def _train_locked(config: TrainConfig, out: Path, ranks: Any, *, resume: bool, overwrite: bool, tensorboard: bool,
                  progress: bool | None, log: Log, on_event: Callable[[str, int], None] | None) -> dict[str, Any]:
    """`train`, with the run directory's lock held (by rank 0 under torchrun)."""
    with agreement(ranks):  # a rank that fails here (a file it cannot read, a bad value) stops every rank
        mode = check_run_directory(out, resume, overwrite, tensorboard)
        device = resolve_device(config.device)
        if resume:
            # The saved run decides the numbers; only the fields that say where to run may change.
            saved = load_config(out / "config.json")
            difference = config_difference(saved, config)
            if difference is not None:
                name, was, now = difference
                raise ValueError(f"cannot resume {out}: {name} is {was!r} in the saved run but {now!r} now")
            config = dataclasses.replace(saved, **{k: getattr(config, k) for k in RUN_FIELDS})

        seed_everything(config.seed)
        setup = build(config, device, ranks=ranks)
        state = RunState()
        if mode == "resume":
            resume_streams(restore_run(out / "checkpoint.pt", setup, state), ranks, out / "checkpoint.pt")

    # Everything is validated: from here on files are written (by rank 0 alone under torchrun).
    writer = ranks is None or ranks.writer
    with agreement(ranks):
        files = EpochFiles(out, setup.config, epochs_done=state.epochs_done if mode == "resume" else None,
                           overwrite=mode == "restart", tensorboard=tensorboard) if writer else None
    path = out / "checkpoint.pt"
    save = (lambda: save_run(setup, state, path)) if ranks is None else ranks.saver(setup, state, path)
    log(data_line(setup))
    if mode == "resume":
        log(f"resuming {out} at epoch {state.epochs_done + 1}, iteration {state.iteration}")
    else:
        if resume:
            log(f"no complete checkpoint in {out} (the run stopped while writing its first one): starting from the "
                f"beginning")
        save()  # a run killed before its first epoch ends can be resumed too
    try:
        with sigint_flag() as interrupted:
            hooks = LoopHooks(run_dir=out, save=save, write_epoch=files.write_epoch if files else _no_files,
                              log=log, interrupted=interrupted if ranks is None else lambda: ranks.any(interrupted()),
                              show_bar=sys.stderr.isatty() if progress is None else progress, on_event=on_event,
                              save_selected=(lambda metrics: save_selected_model(setup, metrics, out / SELECTED_MODEL))
                              if writer else _no_files)
            train_epochs(setup, state, hooks)
    finally:
        if files is not None:
            files.close()
    return finish_run(setup, state, out, log) if ranks is None else ranks.finish(setup, state, out, log)


def _no_files(*_args: Any) -> None:
    """Ranks other than 0 write no file."""
