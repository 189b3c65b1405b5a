"""`mwnet data`: one JSON object whose numbers follow the formulas; every bad input is one line and exit code 2."""

from __future__ import annotations

import gzip
import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from mwnet.cli import main
from mwnet.data import load_dataset, sources

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MWNET_DATA", raising=False)

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def run_json(capsys, *argv):
    assert main(["data", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object, on one line
    return json.loads(out)


def test_json_summary_on_digits(capsys):
    s = run_json(capsys, "--dataset", "digits", "--noise", "uniform:0.4", "--imbalance", "10", "--meta-per-class",
                 "10", "--seed", "2")
    assert s["num_classes"] == 10 and s["meta_size"] == 100 and s["test_size"] == 360
    assert s["meta_class_counts"] == [10] * 10
    n_max = (1437 - 100) / 10
    available = (torch.bincount(load_dataset("digits").y_train, minlength=10) - 10).tolist()  # after the meta set
    expected = [min(math.floor(n_max * 0.1 ** (i / 9)), available[i]) for i in range(10)]
    assert s["class_counts"] == expected and s["train_size"] == sum(expected)
    assert all(abs(sum(row) - 1) < 1e-12 for row in s["transition_matrix"])
    assert s["nominal_transition_matrix"][0][:2] == [0.64, 0.04]
    for key in ("train_size", "meta_size", "test_size", "num_classes", "class_counts", "meta_class_counts",
                "noise_rate_actual", "transition_matrix"):
        assert key in s


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_flip2_summary_agrees_with_the_formulas(capsys):
    s = run_json(capsys, "--dataset", "fashion-mnist", "--noise", "flip2:0.4", "--num-meta", "1000", "--seed", "1")
    assert s["source"] == str(FASHION_DIR)
    assert (s["train_size"], s["meta_size"], s["test_size"], s["num_classes"]) == (59000, 1000, 10000, 10)
    assert s["class_counts"] == [5900] * 10 and s["meta_class_counts"] == [100] * 10
    nominal = np.array(s["nominal_transition_matrix"])
    assert np.all(np.diag(nominal) == 0.6) and np.all((nominal > 0).sum(1) == 3)
    assert np.all(np.sort(nominal, axis=1)[:, -3:] == [0.2, 0.2, 0.6])
    empirical = np.array(s["transition_matrix"])
    se = np.sqrt(nominal * (1 - nominal) / 5900)
    assert np.all(np.abs(empirical - nominal) <= 4 * se + 1e-6)
    assert abs(s["noise_rate_actual"] - 0.4) < 4 * math.sqrt(0.24 / 59000)
    assert s["noise_rate_actual"] == pytest.approx(s["num_corrupted"] / 59000, abs=1e-6)
    assert sum(s["label_counts"]) == 59000


def test_human_summary(capsys):
    assert main(["data", "--dataset", "digits", "--noise", "flip:0.2", "--num-meta", "50"]) == 0
    out = capsys.readouterr().out
    assert "sizes        train 1387, meta 50, test 360" in out and "transition matrix" in out
    assert "\nmeta source  carved from the clean training set\n" in out


def test_arrays_dataset(tmp_path, capsys):
    g = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", x=g.normal(size=(300, 5)), y=np.arange(300) % 3)
    # Its labels are nobody's verified labels: a meta set is carved from them only when asked to.
    assert main(["data", "--dataset", f"arrays:{tmp_path / 't.npz'}", "--meta-per-class", "5"]) == 2
    assert "has no trusted meta set" in capsys.readouterr().err
    s = run_json(capsys, "--dataset", f"arrays:{tmp_path / 't.npz'}", "--meta-per-class", "5", "--train-subset",
                 "150", "--meta-from-unverified")
    assert s["input_shape"] == [5] and s["train_size"] + s["meta_size"] == 150 and s["test_size"] == 60


def _corrupt_idx_dir(tmp_path: Path) -> Path:
    d = tmp_path / "fm"
    d.mkdir()
    for name in sources.IDX_FILES:
        (d / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abc"))
    return d


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nope"], r"unknown data set 'nope' \(choose from"),
    (["--dataset", "digits", "--noise", "flip"], r"noise must be KIND:RATE"),
    (["--dataset", "digits", "--noise", "uniform:1.2"], r"noise rate must be in \[0, 1\], got 1\.2"),
    (["--dataset", "digits", "--imbalance", "0.5"], r"imbalance factor must be >= 1, got 0\.5"),
    (["--dataset", "digits", "--meta-per-class", "200"], r"meta set asks for 200 samples of class 0, which has"),
    (["--dataset", "digits", "--train-subset", "0"], r"train_subset must be in \[1, 1437\]"),
    (["--dataset", "digits", "--image-size", "16"], r"--image-size applies to folder:PATH data sets only"),
    (["--dataset", "digits", "--labels-csv", "l.csv"], r"--labels-csv applies to folder:PATH data sets only"),
    (["--dataset", "arrays:/nonexistent/x.npz"], r"arrays file not found: /nonexistent/x\.npz"),
    (["--dataset", "cifar10", "--no-download"], r"cifar10 not found in .* \(download disabled\)"),
    (["--dataset", "cifar100"], r"cannot download cifar-100-python\.tar\.gz: \[Errno 101\] Network is unreachable"),
    (["--dataset", "mnist", "--data-dir", "{corrupt}"], r"truncated IDX file \(expected 13 bytes .* got 11\): "
                                                        r".*fm/train-images-idx3-ubyte\.gz"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    import re

    if "{corrupt}" in argv:
        argv = [str(_corrupt_idx_dir(tmp_path)) if a == "{corrupt}" else a for a in argv]
    assert main(["data", *argv, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mwnet: error: ")
    assert re.search(message, lines[0]), lines[0]


def test_flag_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "--dataset", "digits", "--num-meta", "10", "--meta-per-class", "1"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["data", "--dataset", "digits", "--imbalance", "ten"])
    assert info.value.code == 2
