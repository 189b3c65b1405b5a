"""`torchrun --nproc-per-node 2 -m mwnet train` on CPU (gloo): equal to one process with the same global batch,
resumable after Ctrl-C on one rank and after every rank is SIGKILLed mid-epoch, and an error on one rank ends
both with one line and exit 2.

The two-process runs are few and tiny (digits, an MLP with 32 hidden units, 2 epochs of 14 iterations): starting
processes costs more than training. One module fixture launches them; the tests read what they wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_runner import run
from mwnet.cli import main
from mwnet.data import BatchLoader, MetaSampler
from mwnet.experiment.ranks import Ranks

TESTS = Path(__file__).parent
TINY = ["--dataset", "digits", "--noise", "uniform:0.4", "--meta-per-class", "10", "--model", "mlp",
        "--model-option", "hidden=[32]", "--epochs", "2", "--batch-size", "100", "--meta-batch-size", "50",
        "--lr-milestones", "1", "--meta-lr", "0.01", "--device", "cpu", "--quiet"]
INTERRUPT_AT, KILL_AT = 17, 24  # global iterations, both in epoch 2 (14 iterations per epoch)
TIMEOUT = 240  # seconds; a hang fails the test instead of stalling the suite


def environment(**extra: str) -> dict[str, str]:
    paths = [str(Path(__file__).parents[1] / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1", **extra}


def launch(*commands: list[str]) -> list[tuple[int, str]]:
    """Rank r runs `python COMMANDS[r]` in the environment torchrun gives it (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), without torchrun's agent, so that each rank's exit code and stderr show."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    processes = [subprocess.Popen([sys.executable, *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=environment(RANK=str(rank), LOCAL_RANK=str(rank),
                                                             WORLD_SIZE=str(len(commands)), MASTER_ADDR="127.0.0.1",
                                                             MASTER_PORT=port))
                 for rank, command in enumerate(commands)]
    errors = [p.communicate(timeout=TIMEOUT)[1] for p in processes]
    return [(p.returncode, error) for p, error in zip(processes, errors)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process in this one; two with torchrun; two stopped by Ctrl-C on rank 1 at INTERRUPT_AT (a mid-epoch
    checkpoint), resumed and SIGKILLed at KILL_AT, then resumed to the end."""
    root = tmp_path_factory.mktemp("ranks")
    one, two, resumed = root / "one", root / "two", root / "resumed"
    assert main(["train", *TINY, "--out", str(one)]) == 0  # --quiet: prints nothing
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "mwnet", "train", *TINY, "--out", str(two)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=environment())
    assert done.returncode == 0, done.stderr[-3000:]
    launcher = str(TESTS / "ranks_launcher.py")
    interrupted = [launcher, "--interrupt-at", str(INTERRUPT_AT), "--on-rank", "1", "train", *TINY, "--out",
                   str(resumed)]
    outcome = launch(interrupted, interrupted)
    assert [code for code, _ in outcome] == [130, 130], outcome
    assert outcome[0][1].startswith(f"mwnet: interrupted in epoch 2 at iteration {INTERRUPT_AT}; checkpoint saved")
    killed = [launcher, "--kill-at", str(KILL_AT), "train", "--out", str(resumed), "--resume", "--quiet"]
    assert [code for code, _ in launch(killed, killed)] == [-9, -9]
    lines_when_killed = (resumed / "metrics.jsonl").read_text().count("\n")
    again = ["-m", "mwnet", "train", "--out", str(resumed), "--resume", "--quiet"]
    outcome = launch(again, again)
    assert [code for code, _ in outcome] == [0, 0], outcome
    return one, two, resumed, lines_when_killed


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_close(a, b, where: str = "") -> None:
    """Equal structure; floats within float32 tolerance (metrics are rounded to 6 significant digits)."""
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-5), where
    else:
        assert a == b, where


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    one, two, _, _ = runs
    first, second = records(one), records(two)
    assert [r["iteration"] for r in second] == [14, 28]
    for a, b in zip(first, second):
        assert_close(a, b)
    assert 40 < second[-1]["test_acc"] < 100 and second[-1]["weight_auroc"] > 0.5  # it trained, V learned
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    for key in ("best_test_acc", "last_test_acc", "weight_auroc", "iterations", "train_size"):
        assert_close(s1[key], s2[key], key)
    # suspects.csv ranks every training sample, gathered on rank 0: the same samples, weights and losses.
    a, b = (np.genfromtxt(d / "suspects.csv", delimiter=",", names=True) for d in (one, two))
    assert a.shape == b.shape == (s1["train_size"],)
    assert np.array_equal(a["index"], b["index"])
    for column in ("weight", "loss", "score"):
        assert np.allclose(a[column], b[column], rtol=1e-5, atol=1e-5), column
    assert sorted(p.name for p in (two / "figures").iterdir()) == sorted(p.name for p in (one / "figures").iterdir())
    checkpoint = torch.load(two / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rank_rng"]) == 2


def test_ctrl_c_on_one_rank_then_sigkill_of_every_rank_then_resume_equals_the_uninterrupted_run(runs):
    """Ctrl-C reached rank 1 alone: both ranks stopped at the same iteration and saved their merged records
    mid-epoch; resumed, both were killed later in the epoch; resumed again, the run ends as if never stopped."""
    _, two, resumed, lines_when_killed = runs
    assert lines_when_killed == 1  # killed in epoch 2: its metrics line was never written
    assert (resumed / "metrics.jsonl").read_bytes() == (two / "metrics.jsonl").read_bytes()
    assert (resumed / "suspects.csv").read_bytes() == (two / "suspects.csv").read_bytes()
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumes"] == 1  # the killed launch saved no checkpoint: the last resume started from the first's
    assert summary["last_test_acc"] == json.loads((two / "summary.json").read_text())["last_test_acc"]


def test_an_error_on_one_rank_ends_every_rank_with_one_line_and_exit_2(tmp_path):
    """Only rank 1 lacks its data file: both ranks exit 2, rank 0 prints rank 1's message, nothing is written."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(40, 4)).astype(np.float32), y=np.arange(40) % 2,
             x_meta=rng.normal(size=(8, 4)).astype(np.float32), y_meta=np.arange(8) % 2)
    command = ["-m", "mwnet", "train", "--method", "ce", "--model", "mlp", "--epochs", "1", "--device", "cpu",
               "--out", str(tmp_path / "run"), "--dataset"]
    outcome = launch([*command, f"arrays:{tmp_path / 'data.npz'}"], [*command, f"arrays:{tmp_path / 'no.npz'}"])
    assert outcome == [(2, f"mwnet: error: rank 1 of 2: arrays file not found: {tmp_path / 'no.npz'}\n"), (2, "")]
    assert not (tmp_path / "run").exists()


