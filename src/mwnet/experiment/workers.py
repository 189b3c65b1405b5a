"""Worker processes that end with the process that started them.

`mwnet compare --jobs N` trains cells in worker processes. If the main process is killed (SIGKILL, the
out-of-memory killer, a closed terminal), its workers must not live on: orphans would keep training and writing
their cells while the rerun that the user was told to start resumes the same cells. Each worker therefore calls
`die_with_parent` first:

* on Linux, `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills the worker the moment its parent ends;
* everywhere, a watchdog thread waits on the pipe that multiprocessing keeps open from the parent
  (`multiprocessing.parent_process().sentinel`), which the kernel closes when the parent ends, then ends the worker.

A parent that died before either was in place is caught by comparing the parent's pid. A worker ended this way
leaves its cell as a kill would (the last checkpoint valid, a temporary file at most, which the rerun removes), and
each cell's run-directory lock (`mwnet.experiment.lock`) keeps any process that still survived from sharing a cell
with the rerun.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The exit status of a worker whose parent died (what a shell reports for SIGKILL).
ORPHAN_EXIT = 128 + signal.SIGKILL


def die_with_parent(parent_pid: int, *, use_prctl: bool = True) -> None:
    """Make this process end as soon as process `parent_pid` (its parent) ends; see the module's docstring.

    Args:
        parent_pid: the parent's pid, read by the parent itself (os.getpid() there).
        use_prctl: use the Linux parent-death signal where available [True]; the watchdog runs either way.
    """
    if use_prctl and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc symbol: the watchdog still applies
            pass
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid == parent_pid:
        thread = threading.Thread(target=_end_with, args=(parent,), name="mwnet-parent-watchdog", daemon=True)
        thread.start()
    if os.getppid() != parent_pid:  # the parent died before the watch began
        os._exit(ORPHAN_EXIT)


@contextmanager
def sigint_ignored_while_starting() -> Iterator[None]:
    """Ignore SIGINT in this process while worker processes are started inside: they inherit the ignored signal,
    so a Ctrl-C that reaches them while Python is still starting up (importing torch) interrupts nothing and prints
    no traceback; `train` installs its own handler once a cell runs. (Outside the main thread: no effect.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C back until the block ends, then raise it as KeyboardInterrupt. Around shutting a worker pool
    down after a first Ctrl-C: a second one must not cut the shutdown short, or the pool's queues are freed (their
    semaphores unlinked) while a worker still starting up reads them, and both print tracebacks. (Outside the
    main thread: no effect.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _end_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns when the parent's end of the pipe closes: the parent has ended
    os._exit(ORPHAN_EXIT)  # at once, without cleanup: the last checkpoint on disk is what a rerun resumes
