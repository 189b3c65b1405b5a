"""IDX sources (Fashion-MNIST, MNIST): round trips of files the tests write, checksums, corrupt and missing files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from data_formats import isolate, make_idx_set, md5, write_idx_set
from mwnet.data import download, idx, load_dataset

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, monkeypatch, compress):
    arrays = make_idx_set()
    table = write_idx_set(tmp_path / "fashion-mnist", arrays, compress=compress)
    monkeypatch.setitem(download.CHECKSUMS, "fashion-mnist", table)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (50, 1, 28, 28)
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(ds.y_test, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    pixels = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(pixels.mean(), abs=1e-12)
    assert ds.std[0] == pytest.approx(pixels.std(), abs=1e-12)
    assert ds.classes[0] == "T-shirt/top"


def test_idx_checksum_mismatch_names_the_file(tmp_path):
    write_idx_set(tmp_path, make_idx_set())  # official checksums: these random files cannot match
    with pytest.raises(ValueError, match=r"checksum mismatch \(md5 [0-9a-f]{32}, expected f4a8712d.*\): .*"
                                         r"train-images-idx3-ubyte\.gz$"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, download=False, verify=False)
    assert len(ds.y_train) == 50


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-100], r"truncated IDX file \(expected 39216 bytes .* got 39116\)"),
    (lambda b: b + b"\0", r"over-long IDX file \(expected 39216 bytes .* got 39217\)"),
    (lambda b: b"\x12\x34" + b[2:], r"not an IDX file \(bad magic 0x12340803\)"),
    (lambda b: b[:2] + b"\x07" + b[3:], r"not an IDX file \(bad magic 0x00000703\)"),
    (lambda b: b[:6], r"truncated IDX file \(header needs 16 bytes, got 6\)"),
])
def test_idx_corrupt_files(tmp_path, damage, message):
    write_idx_set(tmp_path, make_idx_set())
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(damage(gzip.decompress(path.read_bytes()))))
    with pytest.raises(ValueError, match=message + r": .*train-images-idx3-ubyte\.gz$"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)


def test_idx_truncated_gzip(tmp_path):
    write_idx_set(tmp_path, make_idx_set())
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match=r"corrupt gzip file .*t10k-images-idx3-ubyte\.gz$"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)


def test_idx_labels_out_of_range_and_count_mismatch(tmp_path, monkeypatch):
    arrays = make_idx_set()
    arrays["train-labels-idx1-ubyte"][7] = 12
    monkeypatch.setitem(download.CHECKSUMS, "mnist", write_idx_set(tmp_path / "mnist", arrays))
    with pytest.raises(ValueError, match=r"label 12 out of range \[0, 10\): .*train-labels-idx1-ubyte\.gz$"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    arrays = make_idx_set()
    arrays["t10k-labels-idx1-ubyte"] = arrays["t10k-labels-idx1-ubyte"][:-1]
    write_idx_set(tmp_path / "mnist", arrays)
    with pytest.raises(ValueError, match=r"19 labels for 20 images: .*t10k-labels-idx1-ubyte\.gz$"):
        load_dataset("mnist", data_dir=tmp_path, download=False, verify=False)


def test_missing_files(tmp_path):
    write_idx_set(tmp_path / "mnist", make_idx_set())
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"mnist: t10k-labels-idx1-ubyte\.gz missing in .*mnist$"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match=r"^cifar100 not found in .* \(download disabled\)$"):
        load_dataset("cifar100", data_dir=tmp_path, download=False)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_matches_the_official_checksums(monkeypatch):
    monkeypatch.setattr(download, "SYSTEM_DIRS", {"fashion-mnist": (str(FASHION_DIR),)})
    ds = load_dataset("fashion-mnist", download=False)  # verifies each payload against the published md5
    assert ds.source == str(FASHION_DIR)
    assert tuple(ds.x_train.shape) == (60000, 1, 28, 28) and tuple(ds.x_test.shape) == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10 and torch.bincount(ds.y_test).tolist() == [1000] * 10
    # Fashion-MNIST's published statistics (training set, pixels in [0, 1]): mean 0.2860, std 0.3530.
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-4) and ds.std[0] == pytest.approx(0.3530, abs=1e-4)
    # The uncompressed payloads have the published md5s; record whether the .gz files are the published ones
    # (Debian re-compresses them, so the archive md5s differ: the content check is the one that matters).
    for name in idx.IDX_FILES:
        payload = gzip.decompress((FASHION_DIR / f"{name}.gz").read_bytes())
        assert md5(payload) == download.CHECKSUMS["fashion-mnist"][name]


def test_idx_gzip_cannot_decompress_beyond_the_largest_idx_file(tmp_path, monkeypatch):
    """A few KB of gzip can hold gigabytes: decompression stops at the size of the largest official file."""
    arrays = make_idx_set()
    table = write_idx_set(tmp_path / "fashion-mnist", arrays)
    monkeypatch.setitem(download.CHECKSUMS, "fashion-mnist", table)
    monkeypatch.setattr(idx, "MAX_FILE_BYTES", 30_000)
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(100_000)))
    with pytest.raises(ValueError, match=r"^gzip data decompresses to more than any IDX file \(30000 bytes\): "
                                         r".*train-images-idx3-ubyte\.gz$"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    monkeypatch.setattr(idx, "MAX_FILE_BYTES", 10_000)
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(bytes(20_000))
    with pytest.raises(ValueError, match=r"^20000 bytes, more than any IDX file \(10000 at most\): "
                                         r".*train-images-idx3-ubyte\.gz$"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
