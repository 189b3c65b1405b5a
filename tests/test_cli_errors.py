"""The command line's exit codes and one-line errors (docs/reliability.md): impossible values and inputs (exit 2,
nothing written), a diverged run (exit 3), a full disk or a read-only folder (one line naming the path and the
cause), hostile run files for `plot` and `compare --report-only`, the demo that never replaces a run unasked, a grid
validated cell by cell before anything is written, and a continued grid that keeps its thread count."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import mwnet.cli.demo as demo_cli
import mwnet.experiment.execution as execution
from cli_runner import run
from mwnet.experiment import files
from mwnet.experiment.config import config_to_dict, resolve_config
from mwnet.experiment.manifest import record_files
from mwnet.experiment.signals import TrainingInterrupted

TINY = ["--dataset", "digits", "--noise", "uniform:0.4", "--model", "mlp", "--model-option", "hidden=[32]",
        "--epochs", "2", "--meta-batch-size", "50", "--device", "cpu", "--quiet"]

BAD = [
    (["--lr", "inf"], "lr must be positive and finite, got inf"),
    (["--weight-decay", "inf"], "weight_decay must be >= 0 and finite, got inf"),
    (["--meta-lr", "inf"], "meta_lr must be positive and finite, got inf"),
    (["--momentum", "nan"], "momentum must be >= 0 and finite, got nan"),
    (["--imbalance", "inf"], "imbalance must be >= 1 (n_max / n_min) and finite, got inf"),
    (["--seed", str(2**64)], f"seed must be an integer in [0, 2**63), got {2**64}"),
    (["--epochs", "3", "--iterations", "10"], "give --epochs or --iterations, not both"),
    (["--model-option", "hidden=null"], "hidden must be a positive integer or a sequence of them, got None"),
    (["--model-option", "hidden=1e9"], "hidden must be a positive integer or a sequence of them, got 1000000000.0"),
    # 64·10⁹ + 10⁹ + 10⁹·10 + 10 parameters, 4 bytes each, 3 copies
    (["--model-option", "hidden=[1000000000]"], "model 'mlp' has 75,000,000,010 parameters: training it needs at "
                                                "least 838.2 GiB (weights, gradients, momentum), more than the"),
    (["--weight-net-hidden", "100000000"], "weight_net_hidden must be an integer in [1, 1048576], got 100000000"),
]


@pytest.mark.parametrize(("flags", "message"), BAD, ids=[" ".join(f) for f, _ in BAD])
def test_impossible_values_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, flags, message):
    code, _, stderr = run(["train", *TINY, *flags, "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and stderr.startswith(f"mwnet: error: {message}") and stderr.count("\n") == 1, stderr
    assert list(tmp_path.iterdir()) == []


def test_non_finite_inputs_are_refused(tmp_path, capsys):
    x = np.random.default_rng(0).random((40, 5)).astype(np.float32)
    x[3, 1], x[7, 0] = np.nan, np.inf
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(40) % 2)
    code, _, stderr = run(["train", "--dataset", f"arrays:{tmp_path / 'data.npz'}", "--method", "ce", "--num-meta",
                           "0", "--device", "cpu", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and stderr == (f"mwnet: error: x holds 2 NaN or infinite values (inputs must be finite numbers): "
                                    f"{tmp_path / 'data.npz'}\n")
    assert not (tmp_path / "run").exists()


def test_a_diverged_run_exits_3_with_its_results_written(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, stderr = run(["train", *TINY, "--method", "ce", "--lr", "1e6", "--momentum", "0", "--no-nesterov",
                           "--weight-decay", "0", "--out", str(out)], capsys)
    diverged = json.loads((out / "summary.json").read_text())["diverged"]
    assert code == 3 and diverged["epoch"] >= 1
    assert stderr == (f"mwnet: the ce run diverged in epoch {diverged['epoch']} at iteration {diverged['iteration']} "
                      f"({diverged['error']}); its files say so (summary.json: diverged); exit code 3\n")


def test_a_full_disk_is_one_line_and_the_run_resumes_when_there_is_room(tmp_path, capsys, monkeypatch):
    fsync = os.fsync

    def full_at_checkpoints(fd):  # the disk fills up as the first checkpoint is written
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    out = tmp_path / "run"
    monkeypatch.setattr(files.os, "fsync", full_at_checkpoints)
    code, _, stderr = run(["train", *TINY, "--out", str(out)], capsys)
    monkeypatch.undo()
    assert code == 2 and stderr == f"mwnet: error: {out / 'checkpoint.pt'}: No space left on device\n"
    assert not (out / "checkpoint.pt").exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    code, stdout, stderr = run(["train", "--out", str(out), "--resume"], capsys)
    assert code == 0, stderr
    assert "no complete checkpoint" in stdout  # nothing to resume from: the run starts over
    code, _, stderr = run(["train", *TINY, "--out", str(tmp_path / "reference")], capsys)
    assert code == 0 and (out / "metrics.jsonl").read_bytes() == (tmp_path / "reference" / "metrics.jsonl").read_bytes()


def _mount(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a file system needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB file system: room for a run's first files, not for its first checkpoint."""
    where = tmp_path / "small"
    _mount(where, "size=64k")
    yield where
    subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def read_only(tmp_path):
    """A folder nothing can be written to (a read-only mount where we may mount, else permissions)."""
    where = tmp_path / "read-only"
    if os.geteuid() == 0:
        _mount(where, "ro,size=64k")
        yield where
        subprocess.run(["umount", str(where)], check=True)
    else:
        where.mkdir()
        where.chmod(0o555)
        yield where
        where.chmod(0o755)


