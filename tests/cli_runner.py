"""Calling the `mwnet` command line in-process from tests: exit code, stdout and stderr."""

from mwnet.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`mwnet ARGV` through `main`, with argparse's own exits turned into their code."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
