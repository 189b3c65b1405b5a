"""Which files of a run directory mwnet wrote: RUN_DIR/manifest.json lists them, and `--overwrite` deletes exactly
those, never a file of the user's.

    record_files(out, ["config.json", "figures/test_accuracy.png"])   # before writing them
    remove_recorded_files(out)                                         # --overwrite: only what the manifest lists

A name is recorded *before* its file is written, so a kill in between leaves a listed name without its file (which
deleting skips), never a file of ours that the manifest does not know. A directory is a run directory iff it holds a
manifest; mwnet writes a new run only into a missing or empty directory (`foreign_entries`), and replaces one only
where it finds a manifest. The manifest is data: every name in it must stay inside the directory, or it is refused.

Atomic writes leave a temporary file `.NAME.PID.tmp` beside NAME when the process is killed mid-write;
`remove_stale_temps` deletes those of recorded files (it is called with the directory's lock held, when no other
mwnet process can be writing there).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from mwnet.experiment.files import read_json_object, write_json
from mwnet.experiment.lock import LOCK_FILE

MANIFEST = "manifest.json"
_FORMAT = "mwnet-run-files-1"
_TEMP = re.compile(r"^\.(?P<name>.+)\.\d+\.tmp$")


def holds_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a run mwnet wrote (its manifest)."""
    return (Path(run_dir) / MANIFEST).is_file()


def recorded_files(run_dir: str | Path) -> list[str]:
    """The names (relative POSIX paths) the manifest of `run_dir` lists; [] without a manifest."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return []
    record = read_json_object(path)
    names = record.get("files")
    if record.get("format") != _FORMAT or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"not an mwnet manifest (needs format {_FORMAT!r} and a list of files): {path}")
    for name in names:
        _check_name(name, path)
    return names


def record_files(run_dir: str | Path, names: Iterable[str]) -> None:
    """Add `names` (relative POSIX paths inside `run_dir`) to its manifest, atomically."""
    names = list(names)
    for name in names:
        _check_name(name, Path(run_dir) / MANIFEST)
    known = recorded_files(run_dir)
    new = [n for n in names if n not in known]
    if new or not holds_run(run_dir):
        write_json(Path(run_dir) / MANIFEST, {"format": _FORMAT, "files": known + new})


def remove_recorded_files(run_dir: str | Path) -> None:
    """Delete the files the manifest lists (those still there), their leftover temporary files, and the folders
    they were in when left empty. Everything else in `run_dir` stays; the manifest itself is kept."""
    run_dir = Path(run_dir)
    names = recorded_files(run_dir)
    remove_stale_temps(run_dir)
    folders = set()
    for name in names:
        path = run_dir / name
        if _inside(path.parent, run_dir) and (path.is_file() or path.is_symlink()):
            path.unlink()
        folders.update(p for p in PurePosixPath(name).parents if p != PurePosixPath("."))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # deepest first
        path = run_dir / folder
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


def remove_stale_temps(run_dir: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files `.NAME.PID.tmp` that a killed atomic write of a recorded file (or of the
    manifest; or of `names`, when given, instead) left behind; return them. Call only with the directory's lock
    held."""
    run_dir = Path(run_dir)
    by_folder: dict[PurePosixPath, set[str]] = {PurePosixPath("."): {MANIFEST}}
    for name in recorded_files(run_dir) if names is None else names:
        pure = PurePosixPath(name)
        by_folder.setdefault(pure.parent, set()).add(pure.name)
    removed = []
    for folder, names in by_folder.items():
        path = run_dir / folder
        if not path.is_dir() or not _inside(path, run_dir):
            continue
        for entry in path.iterdir():
            match = _TEMP.match(entry.name)
            if match and match["name"] in names and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def foreign_entries(directory: str | Path) -> list[str]:
    """The entries of `directory` (sorted names) other than the lock file: what makes it "not empty"."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(name for name in os.listdir(directory) if name != LOCK_FILE)


def _check_name(name: str, manifest: Path) -> None:
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name or pure.name in ("", MANIFEST):
        raise ValueError(f"{manifest} lists {json.dumps(name)}, which is not a file inside the run directory")


def _inside(path: Path, root: Path) -> bool:
    """Whether `path` resolves (symbolic links followed) to `root` or a folder below it."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base + os.sep)
