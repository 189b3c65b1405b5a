"""Calling the `mwnet` command line in-process from tests: exit code, stdout and stderr."""

import signal

from mwnet.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`mwnet ARGV` through `main`, with argparse's own exits turned into their code (and Ctrl-C handling restored:
    an interrupted `main` ignores further SIGINTs, as the process it runs in is about to end)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    finally:
        signal.signal(signal.SIGINT, handler)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
