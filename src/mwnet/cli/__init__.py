"""The `mwnet` command line: a thin client of the library.

Each sub-command lives in its own module with a `register(subparsers)` function that adds its parser and sets
`func`; `main` turns every expected failure (bad flag value, missing or corrupt file) into one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mwnet import __version__

# Modules that contribute sub-commands, in the order `mwnet --help` lists them.
_COMMAND_MODULES = ("train", "data", "compare", "bench", "plot", "info")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line and exit code 2 (argparse's own code, with a shorter text)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"mwnet: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(
        prog="mwnet",
        description="Meta-Weight-Net: learn a sample-weighting function against a small clean meta set.",
    )
    parser.add_argument("--version", action="version", version=f"mwnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mwnet.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mwnet.cli.{name}":
                continue  # a sub-command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        print(f"mwnet: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mwnet: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
