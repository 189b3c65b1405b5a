"""The manifest of a run directory: --overwrite deletes exactly the files mwnet recorded (never the user's, never
through a link, never outside the directory), leftover temporary files are cleaned, and a directory that holds
anything but a run is refused, with --overwrite too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_runner import run
from mwnet.experiment.manifest import (
    MANIFEST,
    foreign_entries,
    holds_run,
    record_files,
    recorded_files,
    remove_recorded_files,
    remove_stale_temps,
)


def _write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_overwrite_removes_only_recorded_files_and_the_folders_they_emptied(tmp_path):
    record_files(tmp_path, ["config.json", "figures/a.png", "tensorboard/events.out.tfevents.1", "summary.json"])
    record_files(tmp_path, ["config.json", "checkpoint.pt"])  # recording twice keeps one entry
    assert recorded_files(tmp_path) == ["config.json", "figures/a.png", "tensorboard/events.out.tfevents.1",
                                        "summary.json", "checkpoint.pt"]
    for name in ("config.json", "figures/a.png", "tensorboard/events.out.tfevents.1", "checkpoint.pt",
                 "figures/mine.png", "notes.txt", "tensorboard/mine/run.txt", ".checkpoint.pt.4242.tmp",
                 ".notes.txt.4242.tmp"):
        _write(tmp_path / name)
    remove_recorded_files(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == [".notes.txt.4242.tmp", "figures/mine.png", MANIFEST, "notes.txt", "tensorboard/mine/run.txt"]

    record_files(tmp_path, ["figures/b.png"])
    _write(tmp_path / "figures" / "b.png")
    (tmp_path / "figures" / "mine.png").unlink()
    remove_recorded_files(tmp_path)
    assert not (tmp_path / "figures").exists()  # emptied by the removal: removed too


def test_a_hostile_manifest_deletes_nothing_outside_the_run(tmp_path):
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    _write(outside / "secret.txt")
    for name in ("../outside/secret.txt", str(outside / "secret.txt"), "figures/../../outside/secret.txt"):
        _write(run_dir / MANIFEST, json.dumps({"format": "mwnet-run-files-1", "files": [name]}))
        with pytest.raises(ValueError, match=r"which is not a file inside the run directory"):
            remove_recorded_files(run_dir)
    # A recorded folder replaced by a link to elsewhere: nothing is deleted through it.
    _write(run_dir / MANIFEST, json.dumps({"format": "mwnet-run-files-1", "files": ["figures/secret.txt"]}))
    os.symlink(outside, run_dir / "figures")
    remove_recorded_files(run_dir)
    assert (outside / "secret.txt").is_file()
    _write(run_dir / MANIFEST, "[1, 2]")
    with pytest.raises(ValueError, match="does not hold a JSON object"):
        recorded_files(run_dir)


def test_stale_temporary_files_of_recorded_files_are_removed(tmp_path):
    record_files(tmp_path, ["checkpoint.pt", "figures/a.png"])
    for name in (".checkpoint.pt.17.tmp", "figures/.a.png.18.tmp", f".{MANIFEST}.19.tmp", ".mine.txt.20.tmp",
                 ".checkpoint.pt.tmp"):
        _write(tmp_path / name)
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".a.png.18.tmp", ".checkpoint.pt.17.tmp", f".{MANIFEST}.19.tmp"]
    assert (tmp_path / ".mine.txt.20.tmp").exists() and (tmp_path / ".checkpoint.pt.tmp").exists()
    assert holds_run(tmp_path) and not holds_run(tmp_path / "figures")
    assert foreign_entries(tmp_path / "nope") == []


DIGITS = ["--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[16]", "--epochs", "1", "--device",
          "cpu", "--quiet"]


@pytest.mark.parametrize("flags", [[], ["--overwrite"]], ids=["new", "overwrite"])
def test_a_directory_of_user_files_is_refused_and_left_alone(tmp_path, capsys, flags):
    _write(tmp_path / "config.json", "my own config")
    _write(tmp_path / "figures" / "plot.png", "mine")
    code, _, stderr = run(["train", *DIGITS, *flags, "--out", str(tmp_path)], capsys)
    assert code == 2 and stderr.startswith(f"mwnet: error: {tmp_path} is not empty and holds no mwnet run "
                                           f"(config.json, figures): give a new or empty --out")
    assert ("--overwrite only replaces a run mwnet wrote" in stderr) == bool(flags)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "figures"]
    assert (tmp_path / "config.json").read_text() == "my own config"
    assert os.listdir(tmp_path / "figures") == ["plot.png"]


def test_overwriting_a_run_keeps_the_users_files_in_it(tmp_path, capsys):
    code, _, stderr = run(["train", *DIGITS, "--out", str(tmp_path)], capsys)
    assert code == 0, stderr
    _write(tmp_path / "figures" / "annotated.png", "mine")
    _write(tmp_path / "notes.md", "mine")
    first = json.loads((tmp_path / "summary.json").read_text())
    code, _, stderr = run(["train", *DIGITS, "--seed", "1", "--overwrite", "--out", str(tmp_path)], capsys)
    assert code == 0, stderr
    assert (tmp_path / "figures" / "annotated.png").read_text() == "mine" and (tmp_path / "notes.md").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 1 and first["seed"] == 0
    assert "figures/test_accuracy.png" in recorded_files(tmp_path) and "notes.md" not in recorded_files(tmp_path)


def test_tensorboard_event_files_are_recorded_and_the_users_kept(tmp_path, monkeypatch):
    import sys
    import types

    import mwnet.experiment.tensorboard as tensorboard_log
    from mwnet.experiment.config import resolve_config
    from mwnet.experiment.runner import train

    class FakeLog:  # stands in for TensorBoardLog where the tensorboard package is absent: one events file
        def __init__(self, log_dir, purge_step=None):
            _write(Path(log_dir) / f"events.out.tfevents.{len(os.listdir(tmp_path))}.host.1", "events")

        def write_epoch(self, metrics):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    monkeypatch.setattr(tensorboard_log, "TensorBoardLog", FakeLog)
    config = resolve_config(None, {"dataset": "digits", "model": "mlp", "model_options": {"hidden": [16]},
                                   "epochs": 1, "device": "cpu"})
    train(config, tmp_path, tensorboard=True)
    events = [name for name in recorded_files(tmp_path) if name.startswith("tensorboard/")]
    assert len(events) == 1 and (tmp_path / events[0]).is_file()
    _write(tmp_path / "tensorboard" / "my-notes.txt", "mine")
    train(config, tmp_path, overwrite=True)  # no --tensorboard this time: the old events go
    assert os.listdir(tmp_path / "tensorboard") == ["my-notes.txt"]
