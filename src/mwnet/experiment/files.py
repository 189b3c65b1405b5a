"""Durable file writes and one-line errors, for everything the experiment layer writes and reads back.

A run or a grid may be killed at any moment, so each file is either replaced whole (`write_atomic`: a temporary
file in the same folder, flushed to disk, then renamed over the old one; the crash leaves the old or the new file,
never a torn one) or grows by whole lines (`append_line`, with `truncate_lines` dropping what a killed run wrote
after its last checkpoint).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | Path, data: str | bytes | memoryview | Callable[[IO[bytes]], None]) -> None:
    """Replace `path` by `data` (text as UTF-8, bytes, or a function that writes to a binary handle) atomically.

    An OSError (a full disk, a read-only folder) leaves the old file and no temporary one, and names `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with naming(path, tmp):
        try:
            with open(tmp, "wb") as handle:
                if callable(data):
                    data(handle)
                else:
                    handle.write(data.encode("utf-8") if isinstance(data, str) else data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def write_json(path: str | Path, value: Any) -> None:
    """`value` as indented JSON with a final newline, atomically."""
    write_atomic(path, json.dumps(value, indent=2, allow_nan=False) + "\n")  # standard JSON: no NaN, no Infinity


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object stored in `path`; a one-line ValueError when it is not JSON or not an object."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON file ({exc.msg} at line {exc.lineno}): {path}") from None
    if not isinstance(value, dict):
        raise ValueError(f"does not hold a JSON object: {path}")
    return value


def append_line(path: str | Path, line: str) -> None:
    """Append `line` and a newline, flushed to disk before returning."""
    with naming(path), open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def truncate_lines(path: str | Path, keep: int) -> None:
    """Keep the first `keep` complete lines of `path` (a killed run may have written more, or half a line)."""
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    complete = [line for line in lines if line.endswith("\n")]
    if len(complete) < keep:
        raise ValueError(f"{path} has {len(complete)} lines but the checkpoint has {keep} epochs")
    write_atomic(path, "".join(complete[:keep]))


@contextmanager
def naming(path: str | Path, temporary: str | Path | None = None) -> Iterator[None]:
    """Let an OSError raised inside name `path` when it names no file itself (a failed write or fsync: a full disk,
    a read-only file system) or names `path`'s `temporary` file, so that the one-line error says which file could
    not be written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None or (temporary is not None and str(exc.filename) == str(temporary)):
            exc.filename = str(path)
        raise


def os_error_line(exc: OSError) -> str:
    """"PATH: CAUSE" for an OSError that names a file ("runs/x/checkpoint.pt: No space left on device"), else its
    first line."""
    if exc.filename is not None and exc.strerror:
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.filename}{target}: {exc.strerror}"
    message = first_line(exc)
    if exc.filename is not None and str(exc.filename) not in message:
        message = f"{message}: {exc.filename}"
    return message


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
