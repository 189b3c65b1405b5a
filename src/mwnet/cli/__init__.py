"""The `mwnet` command line: a thin client of the library.

Each sub-command lives in its own module with a `register(subparsers)` function that adds its parser and sets
`func` (most through `add_command`, which takes the command's help from the module's docstring); `main` turns every
expected failure (bad flag value, missing or corrupt file) into one line on stderr and exit code 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mwnet import __version__

# Modules that contribute sub-commands, in the order `mwnet --help` lists them.
_COMMAND_MODULES = ("train", "demo", "data", "compare", "bench", "plot", "info")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line and exit code 2 (argparse's own code, with a shorter text)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from mwnet.experiment.ranks import launched_rank

        # Under torchrun every process parses the same command line: rank 0 alone says what is wrong.
        self.exit(2, f"mwnet: error: {message}\n" if launched_rank() == 0 else None)


def add_command(subparsers: Any, doc: str | None, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """The parser of a sub-command described by its module's docstring, handled by `run`.

    The docstring's first line, "`mwnet NAME ...`: HELP.", gives the name and the one-line help `mwnet --help`
    shows; the paragraph after it is the description `mwnet NAME --help` shows.
    """
    first, _, rest = (doc or "").strip().partition("\n")
    match = re.fullmatch(r"`mwnet (\w+)[^`]*`: (.+?)\.?", first)
    if match is None:
        raise TypeError(f"a command module's docstring must start with \"`mwnet NAME`: HELP.\", got {first!r}")
    name, help_text = match.groups()
    parser = subparsers.add_parser(name, help=help_text.replace("%", "%%"),
                                   description=" ".join(rest.strip().split("\n\n")[0].split()))
    parser.set_defaults(func=run)
    return parser


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
        importlib.import_module(f"mwnet.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mwnet.experiment.files import first_line
    from mwnet.experiment.ranks import OtherRankCrashed, is_reported_by_rank_0, launched_world_size, reported_by_rank_0

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command != "train" and launched_world_size() > 1:
            raise reported_by_rank_0(CLIError(f"`mwnet {args.command}` does not run under torchrun: only `mwnet "
                                              "train` does (see docs/distributed.md)"))
        result = args.func(args)
    except OtherRankCrashed as exc:
        if not is_reported_by_rank_0(exc):
            print(f"mwnet: error: {first_line(exc)}", file=sys.stderr)
        return 1
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        if is_reported_by_rank_0(exc):  # several processes: rank 0 prints the one message
            return 2
        message = first_line(exc)
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
