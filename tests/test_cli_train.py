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
    assert lines[0] == "data: digits, 1337 training samples, test 360; meta set of 100: carved from the clean " \
                       "training set"
    assert lines[1].startswith("epoch 1/2") and lines[2].startswith("epoch 2/2") and lines[-1].startswith("done:")
    assert "chosen on the test set" in lines[-1] and "best_model.pt" in lines[-1]
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
    (["--labels-csv", "x.csv"], "labels_csv (--labels-csv) applies to folder:PATH data sets only"),
    (["--trusted-csv", "x.csv"], "trusted_csv (--trusted-csv) applies to folder:PATH data sets only"),
    (["--json"], "--json applies to --list-presets only"),
    (["--model", "not a module:f"], "--model not a module:f: must look like module:callable"),
    (["--model", "mwnet_no_such_module:net"], "no module named 'mwnet_no_such_module'"),
    (["--model", "mwnet.models:nothing"], "module 'mwnet.models' has no attribute 'nothing'"),
    (["--model", "mwnet:__version__"], "'__version__' is a str, not a callable"),
    (["--model", "mwnet.models:list_models"],
     "calling it with (input_shape, num_classes, hidden) failed: TypeError: list_models() got an unexpected"),
    (["--virtual-loss", "glued"], "virtual_loss must be one of 'detached', 'attached'"),
    (["--weight-net-init", "he"], "weight_net_init must be one of 'default', 'xavier'"),
    (["--hypergradient", "last-layer", "--virtual-loss", "attached"], "needs an exact or finite-difference"),
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


def test_weights_that_rise_with_the_loss_are_a_warning_and_suspects_rank_by_loss(tmp_path, capsys, monkeypatch):
    import csv

    import numpy as np

    from mwnet.experiment import rundir

    score = rundir._score_training_set

    def rising(*args):  # V trusting high losses, as early in training or on a long tail
        losses, _ = score(*args)
        return losses, 1 / (1 + np.exp(-losses))

    monkeypatch.setattr(rundir, "_score_training_set", rising)
    out = tmp_path / "run"
    code, _, stderr = run(["train", *TINY, "--epochs", "1", "--out", str(out)], capsys)
    assert code == 0 and stderr.count("\n") == 1
    assert stderr.startswith(f"mwnet: warning: {out / 'suspects.csv'}: the learned weights do not decrease with the "
                             f"loss (Spearman ρ = +1.000") and stderr.endswith("ranking by loss instead\n")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suspects_score"] == "loss" and summary["suspects_spearman_weight_loss"] == 1.0
    assert summary["suspects_warning"] in stderr
    with open(out / "suspects.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["score"]) for r in rows] == [float(r["loss"]) for r in rows]
    assert [float(r["loss"]) for r in rows] == sorted((float(r["loss"]) for r in rows), reverse=True)


def test_list_presets_and_info(capsys):
    code, stdout, _ = run(["train", "--list-presets"], capsys)
    lines = stdout.splitlines()
    assert code == 0 and lines[0].split() == ["preset", "data", "set", "corruption", "meta", "set", "model",
                                              "schedule", "weight", "net"]
    assert lines[1:] == sorted(lines[1:])
    row = next(line for line in lines if line.startswith("paper-cifar10-uniform-40 "))
    assert row.split()[1:5] == ["cifar10", "uniform:0.4", "1000", "wrn28_10"] and "20000 it, lr 0.1" in row
    assert next(line for line in lines if line.startswith("fmnist-lt-200 ")).split()[2:6] == [
        "long", "tail", "IF", "200"]
    code, stdout, _ = run(["train", "--list-presets", "--json"], capsys)
    presets = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and len(presets) == len(lines) - 1
    assert next(p for p in presets if p["name"] == "fmnist-lt-200")["imbalance"] == 200.0
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
