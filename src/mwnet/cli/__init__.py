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
_COMMAND_MODULES = ("train", "demo", "data", "compare", "label_issues", "bench", "plot", "info")


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
    match = re.fullmatch(r"`mwnet ([\w-]+)[^`]*`: (.+?)\.?", first)
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


# Exit codes (docs/reliability.md): 0 done; 2 bad input or environment (one line on stderr, nothing half-written);
# 3 a run diverged (its results are written and say where); 130 interrupted (Ctrl-C; the runs resume). Under
# torchrun, rank 0 alone prints a failure every rank shares (mwnet.experiment.ranks).
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mwnet ARGV` and return its exit code; every expected failure is one line on stderr."""
    from mwnet.experiment.files import first_line, os_error_line
    from mwnet.experiment.ranks import OtherRankCrashed, is_reported_by_rank_0, launched_world_size, reported_by_rank_0

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            if args.command != "train" and launched_world_size() > 1:
                raise reported_by_rank_0(CLIError(f"`mwnet {args.command}` does not run under torchrun: only "
                                                  "`mwnet train` does (see docs/distributed.md)"))
            code = int(args.func(args) or 0)
        except OtherRankCrashed as exc:
            if not is_reported_by_rank_0(exc):
                print(f"mwnet: error: {first_line(exc)}", file=sys.stderr)
            return 1
        except (CLIError, ValueError) as exc:
            if not is_reported_by_rank_0(exc):  # several processes: rank 0 prints the one message
                print(f"mwnet: error: {first_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as exc:  # a missing file, a read-only folder, a full disk: which path, and why
            if not is_reported_by_rank_0(exc):
                print(f"mwnet: error: {os_error_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        _ignore_sigint()
        print("mwnet: interrupted", file=sys.stderr)
    if code == EXIT_INTERRUPTED:
        _ignore_sigint()  # a further Ctrl-C while the process winds down must not print a traceback
    return code


def _ignore_sigint() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
