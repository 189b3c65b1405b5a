"""`mwnet info`: versions, device, models, methods and the data sets found on this machine.

Print the versions of mwnet and its dependencies, torch's threads and devices, the registered models, methods and
presets, and for each built-in data set where its files were found (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import importlib
import platform
from typing import Any

from mwnet.cli import add_command

_PACKAGES = ("torch", "numpy", "matplotlib", "tqdm", "sklearn", "PIL", "tensorboard")


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, __doc__, run)
    parser.add_argument("--data-dir", help="also search this directory for data sets")
    parser.add_argument("--no-data", action="store_true", help="skip the data set search (it reads the files)")


def run(args: argparse.Namespace) -> int:
    import torch

    from mwnet import __version__, models
    from mwnet.experiment.presets import PRESETS
    from mwnet.methods import list_methods

    print(f"mwnet {__version__} (Python {platform.python_version()}, {platform.platform()})")
    versions = []
    for name in _PACKAGES:
        try:
            module = importlib.import_module(name)
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            versions.append(f"{name} not installed")
    print("packages: " + ", ".join(versions))
    print(f"torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})")
    print(f"devices: {', '.join(_devices(torch))}")
    print(f"models: {', '.join(models.list_models())}")
    print(f"methods: {', '.join(list_methods())}")
    print(f"presets: {', '.join(sorted(PRESETS))}")
    if args.no_data:
        return 0
    from mwnet.data import load_dataset
    from mwnet.data.sources import BUILTIN, search_dirs
    from mwnet.experiment.files import first_line

    print("data sets:")
    for name in BUILTIN:
        try:
            ds = load_dataset(name, data_dir=args.data_dir, download=False, verify=False)
        except FileNotFoundError:
            searched = ", ".join(str(d) for d in search_dirs(name, args.data_dir))
            print(f"  {name}: not found (searched {searched}; downloaded on first use)")
            continue
        except (ValueError, ImportError) as exc:
            print(f"  {name}: unusable ({first_line(exc)})")
            continue
        print(f"  {name}: {ds.source} ({len(ds.y_train)} train, {len(ds.y_test)} test, {ds.num_classes} classes)")
    return 0


def _devices(torch: Any) -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found
