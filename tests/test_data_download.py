"""Finding and fetching files: the search order, checksum-verified downloads (file:// mirrors: no network here)."""

from __future__ import annotations

import pytest
import torch

from data_formats import isolate, make_idx_set, write_cifar, write_idx_set
from mwnet.data import download, idx, load_dataset


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def test_search_order(tmp_path, monkeypatch):
    """data_dir, then $MWNET_DATA, then ~/.cache/mwnet, then the system copy; ROOT/<name> before ROOT."""
    tables = {}
    for where, seed in (("given", 1), ("env", 2), ("home/.cache/mwnet/fashion-mnist", 3), ("system", 4)):
        tables[where] = write_idx_set(tmp_path / where, make_idx_set(seed))
    monkeypatch.setattr(download, "SYSTEM_DIRS", {"fashion-mnist": (str(tmp_path / "system"),)})
    monkeypatch.setenv("MWNET_DATA", str(tmp_path / "env"))
    first = make_idx_set(1)["train-images-idx3-ubyte"]

    def source(**kwargs):
        return load_dataset("fashion-mnist", download=False, verify=False, **kwargs).source

    assert source(data_dir=tmp_path / "given") == str(tmp_path / "given")
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "given", download=False, verify=False)
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(first))
    assert source() == str(tmp_path / "env")
    monkeypatch.delenv("MWNET_DATA")
    assert source() == str(tmp_path / "home/.cache/mwnet/fashion-mnist")
    for f in (tmp_path / "home/.cache/mwnet/fashion-mnist").iterdir():
        f.unlink()
    assert source() == str(tmp_path / "system")
    assert source(data_dir=tmp_path / "nothing-here") == str(tmp_path / "system")


def test_download_verifies_and_keeps_only_good_files(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    arrays = make_idx_set()
    table = write_idx_set(mirror, arrays)
    monkeypatch.setitem(download.MIRRORS, "mnist", ("file:///nonexistent/", mirror.as_uri() + "/"))
    cache = tmp_path / "home" / ".cache" / "mwnet"
    # Published checksums: every mirror serves "wrong" files → a one-line ValueError and nothing kept.
    with pytest.raises(ValueError, match=r"^checksum mismatch for file://.*train-images-idx3-ubyte\.gz "
                                         r"\(md5 [0-9a-f]{32}, expected f68b3c2d[0-9a-f]{24}\); not kept$"):
        load_dataset("mnist")
    assert not any(p.is_file() for p in cache.rglob("*"))
    monkeypatch.setitem(download.CHECKSUMS, "mnist", table)
    ds = load_dataset("mnist")  # the first mirror fails (no such file), the second serves the right bytes
    assert ds.source == str(cache / "mnist")
    assert torch.equal(ds.x_test[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(f"{n}.gz" for n in idx.IDX_FILES)


def test_download_cifar_archive_into_data_dir(tmp_path, monkeypatch):
    _, table = write_cifar(tmp_path / "mirror", "cifar10", archive=True)
    monkeypatch.setitem(download.CHECKSUMS, "cifar10", table)
    monkeypatch.setitem(download.MIRRORS, "cifar10", ((tmp_path / "mirror").as_uri() + "/",))
    ds = load_dataset("cifar10", data_dir=tmp_path / "mine")
    assert ds.source == str(tmp_path / "mine" / "cifar10" / "cifar-10-python.tar.gz")
    assert len(ds.y_train) == 60


def test_download_without_network_is_one_line(tmp_path, capsys):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    assert "\n" not in message
    assert message == ("cannot download cifar-10-python.tar.gz: [Errno 101] Network is unreachable "
                       "(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)")
    assert capsys.readouterr().err == ""  # no "downloading" line when no mirror answered
    assert not any(p.is_file() for p in (tmp_path / "home").rglob("*"))