def test_a_real_full_disk_is_one_line_naming_the_file(small_disk, capsys):
    code, _, stderr = run(["train", *TINY, "--out", str(small_disk / "run")], capsys)
    assert code == 2 and stderr.count("\n") == 1 and stderr.endswith(": No space left on device\n"), stderr
    assert stderr.startswith(f"mwnet: error: {small_disk / 'run'}/")


def test_a_read_only_out_is_one_line(read_only, capsys):
    code, _, stderr = run(["train", *TINY, "--out", str(read_only / "run")], capsys)
    assert code == 2 and stderr in (f"mwnet: error: {read_only / 'run'}: Read-only file system\n",
                                    f"mwnet: error: {read_only / 'run'}: Permission denied\n")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from mwnet.experiment.runner import train

    out = tmp_path_factory.mktemp("finished") / "run"
    train(resolve_config(None, {"dataset": "digits", "model": "mlp", "model_options": {"hidden": [16]}, "epochs": 2,
                                "device": "cpu", "noise": "uniform:0.4", "meta_batch_size": 50}), out)
    return out


def test_plot_compare_writes_and_prints_the_same_path_and_refuses_a_read_only_folder(finished_run, read_only,
                                                                                      tmp_path, capsys):
    folder = tmp_path / "figures-here"
    folder.mkdir()
    for target, written in ((folder, folder / "compare_test_accuracy.png"), (tmp_path / "cmp", tmp_path / "cmp.png")):
        code, stdout, _ = run(["plot", str(finished_run), "--compare", str(target)], capsys)
        assert code == 0 and stdout.splitlines()[-1] == str(written) and written.read_bytes()[:4] == b"\x89PNG"
    code, _, stderr = run(["plot", str(finished_run), "--compare", str(read_only / "cmp.png")], capsys)
    assert code == 2 and stderr.startswith(f"mwnet: error: {read_only / 'cmp.png'}: ") and stderr.count("\n") == 1


def test_plot_of_foreign_metrics_is_one_line_and_keeps_the_old_figures(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = {p.name: p.read_bytes() for p in (out / "figures").iterdir()}
    lines = (out / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    del record["test_acc"]  # the accuracy figure, drawn last, needs it
    (out / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(record)]) + "\n")
    code, _, stderr = run(["plot", str(out)], capsys)
    assert code == 2 and stderr == (f"mwnet: error: {out / 'metrics.jsonl'} does not hold the metrics mwnet writes "
                                    f"(KeyError: 'test_acc'); no figure was written\n")
    assert {p.name: p.read_bytes() for p in (out / "figures").iterdir()} == before
    (out / "metrics.jsonl").write_text('[1, 2]\n')
    code, _, stderr = run(["plot", str(out)], capsys)
    assert code == 2 and "line 1 is not an epoch record" in stderr


