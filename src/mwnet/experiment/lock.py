"""One writer per directory: an exclusive OS file lock that lives exactly as long as the process holding it.

    with RunLock(out):          # creates `out` if needed; RunDirectoryLocked if another process holds it
        ...                     # check the directory, then write it

`mwnet train` locks its run directory, `mwnet compare` its grid directory (and each cell's run directory, through
`train`), `mwnet demo` its output directory. The lock is `fcntl.flock` on OUT/.mwnet.lock: the kernel drops it
when the holder ends, however it ends (SIGKILL and out-of-memory kills included), so a killed run never leaves a
lock behind that blocks its resumption, and two processes can never write one directory at once. The holder writes
its process id into the file, so that the refused process can name it. POSIX systems (Linux, macOS) only.

Folders the lock had to create are removed again on release while still empty: a run refused after taking the
lock (a bad data set, say) leaves no trace.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".mwnet.lock"


class RunDirectoryLocked(ValueError):
    """Another process holds the directory's lock (a one-line user error: exit code 2 on the command line).

    Attributes:
        directory: the locked directory.
        pid: the holder's process id, or None where it could not be read.
    """

    def __init__(self, directory: Path, pid: int | None) -> None:
        self.directory = directory
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{directory} is in use by {holder} (an mwnet train, compare or demo writing it): wait "
                         f"for it to end or stop it, then run again")


class RunLock:
    """The exclusive lock of `directory` (see the module's docstring); a context manager, or acquire/release."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (creating the directory and its missing parents); RunDirectoryLocked if it is held."""
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.directory))
        self._created = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = self._lock()
        except BaseException:
            self._remove_created()
            raise
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held); remove the folders `acquire` created if
        they are empty."""
        if self._fd is None:
            return
        # Unlink before closing: a process waiting to lock this file finds it gone and locks a fresh one
        # (see `_lock`), so no two processes ever hold locks on different files of one directory.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def _lock(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise RunDirectoryLocked(self.directory, pid) from None
            except BaseException:
                os.close(fd)
                raise
            # The holder may have released (and unlinked) the file between our open and our flock: then we hold
            # the lock of a file nobody else will ever open; take the one at the path instead.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                return fd
            os.close(fd)

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote files) or already gone: keep it
                break
        self._created = []


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
