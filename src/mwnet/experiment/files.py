"""Durable file writes and one-line errors, for everything the experiment layer writes and reads back.

A run or a grid may be killed at any moment, so each file is either replaced whole (`write_atomic`: a temporary
file in the same folder, flushed to disk, then renamed over the old one; the crash leaves the old or the new file,
never a torn one) or grows by whole lines (`append_line`, with `truncate_lines` dropping what a killed run wrote
after its last checkpoint).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | Path, data: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Replace `path` by `data` (text as UTF-8, bytes, or a function that writes to a binary handle) atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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
    write_atomic(path, json.dumps(value, indent=2) + "\n")


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
    with open(path, "a") as handle:
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