def test_report_only_names_a_non_numeric_summary_value(tmp_path, capsys):
    cell = tmp_path / "demo-digits" / "ce" / "seed0"
    cell.mkdir(parents=True)
    (cell / "summary.json").write_text(json.dumps({"best_test_acc": "high", "last_test_acc": 80.0}))
    code, _, stderr = run(["compare", "--settings", "demo-digits", "--methods", "ce", "--report-only", "--out",
                           str(tmp_path)], capsys)
    assert code == 2 and stderr == (f"mwnet: error: {cell / 'summary.json'}: best_test_acc must be a number or "
                                    f"null, got 'high'\n")
    assert not (tmp_path / "results.md").exists()


def test_demo_never_replaces_a_run_of_another_config_unasked(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_cli, "_fashion_mnist_available", lambda data_dir: False)
    run_dir = tmp_path / "demo" / "mwnet"
    run_dir.mkdir(parents=True)
    record_files(run_dir, ["config.json", "summary.json"])
    other = resolve_config("demo-digits", {"method": "mwnet", "epochs": 5, "device": "cpu"})
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(other)))
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code, _, stderr = run(["demo", "--out", str(tmp_path / "demo"), "--epochs", "2", "--device", "cpu", "--quiet"],
                          capsys)
    assert code == 2 and stderr == (f"mwnet: error: {run_dir} holds a MW-Net run of another config (epochs is 5 "
                                    f"there but 2 here): pass --overwrite to replace it, or give another --out\n")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert sorted(os.listdir(tmp_path / "demo")) == ["mwnet"]  # CE was not trained either


def _fake_train(seen: dict):
    def train(config, out, **kwargs):
        seen.setdefault(config.method, []).append(torch.get_num_threads())
        if config.method == "mwnet" and len(seen["mwnet"]) == 1:
            raise TrainingInterrupted(out, 1, 3)  # Ctrl-C in the grid's second cell
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config)))
        summary = {"best_test_acc": 90.0, "last_test_acc": 85.0, "train_seconds": 1.0}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    return train


def test_every_cell_is_validated_before_the_grid_writes_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(execution, "train", _fake_train({}))
    out = tmp_path / "grid"
    grid = ["compare", "--settings", "demo-digits", "--methods", "ce,focal", "--device", "cpu", "--out", str(out)]
    bad = [(["--set", "meta_per_class=500"], "cell demo-digits/ce/seed0: meta set asks for 500 samples"),
           (["--set", 'model_options={"depth": 3}'], "cell demo-digits/ce/seed0: model 'mlp' got unexpected option"),
           (["--set", "method_options={\"gamma\": -1}"], "method 'ce' has no option 'gamma'")]
    if not torch.cuda.is_available():
        bad.append((["--device", "cuda"], "cell demo-digits/ce/seed0: device 'cuda' requested but CUDA is not"))
    for flags, message in bad:
        code, _, stderr = run([*grid, *flags], capsys)
        assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
        assert not out.exists()
    code, _, stderr = run(grid, capsys)  # the corrected command is not refused
    assert code == 0, stderr


def test_a_continued_grid_runs_with_the_recorded_threads(tmp_path, capsys, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(execution, "train", _fake_train(seen))
    out = tmp_path / "grid"
    code, _, _ = run(["compare", "--settings", "demo-digits", "--methods", "ce,mwnet", "--device", "cpu",
                      "--threads", "3", "--out", str(out)], capsys)
    assert code == 130 and seen == {"ce": [3], "mwnet": [3]}
    code, stdout, stderr = run(["compare", "--out", str(out)], capsys)  # the advertised continuation
    assert code == 0, stderr
    assert seen["mwnet"] == [3, 3] and "continuing with --jobs 1 --threads 3, as recorded in" in stdout
    assert json.loads((out / "compare.json").read_text())["run_options"] == {"jobs": 1, "threads": 3}