def test_every_batch_must_give_each_rank_a_sample():
    ranks = Ranks(rank=1, world_size=3, local_rank=1, control=None)
    ranks.check_batches("training", "--batch-size", 1337, 100)  # 13 batches of 100 and one of 37
    ranks.check_batches("meta", "--meta-batch-size", 10, 100)  # one batch of all 10
    with pytest.raises(ValueError) as raised:
        ranks.check_batches("training", "--batch-size", 1302, 100)  # 13 batches of 100 and one of 2
    assert str(raised.value) == ("with 3 processes every training batch needs at least 3 samples (one per "
                                 "process), but a pass over 1302 samples in batches of 100 has one of 2: choose "
                                 "another --batch-size")
    with pytest.raises(ValueError, match=r"meta batch needs .* a pass over 2 samples in batches of 2 has one of 2"):
        ranks.check_batches("meta", "--meta-batch-size", 2, 100)


def test_sharded_loaders_concatenate_to_the_global_batches():
    """Rank r's block of every batch (contiguous, uneven), augmentation included, concatenates to the batch one
    loader yields; the loaders' states stay equal, so rank 0's checkpoint resumes every rank."""
    x = torch.randint(0, 256, (23, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(23) % 3
    kwargs = dict(batch_size=7, seed=4, augment=True, mean=(0.5,), std=(0.2,))
    whole = BatchLoader(x, y, **kwargs)
    parts = [BatchLoader(x, y, shard=(r, 3), **kwargs) for r in range(3)]
    for _epoch in range(2):
        for batch, *blocks in zip(list(whole), *[list(part) for part in parts]):
            assert [len(b[1]) for b in blocks] == [len(batch[1]) // 3 + (r < len(batch[1]) % 3) for r in range(3)]
            for got, expected in zip(zip(*blocks), batch):
                assert torch.equal(torch.cat(got), expected)
        states = [loader.state_dict() for loader in (whole, *parts)]
        assert all(torch.equal(s["rng"], states[0]["rng"]) and s["epoch"] == states[0]["epoch"] for s in states)
    meta = [MetaSampler(x, y, batch_size=5, seed=1, shard=(r, 2)) for r in range(2)]
    reference = MetaSampler(x, y, batch_size=5, seed=1)
    for _ in range(6):
        assert torch.equal(torch.cat([m.next()[1] for m in meta]), reference.next()[1])


def test_other_commands_are_refused_under_torchrun_and_rank_0_alone_prints(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, stderr = run(["info", "--no-data"], capsys)
    assert code == 2 and stderr == "mwnet: error: `mwnet info` does not run under torchrun: only `mwnet train` " \
                                   "does (see docs/distributed.md)\n"
    monkeypatch.setenv("RANK", "1")
    assert run(["info", "--no-data"], capsys) == (2, "", "")
    assert run(["train", "--epochs", "x"], capsys) == (2, "", "")
