"""CIFAR sources: the official pickles (folder and .tar.gz) round-trip; checksums, refused code, corrupt files."""

from __future__ import annotations

import pickle

import pytest
import torch

from data_formats import isolate, md5, write_cifar
from mwnet.data import cifar, download, load_dataset


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("archive", [False, True])
def test_cifar_round_trip(tmp_path, monkeypatch, name, archive):
    dicts, table = write_cifar(tmp_path, name, archive=archive)
    monkeypatch.setitem(download.CHECKSUMS, name, table)
    ds = load_dataset(name, data_dir=tmp_path, download=False)
    layout = cifar.CIFAR_LAYOUTS[name]
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    n = 12 * len(layout.train)
    assert ds.x_train.shape == (n, 3, 32, 32) and ds.x_test.shape == (12, 3, 32, 32)
    assert ds.num_classes == (10 if name == "cifar10" else 100)
    assert ds.classes[3] == ("c3" if name == "cifar10" else "f3")
    # The first image of the last training batch: its red plane is the first 1024 values, row-major.
    last = dicts[layout.train[-1]]
    image = ds.x_train[n - 12]
    assert torch.equal(image[0].reshape(-1), torch.from_numpy(last[b"data"][0, :1024]))
    assert int(image[2, 31, 0]) == int(last[b"data"][0, 2048 + 31 * 32])
    assert ds.y_train[n - 12:].tolist() == last[label_key]
    assert ds.y_test.tolist() == dicts[layout.test[0]][label_key]
    assert ds.mean == cifar.CIFAR_MEAN and ds.std == cifar.CIFAR_STD
    assert ds.source.endswith(layout.archive if archive else layout.folder)


