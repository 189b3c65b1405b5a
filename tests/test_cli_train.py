"""`mwnet train`, `demo`, `plot` and `info` end to end; every bad flag is one line on stderr, exit 2, no file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import mwnet.cli.demo as demo_cli
from cli_runner import run

TINY = ["--dataset", "digits", "--noise", "uniform:0.4", "--model", "mlp", "--model-option", "hidden=[32]",
        "--epochs", "2", "--meta-batch-size", "50", "--device", "cpu"]


def test_train_end_to_end_then_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run(["train", *TINY, "--out", str(out)], capsys)
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("epoch 1/2") and lines[1].startswith("epoch 2/2") and lines[-1].startswith("done:")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["method"] == "mwnet" and summary["epochs"] == 2
    assert json.loads((out / "config.json").read_text())["model_options"] == {"hidden": [32]}

    for figure in (out / "figures").iterdir():
        figure.unlink()
    code, stdout, _ = run(["plot", str(out), "--compare", str(tmp_path / "cmp.png")], capsys)
    assert code == 0 and len(stdout.splitlines()) == 4 and (tmp_path / "cmp.png").is_file()
    assert len(list((out / "figures").iterdir())) == 3

    code, _, stderr = run(["train", *TINY, "--out", str(out)], capsys)
    assert code == 2 and stderr == f"mwnet: error: {out} already holds a run: pass --resume to continue it or " \
                                    f"--overwrite to replace it\n"
    code, _, stderr = run(["train", "--out", str(out), "--resume", "--seed", "3"], capsys)
    assert code == 2 and "seed is 0 in the saved run but 3 now" in stderr


BAD = [
    (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--noise", "gaussian:0.1"], "noise must be KIND:RATE"),
    (["--noise", "uniform:1.5"], "noise rate must be in [0, 1]"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--lr", "-1"], "lr must be positive"),
    (["--lr-milestones", "a,b"], "--lr-milestones must be comma-separated integers"),
    (["--method-option", "gamma"], "--method-option must look like KEY=VALUE"),
    (["--method-option", "gamma=2"], "method 'mwnet' has no option 'gamma'"),
    (["--model-option", "depth=3"], "model 'mlp' got unexpected option(s): depth"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--dataset", "nope"], "unknown data set 'nope'"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--imbalance", "0.5"], "imbalance must be >= 1"),
    (["--meta-per-class", "500"], "meta set asks for 500 samples"),
    (["--lr-unit", "step"], "lr_unit must be one of 'epoch', 'iteration'"),
    (["--resume"], "nothing to resume"),
    (["--resume", "--overwrite"], "nothing to resume"),
    (["--device", "gpu"], "device must be auto, cpu, cuda or cuda:N"),
]
if not torch.cuda.is_available():
    BAD.append((["--device", "cuda"], "CUDA is not available"))
try:
    import tensorboard  # noqa: F401
except ImportError:
    BAD.append((["--tensorboard"], "pip install mwnet[tensorboard]"))


@pytest.mark.parametrize(("flags", "message"), BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_flags_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code, _, stderr = run(["train", *TINY, *flags, "--out", str(out)], capsys)
    assert code == 2
    assert stderr.startswith("mwnet: error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_bad_flag_prints_no_traceback_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mwnet", "train", "--noise", "flip:2", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["mwnet: error: noise rate must be in [0, 1], got 2 in 'flip:2'"]


def test_list_presets_and_info(capsys):
    code, stdout, _ = run(["train", "--list-presets"], capsys)
    assert code == 0 and "paper-cifar10-uniform-40: " in stdout and "fmnist-lt-200: " in stdout
    code, stdout, _ = run(["info", "--no-data"], capsys)
    methods = next(line for line in stdout.splitlines() if line.startswith("methods: "))
    assert code == 0 and {"ce", "mwnet"} <= set(methods[9:].split(", ")) and "torch threads:" in stdout


def test_demo_falls_back_to_digits_prints_a_table_and_reuses_finished_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_cli, "_fashion_mnist_available", lambda data_dir: False)
    out = tmp_path / "demo"
    code, stdout, stderr = run(["demo", "--out", str(out), "--epochs", "2", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, stderr
    assert "running the demo on scikit-learn's 8x8 digits" in stdout
    assert "| CE |" in stdout and "| MW-Net |" in stdout
    assert (out / "test_accuracy.png").is_file() and (out / "mwnet" / "figures" / "weighting_function.png").is_file()
    code, stdout, _ = run(["demo", "--out", str(out), "--epochs", "2", "--device", "cpu", "--quiet"], capsys)
    assert code == 0 and stdout.count("reusing the finished run") == 2
