"""Ctrl-C during training: the first SIGINT only raises a flag, so the loop can save a checkpoint and stop cleanly.

The loop checks the flag between iterations; when it is set, the loop saves a mid-epoch checkpoint and raises
`TrainingInterrupted`, and `train(..., resume=True)` continues exactly. A second SIGINT aborts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was saved; `train(..., resume=True)` continues exactly."""

    def __init__(self, run_dir: Path, epoch: int, iteration: int) -> None:
        super().__init__(f"interrupted in epoch {epoch} at iteration {iteration}; checkpoint saved in {run_dir}")
        self.run_dir = run_dir
        self.epoch = epoch
        self.iteration = iteration


@contextmanager
def sigint_flag() -> Iterator[Callable[[], bool]]:
    """While active, the first SIGINT only raises a flag (the yielded function reads it); a second one aborts.

    Outside the main thread, where Python cannot install signal handlers, the flag is never raised.
    """
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["set"]
    finally:
        signal.signal(signal.SIGINT, previous)
