"""Where data files are looked for, and the checksum-verified download of the official files.

Where files are looked for, in order: `data_dir`, `$MWNET_DATA`, `~/.cache/mwnet` (each as ROOT/<name>/ and then
ROOT/ itself), then the system copy (`/usr/share/datasets/fashion-mnist`, Debian's `dataset-fashion-mnist`). When
nothing is found and `download=True`, the official files are fetched from the official mirrors into the first of
`data_dir`, `$MWNET_DATA`, `~/.cache/mwnet`, checked against the published md5 before they are kept.

Checksums: every file is checked against the official md5 of its *content* (the decompressed IDX file, each
pickle inside the CIFAR archive), because distributions re-compress: Debian's `.gz` files differ byte-wise from
the published ones (another gzip time stamp) but hold exactly the official IDX bytes. Downloads are also checked
against the md5 of the published archive. Structure (magic numbers, lengths, keys, label ranges) is validated
before the checksum, so a truncated or corrupt file is reported as such.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from mwnet.data.dataset import one_line

# md5 of the official files: the published archives (what the mirrors serve) and the files they contain. Sources:
# the data sets' own pages (Zalando Research's fashion-mnist README, Y. LeCun's MNIST page via its S3 mirror,
# A. Krizhevsky's CIFAR page) as recorded by torchvision and many other loaders.
CHECKSUMS: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "cifar10": {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100": {
        "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}

# Official download locations, tried in order (base URLs: the file name is appended).
MIRRORS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/",),
}

# System-wide copies (Debian's dataset-fashion-mnist package), searched after the user's directories.
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}

_DOWNLOAD_TIMEOUT_S = 30


def cache_dir() -> Path:
    """The default download directory: ~/.cache/mwnet."""
    return Path.home() / ".cache" / "mwnet"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for data set `name`, in order (see the module docstring)."""
    roots = [Path(data_dir).expanduser()] if data_dir is not None else []
    if os.environ.get("MWNET_DATA"):
        roots.append(Path(os.environ["MWNET_DATA"]).expanduser())
    roots.append(cache_dir())
    dirs = [d for root in roots for d in (root / name, root)]
    dirs += [Path(p) for p in SYSTEM_DIRS.get(name, ())]
    return list(dict.fromkeys(dirs))


def download_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where a download of `name` goes: <data_dir or $MWNET_DATA or ~/.cache/mwnet>/<name>."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
    elif os.environ.get("MWNET_DATA"):
        root = Path(os.environ["MWNET_DATA"]).expanduser()
    else:
        root = cache_dir()
    return root / name


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def fetch(urls: Sequence[str], dest: Path, md5: str, *, timeout: float = _DOWNLOAD_TIMEOUT_S) -> Path:
    """Download the first URL that works to `dest`, keeping it only if its md5 matches; one-line errors.

    Network failures raise FileNotFoundError, a checksum mismatch (on every mirror) ValueError; nothing partial
    is left behind either way.
    """
    failures: list[str] = []
    mismatch: str | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileNotFoundError(f"cannot create download directory ({exc.strerror or exc}): {dest.parent}") from None
    part = dest.with_name(dest.name + ".part")
    for url in urls:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
                print(f"mwnet: downloading {url} -> {dest}", file=sys.stderr)  # only once a mirror answered
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, ValueError) as exc:  # URLError/HTTPError/timeouts are OSErrors; a bad URL a ValueError
            part.unlink(missing_ok=True)
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"{one_line(reason)} ({url})")
            continue
        if digest.hexdigest() != md5:
            part.unlink(missing_ok=True)
            mismatch = f"checksum mismatch for {url} (md5 {digest.hexdigest()}, expected {md5}); not kept"
            continue
        os.replace(part, dest)
        return dest
    if mismatch is not None:
        raise ValueError(mismatch)
    raise FileNotFoundError(f"cannot download {dest.name}: {failures[-1] if failures else 'no mirror'}")


def check_digest(got: str, expected: str | None, where: str) -> None:
    """ValueError naming `where` when md5 `got` is not the `expected` one (None: no official md5 to check)."""
    if expected is not None and got != expected:
        raise ValueError(f"checksum mismatch (md5 {got}, expected {expected}): {where}")


def not_found(name: str, dirs: Sequence[Path], download: bool) -> FileNotFoundError:
    """The one-line error for a data set found in none of `dirs`."""
    hint = "download disabled" if not download else "download failed"
    return FileNotFoundError(f"{name} not found in {', '.join(str(d) for d in dirs)} ({hint})")
