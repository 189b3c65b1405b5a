"""Resuming a run after the kills the runner's own tests do not cover: killed while writing its first checkpoint
(nothing complete on disk: it starts over) and while writing a later one (the temporary file is cleaned); and the
checkpoints a resume must refuse: corrupted (checksum) or from another run (config)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from cli_runner import run
from mwnet.experiment.checkpoint import load_checkpoint, save_checkpoint

FLAGS = ["--dataset", "digits", "--noise", "uniform:0.4", "--model", "mlp", "--model-option", "hidden=[32]",
         "--epochs", "2", "--lr-milestones", "1", "--meta-batch-size", "50", "--meta-lr", "0.01", "--device", "cpu",
         "--quiet"]

# `mwnet train ARGS` killed (SIGKILL) halfway through writing its N-th checkpoint.pt: the temporary file holds half
# the archive, as after a kill or a power cut during the write.
TORN_WRITE = """
import os, signal, sys
from pathlib import Path
from mwnet.cli import main
from mwnet.experiment import checkpoint, files

target, writes = int(sys.argv[1]), 0

def torn(path, data):
    global writes
    if Path(path).name == "checkpoint.pt":
        writes += 1
        if writes == target:
            def half(handle):
                handle.write(bytes(data)[: len(data) // 2])
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            files.write_atomic(path, half)
    files.write_atomic(path, data)

checkpoint.write_atomic = torn
sys.exit(main(["train", *sys.argv[2:]]))
"""


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of FLAGS: its directory."""
    out = tmp_path_factory.mktemp("reference") / "run"
    finished = _python("-m", "mwnet", "train", *FLAGS, "--out", str(out))
    assert finished.returncode == 0, finished.stderr
    return out


@pytest.mark.parametrize("write", [1, 2], ids=["first-checkpoint", "second-checkpoint"])
def test_a_kill_while_writing_a_checkpoint_resumes_to_the_uninterrupted_metrics(tmp_path, reference, write):
    out = tmp_path / "run"
    killed = _python("-c", TORN_WRITE, str(write), *FLAGS, "--out", str(out))
    assert killed.returncode == -9
    temps = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].startswith(".checkpoint.pt.")
    assert (out / "checkpoint.pt").is_file() == (write > 1)  # the first write leaves no checkpoint at all

    resumed = _python("-m", "mwnet", "train", "--out", str(out), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # the leaked temporary file is gone


def test_a_corrupted_checkpoint_is_refused_in_one_line(tmp_path, reference, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    raw = torch.load(out / "checkpoint.pt", weights_only=True)  # with its checksum, as saved
    raw["model"]["features.1.weight"][0, 0] += 1e-3  # a value that still loads, changed
    torch.save(raw, out / "checkpoint.pt")
    code, _, stderr = run(["train", "--out", str(out), "--resume"], capsys)
    assert code == 2 and stderr == (f"mwnet: error: corrupted checkpoint {out / 'checkpoint.pt'}: its content does "
                                    f"not match the checksum it was saved with\n")

    data = bytearray((reference / "checkpoint.pt").read_bytes())
    weights = load_checkpoint(reference / "checkpoint.pt")["model"]["features.1.weight"].numpy().tobytes()
    offset = data.find(weights)
    assert offset > 0
    data[offset + 5] ^= 0xFF  # a flipped bit in a tensor's bytes, inside the archive
    (out / "checkpoint.pt").write_bytes(bytes(data))
    code, _, stderr = run(["train", "--out", str(out), "--resume"], capsys)
    assert code == 2 and stderr.count("\n") == 1 and "checkpoint" in stderr and "Traceback" not in stderr


def test_a_checkpoint_of_another_run_is_refused(tmp_path, reference, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    state = load_checkpoint(out / "checkpoint.pt")
    state["config"]["seed"] = 5  # e.g. copied from the run of another seed: same shapes, other numbers
    save_checkpoint(state, out / "checkpoint.pt")
    code, _, stderr = run(["train", "--out", str(out), "--resume"], capsys)
    assert code == 2 and stderr == (f"mwnet: error: {out / 'checkpoint.pt'} belongs to another run: seed is 5 there "
                                    f"but 0 in this run's config\n")
    assert (out / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
