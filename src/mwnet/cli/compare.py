"""`mwnet compare`: run methods × settings × seeds into one directory and tabulate mean ± std.

Run a grid of methods × settings (preset names) × seeds, one run directory per cell
(OUT/<setting>/<method>/seed<k>/), all settings × methods at seed 0 first. Finished cells are skipped and
interrupted ones resumed, so the same command continues a grid (with the recorded --jobs and --threads). Exit code
3 when a cell diverged. Writes OUT/results.md and OUT/results.json (mean ±
sample std of best and last test accuracy; the best mean of each setting in bold) after every finished cell.

    mwnet compare --settings fmnist-uniform-40,fmnist-uniform-60 --methods ce,mwnet,focal --seeds 1 \\
        --seeds-for ce=3,mwnet=3 --out runs/cmp --jobs 2
    mwnet compare --out runs/cmp             # continue the grid recorded in runs/cmp/compare.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from mwnet.cli import EXIT_DIVERGED, EXIT_INTERRUPTED, CLIError, add_command
from mwnet.cli.flags import add_field_flag, field_doc, flag, key_values, names, print_line

# Fields that have a flag of their own for every cell (any other field: --set KEY=VALUE), and the fields among
# them that say only where to run: they may change when a grid is continued.
_OVERRIDE_FLAGS = ("epochs", "iterations", "train_subset")
_RUN_FLAGS = ("device", "data_dir")


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, __doc__, run)
    parser.add_argument("--settings", metavar="S1,S2", help="comma-separated presets (see `mwnet train "
                        "--list-presets`) [the grid recorded in --out]")
    parser.add_argument("--methods", metavar="M1,M2", help="comma-separated methods [every registered method]")
    parser.add_argument("--seeds", type=int, default=None, metavar="K", help="seeds per method, 0..K-1 [1]")
    parser.add_argument("--seeds-for", metavar="M=K,...", help="per-method seed counts that replace --seeds, "
                        "e.g. ce=3,mwnet=3")
    parser.add_argument("--out", required=True, help="the grid's directory")
    parser.add_argument("--jobs", type=int, help="cells trained at once, each in its own process [as recorded in "
                        "OUT/compare.json, else 1]")
    parser.add_argument("--threads", type=int, help="torch threads per cell [as recorded in OUT/compare.json, else "
                        "cores // --jobs]; CPU numbers depend on it, so a continued grid keeps the recorded one")
    for name in (*_OVERRIDE_FLAGS, *_RUN_FLAGS):
        add_field_flag(parser, name, help=f"{field_doc(name)}, for every cell")
    parser.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                        help="set any other config field of every cell, e.g. lr=0.05 or model_options='{\"hidden\": "
                             "[32]}' (repeatable; VALUE is JSON or text)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their status; run nothing")
    parser.add_argument("--report-only", action="store_true", help="only write results.md and results.json from "
                        "the finished cells")
    parser.add_argument("--quiet", action="store_true", help="one line per cell, no per-epoch lines")


def run(args: argparse.Namespace) -> int:
    from mwnet.experiment.aggregate import write_results
    from mwnet.experiment.execution import GridInterrupted, run_grid
    from mwnet.experiment.grid import check_cells
    from mwnet.experiment.lock import RunLock
    from mwnet.methods.options import POSITIVE_INT

    if args.dry_run and args.report_only:
        raise CLIError("give --dry-run or --report-only, not both")
    for name in ("jobs", "threads"):
        if getattr(args, name) is not None:
            POSITIVE_INT.require(getattr(args, name), f"--{name}")
    out = Path(args.out)
    grid = _grid(args, out)
    command = "mwnet compare " + shlex.join(_argv(args))
    if args.dry_run:
        check_cells(grid, out)
        _print_cells(grid, out)
        return 0
    if args.report_only:
        if not out.is_dir():
            raise CLIError(f"no such directory: {out}")
        with RunLock(out):  # a running grid rewrites the tables itself: one writer at a time
            check_cells(grid, out)
            results = write_results(grid, out, command=command)
        print(f"{results['cells_done']} of {results['cells_total']} cells finished; wrote {out / 'results.md'} "
              f"and {out / 'results.json'}")
        return 0
    try:
        results = run_grid(grid, out, jobs=args.jobs, threads=args.threads, command=command,
                           epoch_lines=not args.quiet, log=print_line)
    except GridInterrupted as exc:
        print(f"mwnet: {exc}. Run the same command (or `mwnet compare --out {out}`) to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{results['cells_done']} of {results['cells_total']} cells finished; wrote {out / 'results.md'} and "
          f"{out / 'results.json'}")
    diverged = [cell for cell in results["cells"] if cell.get("diverged")]
    if diverged:
        print(f"mwnet: {len(diverged)} of {results['cells_total']} cells diverged, first "
              f"{diverged[0]['setting']}/{diverged[0]['method']}/seed{diverged[0]['seed']} (listed in "
              f"{out / 'results.md'}); exit code {EXIT_DIVERGED}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def _grid(args: argparse.Namespace, out: Path) -> Any:
    """The grid from the flags, or the one recorded in OUT/compare.json when no --settings is given."""
    from mwnet.experiment.config import check_run_length
    from mwnet.experiment.grid import GRID_FILE, grid_from_record, make_grid

    run_fields = {name: getattr(args, name) for name in _RUN_FLAGS if getattr(args, name) is not None}
    overrides = {name: getattr(args, name) for name in _OVERRIDE_FLAGS if getattr(args, name) is not None}
    overrides.update(key_values(args.set_values, "--set"))
    check_run_length(overrides)
    if args.settings is None:
        given = [f for f, v in (("--methods", args.methods), ("--seeds", args.seeds), ("--seeds-for", args.seeds_for))
                 if v is not None] + (["--set / override flags"] if overrides else [])
        if given:
            raise CLIError(f"{given[0]} needs --settings (or give neither, to continue the grid in {out})")
        if not (out / GRID_FILE).is_file():
            raise CLIError(f"give --settings (no grid recorded in {out / GRID_FILE})")
        return grid_from_record(out, run_fields)
    return make_grid(names(args.settings), None if args.methods is None else names(args.methods),
                     seeds=1 if args.seeds is None else args.seeds, seeds_for=_seed_counts(args.seeds_for),
                     overrides={**overrides, **run_fields})


def _print_cells(grid: Any, out: Path) -> None:
    from mwnet.experiment.grid import overrides_text
    from mwnet.experiment.rundir import run_status

    cells = grid.cells()
    statuses = [run_status(cell.run_dir(out)) for cell in cells]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("done", "partial", "todo"))
    print(f"{len(cells)} cells in {out} ({counts}); every cell: {overrides_text(grid.overrides)}; run order:")
    width = max(len(cell.name) for cell in cells)
    for i, (cell, status) in enumerate(zip(cells, statuses), start=1):
        print(f"{i:4d}  {cell.name:<{width}}  {status}")


def _seed_counts(text: str | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in names(text or ""):
        method, sep, count = item.partition("=")
        try:
            counts[method.strip()] = int(count)
        except ValueError:
            sep = ""
        if not sep or not method.strip():
            raise CLIError(f"--seeds-for must look like METHOD=K,..., got {item!r}")
    return counts


def _argv(args: argparse.Namespace) -> list[str]:
    """The flags of `args` that define the grid and how it ran, written back as a command line (for the record)."""
    words = []
    for name in ("settings", "methods", "seeds", "seeds_for", *_OVERRIDE_FLAGS, *_RUN_FLAGS, "out", "jobs",
                 "threads"):
        value = getattr(args, name)
        if value is not None:
            words += [flag(name), str(value)]
    for item in args.set_values:
        words += ["--set", item]
    return words