def test_cifar_checksum_mismatch(tmp_path):
    write_cifar(tmp_path, "cifar10", archive=False)
    with pytest.raises(ValueError, match=r"checksum mismatch .*expected c99cafc1.*\): .*data_batch_1$"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_numpy1_pickles_load_and_code_is_refused(tmp_path, monkeypatch):
    """Official pickles name numpy.core (numpy 1.x); a pickle that calls anything else is refused."""
    _, table = write_cifar(tmp_path, "cifar10", archive=False)
    folder = tmp_path / "cifar-10-batches-py"
    blob = (folder / "data_batch_1").read_bytes()
    old_style = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old_style != blob
    (folder / "data_batch_1").write_bytes(old_style)
    table["data_batch_1"] = md5(old_style)
    monkeypatch.setitem(download.CHECKSUMS, "cifar10", table)
    assert load_dataset("cifar10", data_dir=tmp_path, download=False).x_train.shape[0] == 60

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"corrupt pickle \(UnpicklingError: global __builtin__\.print is not allowed\)"
                                         r": .*test_batch$"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("damage, message", [
    (lambda d, b: b[: len(b) // 2], r"corrupt pickle \(.*\): .*data_batch_2$"),
    (lambda d, b: b"garbage", r"corrupt pickle \(.*\): .*data_batch_2$"),
    (lambda d, b: pickle.dumps({**d, b"data": d[b"data"][:, :3000]}, protocol=2),
     r"CIFAR b'data' must be uint8 \(N, 3072\), got uint8 \(12, 3000\): .*data_batch_2$"),
    (lambda d, b: pickle.dumps({**d, b"labels": d[b"labels"][:-1]}, protocol=2),
     r"11 labels for 12 images: .*data_batch_2$"),
    (lambda d, b: pickle.dumps({**d, b"labels": [10, *d[b"labels"][1:]]}, protocol=2),
     r"label 10 out of range \[0, 10\): .*data_batch_2$"),
    (lambda d, b: pickle.dumps({b"data": d[b"data"]}, protocol=2), r"not a CIFAR pickle \(no b'labels' entry\)"),
])
def test_cifar_corrupt_batches(tmp_path, damage, message):
    dicts, _ = write_cifar(tmp_path, "cifar10", archive=False)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(damage(dicts["data_batch_2"], path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_missing_and_corrupt_archive(tmp_path):
    write_cifar(tmp_path / "a", "cifar10", archive=False)
    (tmp_path / "a" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar10: missing file .*cifar-10-batches-py/test_batch$"):
        load_dataset("cifar10", data_dir=tmp_path / "a", download=False)
    write_cifar(tmp_path / "b", "cifar100", archive=True)
    archive = tmp_path / "b" / "cifar-100-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"corrupt tar\.gz archive .*cifar-100-python\.tar\.gz$"):
        load_dataset("cifar100", data_dir=tmp_path / "b", download=False)


class _Hex:
    """Pickles as _codecs.encode(inner, "hex"): nested, each level doubles the bytes at a cost of a few."""

    def __init__(self, inner):
        self.inner = inner

    def __reduce__(self):
        import codecs

        return (codecs.encode, (self.inner, "hex"))


class _Alloc:
    """Pickles as numpy.ndarray((n,)): an allocation of n bytes that the file does not hold."""

    def __reduce__(self):
        import numpy as np

        return (np.ndarray, ((1 << 40,),))


class _BigArray:
    """Pickles as numpy's _reconstruct(ndarray, (n,), b"b"): the array header, with a shape it does not fill."""

    def __reduce__(self):
        import numpy as np

        return (np._core.multiarray._reconstruct, (np.ndarray, (1 << 40,), b"b"))


def _nested_labels(depth):
    labels = [0, 1]
    for _ in range(depth):
        labels = [labels, labels]  # shared references: 2^depth labels for a few bytes each level
    return labels


def _hex_bomb(depth):
    value = b"ab"
    for _ in range(depth):
        value = _Hex(value)
    return value


@pytest.mark.parametrize("damage, message", [
    # Issue 15.12: a pickle of a few KB that expands to gigabytes once read is refused, as one line.
    (lambda d: {**d, b"labels": _nested_labels(20)},
     r"^CIFAR labels must be a flat list of integers, got a list holding list: .*data_batch_2$"),
    (lambda d: {**d, b"batch_label": _hex_bomb(20)},
     r"^corrupt pickle \(UnpicklingError: _codecs\.encode with codec 'hex' is not allowed\): .*data_batch_2$"),
    (lambda d: {**d, b"batch_label": _Alloc()},
     r"^corrupt pickle \(UnpicklingError: numpy\.ndarray called directly \(an allocation the file does not hold\)\)"),
    (lambda d: {**d, b"batch_label": _BigArray()},
     r"^corrupt pickle \(UnpicklingError: numpy _reconstruct with shape \(1099511627776,\) is not an array header"),
    (lambda d: {**d, b"labels": {"a": 1}}, r"^CIFAR labels must be a flat list of integers, got dict: "),
])
def test_cifar_pickles_cannot_expand_beyond_the_file(tmp_path, damage, message):
    dicts, _ = write_cifar(tmp_path, "cifar10", archive=False)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps(damage(dicts["data_batch_2"]), protocol=2))
    assert path.stat().st_size < 100_000  # a few KB more than the pristine batch
    with pytest.raises(ValueError, match=message):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_members_and_names_are_bounded(tmp_path, monkeypatch):
    write_cifar(tmp_path / "a", "cifar10", archive=True)
    monkeypatch.setattr(cifar, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(ValueError, match=r"^\d+ bytes, more than any CIFAR file \(1000 at most\): .*tar\.gz:"
                                         r"cifar-10-batches-py/data_batch_1$"):
        load_dataset("cifar10", data_dir=tmp_path / "a", download=False)
    monkeypatch.undo()
    write_cifar(tmp_path / "b", "cifar10", archive=False)
    meta = tmp_path / "b" / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": [_nested_labels(3)] * 10}, protocol=2))
    with pytest.raises(ValueError, match=r"^CIFAR class names must be a list of strings, got list: .*batches\.meta$"):
        load_dataset("cifar10", data_dir=tmp_path / "b", download=False)
