"""One writer per directory: a second process is refused naming the holder (train, compare, demo), the lock dies
with its holder (SIGKILL included), and a refused or failed run leaves no folder and no lock file behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import mwnet.cli.demo as demo_cli
from cli_runner import run
from mwnet.experiment.lock import LOCK_FILE, RunDirectoryLocked, RunLock

# Holds the lock of argv[1] until killed; prints "locked" once it holds it.
HOLDER = """
import sys, time
from mwnet.experiment.lock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""

DIGITS = ["--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[16]", "--epochs", "1", "--device",
          "cpu", "--quiet"]


@pytest.fixture
def holder(tmp_path):
    """A process of its own holding the lock of tmp_path/run: (its directory, its pid)."""
    out = tmp_path / "run"
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout.readline().strip() == "locked"
            yield out, process
        finally:
            process.kill()
            process.wait(timeout=30)


@pytest.mark.parametrize("command", [
    ["train", *DIGITS],
    ["compare", "--settings", "demo-digits", "--methods", "ce", "--epochs", "1", "--device", "cpu"],
    ["demo", "--epochs", "1", "--device", "cpu", "--quiet"],
], ids=["train", "compare", "demo"])
def test_a_second_process_is_refused_naming_the_holder(holder, capsys, monkeypatch, command):
    out, process = holder
    monkeypatch.setattr(demo_cli, "_fashion_mnist_available", lambda data_dir: False)
    code, _, stderr = run([*command, "--out", str(out)], capsys)
    assert code == 2, stderr
    assert stderr == (f"mwnet: error: {out} is in use by process {process.pid} (an mwnet train, compare or demo "
                      f"writing it): wait for it to end or stop it, then run again\n")
    assert os.listdir(out) == [LOCK_FILE]  # nothing written


def test_the_lock_dies_with_its_holder_and_a_run_then_proceeds(holder, capsys):
    out, process = holder
    with pytest.raises(RunDirectoryLocked) as info:
        RunLock(out).acquire()
    assert info.value.pid == process.pid and (out / LOCK_FILE).read_text() == f"{process.pid}\n"
    process.kill()  # SIGKILL: no cleanup; the kernel drops the lock, the stale file stays
    process.wait(timeout=30)
    assert (out / LOCK_FILE).exists()
    code, _, stderr = run(["train", *DIGITS, "--out", str(out)], capsys)
    assert code == 0, stderr
    assert (out / "summary.json").is_file() and not (out / LOCK_FILE).exists()  # released at the end of the run


def test_a_refused_run_leaves_no_folder_and_no_lock_file(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "run"
    code, _, stderr = run(["train", *DIGITS, "--meta-per-class", "500", "--out", str(out)], capsys)
    assert code == 2 and "meta set asks for 500 samples" in stderr
    assert os.listdir(tmp_path) == []  # the folders the lock created are gone again

    lock = RunLock(out)
    lock.acquire()
    assert os.listdir(out) == [LOCK_FILE]
    lock.release()
    lock.release()  # releasing twice is harmless
    assert os.listdir(tmp_path) == []


def test_a_released_lock_file_is_never_shared(tmp_path):
    # A process that opened the lock file just before its holder released (and unlinked) it must not hold a lock
    # on the unlinked file while a third process locks a new one: it locks the file at the path.
    first = RunLock(tmp_path)
    first.acquire()
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)  # the late opener's handle on the old file
    first.release()
    second = RunLock(tmp_path)
    second.acquire()
    with pytest.raises(RunDirectoryLocked):
        RunLock(tmp_path).acquire()
    os.close(fd)
    second.release()
    started = time.perf_counter()
    RunLock(tmp_path).acquire()  # free again, at once
    assert time.perf_counter() - started < 5
