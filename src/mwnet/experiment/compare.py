"""A grid of methods × settings × seeds in one directory, run resumably and tabulated (the paper's Tables 1 and 2).

    grid = make_grid(["fmnist-uniform-40", "fmnist-uniform-60"], ["ce", "mwnet", "focal"], seeds=1,
                     seeds_for={"ce": 3, "mwnet": 3}, overrides={"epochs": 2})
    run_grid(grid, "runs/cmp", jobs=2)           # also writes results.md / results.json after every cell
    results = aggregate(grid, "runs/cmp")         # mean ± std of best and last test accuracy per method and setting

A setting is a preset name; a cell is one run directory OUT/<setting>/<method>/seed<k>/ written by
`mwnet.experiment.runner.train`. A cell is finished iff its summary.json exists; one with a checkpoint but no
summary was interrupted and resumes from the checkpoint. OUT/compare.json records the grid (settings, methods,
seeds, the overrides applied to every cell) and every command that ran cells, so that the same command, or
`mwnet compare --out OUT` alone, continues it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import signal
import statistics
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mwnet.experiment.config import PRESETS, RUN_FIELDS, TrainConfig, config_to_dict, load_config, resolve_config
from mwnet.experiment.metrics import rounded
from mwnet.experiment.runner import TrainingInterrupted, holds_run, train
from mwnet.methods import list_methods

GRID_FILE = "compare.json"
RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"
# The grid decides these fields of every cell; they cannot be overridden for all cells at once.
GRID_FIELDS = ("method", "seed", "preset")
METRICS = ("best_test_acc", "last_test_acc")

Status = Literal["done", "partial", "todo"]
Log = Callable[[str], None]


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C while the grid ran: finished cells are kept, running ones saved a checkpoint; run again to continue."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a method on a setting (a preset) with one seed."""

    setting: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.setting}/{self.method}/seed{self.seed}"

    def run_dir(self, out: str | Path) -> Path:
        return Path(out) / self.setting / self.method / f"seed{self.seed}"


@dataclass
class Grid:
    """Settings × methods × seeds, and the config overrides applied to every cell.

    `seeds[method]` is the number of seeds of that method (seeds 0 … k-1). `overrides` are TrainConfig fields; the
    ones in RUN_FIELDS (device, data_dir) say only where to run and may change between invocations.
    """

    settings: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: dict[str, int]
    overrides: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every cell in run order: all settings × methods at seed 0 first (a complete table early), then seed 1…"""
        most = max(self.seeds.values())
        return [Cell(setting, method, seed) for seed in range(most) for setting in self.settings
                for method in self.methods if seed < self.seeds[method]]

    def config(self, cell: Cell) -> TrainConfig:
        """The resolved config of `cell`: its preset ← the grid's overrides ← its method and seed."""
        return resolve_config(cell.setting, {**self.overrides, "method": cell.method, "seed": cell.seed})

    def identity(self) -> dict[str, Any]:
        """The overrides that change the numbers (all but where to run)."""
        return {k: v for k, v in self.overrides.items() if k not in RUN_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return {"settings": list(self.settings), "methods": list(self.methods), "seeds": dict(self.seeds),
                "overrides": _jsonable(self.overrides)}


def default_methods() -> list[str]:
    """Every registered method, plain CE first and MW-Net last (the paper's row order)."""
    names = list_methods()
    middle = [m for m in names if m not in ("ce", "mwnet")]
    return [m for m in ("ce",) if m in names] + middle + [m for m in ("mwnet",) if m in names]


def make_grid(settings: Sequence[str], methods: Sequence[str] | None = None, *, seeds: int = 1,
              seeds_for: Mapping[str, int] | None = None, overrides: Mapping[str, Any] | None = None) -> Grid:
    """A validated Grid: every setting a preset, every method registered, every cell's config valid.

    Args:
        settings: preset names, e.g. ["fmnist-uniform-40", "fmnist-uniform-60"].
        methods: method names [every registered method, see `default_methods`].
        seeds: seeds per method [1].
        seeds_for: per-method seed counts that replace `seeds`, e.g. {"ce": 3, "mwnet": 3}.
        overrides: TrainConfig fields applied to every cell (e.g. {"epochs": 2}); not method, seed or preset.
    Raises:
        ValueError: naming the first bad setting, method, seed count or override.
    """
    settings = tuple(settings)
    methods = tuple(default_methods() if methods is None else methods)
    if not settings:
        raise ValueError("give at least one setting (a preset name, see `mwnet train --list-presets`)")
    if not methods:
        raise ValueError("give at least one method (see `mwnet info`)")
    for name in settings:
        if name not in PRESETS:
            raise ValueError(f"unknown setting {name!r}: settings are preset names (see `mwnet train --list-presets`)")
    known = list_methods()
    for name in methods:
        if name not in known:
            raise ValueError(f"unknown method {name!r} (choose from {', '.join(known)})")
    for what, names in (("setting", settings), ("method", methods)):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{what} {repeated[0]!r} is given twice")
    counts = dict.fromkeys(methods, seeds)
    for name, count in (seeds_for or {}).items():
        if name not in methods:
            raise ValueError(f"seeds given for method {name!r}, which is not in the grid ({', '.join(methods)})")
        counts[name] = count
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"the number of seeds must be a positive integer, got {count!r} for {name}")
    overrides = dict(overrides or {})
    for key in GRID_FIELDS:
        if key in overrides:
            raise ValueError(f"{key} cannot be overridden: the grid sets it for each cell")
    grid = Grid(settings, methods, counts, overrides)
    for cell in grid.cells():
        grid.config(cell)  # every cell's config resolves (bad override values fail here, naming the field)
    return grid


def grid_from_record(out: str | Path, run_fields: Mapping[str, Any] | None = None) -> Grid:
    """The grid recorded in OUT/compare.json (to continue or tabulate it); `run_fields` replace device/data_dir."""
    path = Path(out) / GRID_FILE
    record = _read_json(path)
    try:
        overrides = {**record["overrides"], **(run_fields or {})}
        return make_grid(record["settings"], record["methods"], seeds_for=record["seeds"], overrides=overrides)
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"not a compare record (needs settings, methods, seeds, overrides): {path}") from None


def cell_status(run_dir: str | Path) -> Status:
    """done: summary.json exists; partial: a checkpoint to resume from; todo: anything else."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "checkpoint.pt").is_file() and (run_dir / "config.json").is_file():
        return "partial"
    return "todo"


def check_cells(grid: Grid, out: str | Path) -> None:
    """ValueError if a cell directory holds a run of another config (e.g. other --epochs), or OUT is not the grid's.

    Such a cell would otherwise be skipped or resumed silently and mix two protocols in one table.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out is not a directory: {out}")
    if (out / GRID_FILE).is_file():
        recorded = _read_json(out / GRID_FILE).get("overrides", {})
        recorded = {k: v for k, v in recorded.items() if k not in RUN_FIELDS}
        if recorded != _jsonable(grid.identity()):
            raise ValueError(f"{out} holds a grid run with the overrides {overrides_text(recorded)}, not "
                             f"{overrides_text(grid.identity())}: use another --out")
    for cell in grid.cells():
        config_file = cell.run_dir(out) / "config.json"
        if not config_file.is_file():
            continue
        difference = _config_difference(load_config(config_file), grid.config(cell))
        if difference:
            raise ValueError(f"cell {cell.name} does not belong to this grid ({difference} in {config_file}): "
                             f"use another --out")


def check_data(configs: Iterable[TrainConfig]) -> None:
    """Load each data set the cells use once (downloading it if needed), so a missing one fails before any cell."""
    from mwnet.data import load_dataset

    for dataset, data_dir in sorted({(c.dataset, c.data_dir) for c in configs}, key=str):
        load_dataset(dataset, data_dir=data_dir, verify=False)


# --------------------------------------------------------------------------------------------------------------
# Running the grid
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Task:
    """What a worker needs to run one cell (picklable)."""

    cell: Cell
    config: TrainConfig
    run_dir: Path
    resume: bool
    overwrite: bool
    epoch_lines: bool


def run_grid(grid: Grid, out: str | Path, *, jobs: int = 1, threads: int | None = None, command: str | None = None,
             epoch_lines: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Run every unfinished cell of `grid` into `out` (finished cells are skipped, interrupted ones resumed).

    results.md and results.json are rewritten after every finished cell, so a long grid has a table early.

    Args:
        jobs: cells trained at once, each in its own worker process [1: in this process].
        threads: torch threads per worker [the cores this process may use // jobs]; with jobs=1, None leaves
            torch's setting alone.
        command: the command line to record in compare.json and the report.
        epoch_lines: also log each cell's per-epoch lines (prefixed with the cell's name).
        log: receives one line per started / finished cell.
    Returns:
        The aggregated results (see `aggregate`).
    Raises:
        ValueError: a bad grid or directory (before anything is written), or cells that failed (after the others
            ran; the message names the first).
        GridInterrupted: Ctrl-C; run again to continue.
    """
    from mwnet.benchmark import available_cores

    log = log or (lambda _line: None)
    out = Path(out)
    if jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    if threads is None and jobs > 1:
        threads = max(1, available_cores() // jobs)
    check_cells(grid, out)
    tasks = []
    for cell in grid.cells():
        status = cell_status(cell.run_dir(out))
        if status == "done":
            continue
        run_dir = cell.run_dir(out)
        # A "todo" directory may hold the debris of a run killed before its first checkpoint: nothing to keep.
        tasks.append(_Task(cell, grid.config(cell), run_dir, resume=status == "partial",
                           overwrite=status == "todo" and holds_run(run_dir), epoch_lines=epoch_lines))
    check_data(t.config for t in tasks)

    # Everything is validated: from here on files are written.
    out.mkdir(parents=True, exist_ok=True)
    _record_grid(grid, out, command)
    total = len(grid.cells())
    log(f"{total} cells, {total - len(tasks)} finished, {len(tasks)} to run"
        + (f" ({jobs} at a time, {_count(threads, 'torch thread')} each)" if jobs > 1 else ""))
    failures: list[tuple[Cell, str]] = []
    interrupted: list[Cell] = []
    finished = 0

    def report(task: _Task, outcome: tuple[str, Any]) -> None:
        nonlocal finished
        kind, value = outcome
        if kind == "done":
            finished += 1
            log(f"[{finished}/{len(tasks)}] {task.cell.name}: best {value['best_test_acc']:.2f}%, last "
                f"{value['last_test_acc']:.2f}% ({value['train_seconds']:.0f} s)")
            write_results(grid, out, command=command)
        elif kind == "failed":
            failures.append((task.cell, value))
            log(f"{task.cell.name}: failed: {value}")
        else:
            interrupted.append(task.cell)
            log(f"{task.cell.name}: {value}")

    if jobs == 1:
        _run_here(tasks, threads, log, report)
    elif tasks:
        _run_pool(tasks, jobs, threads or 1, log, report)
    results = write_results(grid, out, command=command)
    if interrupted:  # a worker alone was sent SIGINT: its cell is resumable, the grid is not complete
        raise GridInterrupted(f"{len(interrupted)} cells were interrupted, first {interrupted[0].name}")
    if failures:
        cell, message = failures[0]
        raise ValueError(f"{len(failures)} of {len(tasks)} cells failed; first {cell.name}: {message}")
    return results


def _run_here(tasks: list[_Task], threads: int | None, log: Log, report: Callable) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    for task in tasks:
        log(f"{task.cell.name}: {'resuming' if task.resume else 'training'} -> {task.run_dir}")
        try:
            outcome = _run_task(task)
        except KeyboardInterrupt:  # outside the training loop (e.g. while loading data): nothing to save
            raise GridInterrupted(f"interrupted while starting {task.cell.name}") from None
        if outcome[0] == "interrupted":
            raise GridInterrupted(outcome[1])  # Ctrl-C reached this process: stop the whole grid
        report(task, outcome)


def _run_pool(tasks: list[_Task], jobs: int, threads: int, log: Log, report: Callable) -> None:
    # spawn, not fork: a forked torch (OpenMP thread pools, CUDA) is not safe to use in the child.
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                               initargs=(threads, stop))
    pending = {}
    try:
        for task in tasks:  # the pool takes them in submission order: the priority order
            pending[pool.submit(_run_task, task)] = task
        for task in tasks[:jobs]:
            log(f"{task.cell.name}: {'resuming' if task.resume else 'training'} -> {task.run_dir}")
        started = min(jobs, len(tasks))
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                task = pending.pop(future)
                report(task, future.result())
                if started < len(tasks):
                    nxt = tasks[started]
                    log(f"{nxt.cell.name}: {'resuming' if nxt.resume else 'training'} -> {nxt.run_dir}")
                    started += 1
    except KeyboardInterrupt:
        # The workers got the same SIGINT: running cells save a checkpoint and return; queued ones must not start.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for future, task in pending.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                outcome = future.result()
                if outcome[0] != "interrupted":
                    report(task, outcome)
        raise GridInterrupted("interrupted; running cells saved a checkpoint") from None
    except BrokenProcessPool:
        raise ValueError("a worker process died (out of memory?); run the same command again to resume "
                         "from the last checkpoints") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# Set once per worker process by its initializer: the main process's "stop" event (Ctrl-C).
_worker_stop: Any = None


def _init_worker(threads: int, stop: Any) -> None:
    import torch

    global _worker_stop
    _worker_stop = stop
    # Idle workers ignore Ctrl-C (the main process decides); `train` installs its own handler while it runs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _run_task(task: _Task) -> tuple[str, Any]:
    """("done", summary), ("failed", message) or ("interrupted", message).

    A cell that fails (a bad split, out of memory, a bug) does not stop the others: its error becomes one line
    (with the traceback on stderr where it was not a user's error), and the grid reports it at the end.
    """
    if _worker_stop is not None and _worker_stop.is_set():
        return "interrupted", "not started"
    prefix = f"[{task.cell.name}] "
    epoch_log = (lambda line: print(prefix + line, flush=True)) if task.epoch_lines else None
    try:
        summary = train(task.config, task.run_dir, resume=task.resume, overwrite=task.overwrite, progress=False,
                        log=epoch_log)
    except TrainingInterrupted as exc:  # its constructor does not survive pickling: pass the message on
        return "interrupted", str(exc)
    except (ValueError, FileNotFoundError) as exc:
        return "failed", _one_line(exc)
    except Exception as exc:
        traceback.print_exc()
        return "failed", f"{type(exc).__name__}: {_one_line(exc)}"
    return "done", summary


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _record_grid(grid: Grid, out: Path, command: str | None) -> None:
    path = out / GRID_FILE
    commands = _read_json(path).get("commands", []) if path.is_file() else []
    if command and command not in commands:
        commands.append(command)
    _write_atomic(path, json.dumps({**grid.to_dict(), "commands": commands}, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------------
# Aggregation and the report
# --------------------------------------------------------------------------------------------------------------


def summarize_values(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for fewer than two values) and n of `values`."""
    n = len(values)
    return {"n": n, "mean": statistics.fmean(values) if n else None,
            "std": statistics.stdev(values) if n > 1 else None, "values": list(values)}


def aggregate(grid: Grid, out: str | Path) -> dict[str, Any]:
    """Read every finished cell's summary.json into mean ± std tables per setting and method.

    Returns a dict with `cells` (one entry per cell: status and, when finished, its numbers), `results`
    [setting][method] → {seeds, seeds_done, best_test_acc, last_test_acc, weight_auroc} (each a
    `summarize_values` dict), `winners` [setting][metric] → the method(s) with the highest mean, and
    `learned_weights`: the methods whose weights vary from sample to sample (their weight AUROC is not 0.5).
    """
    out = Path(out)
    cells = []
    by_group: dict[tuple[str, str], list[dict]] = {}
    for cell in grid.cells():
        run_dir = cell.run_dir(out)
        entry: dict[str, Any] = {"setting": cell.setting, "method": cell.method, "seed": cell.seed,
                                 "dir": str(run_dir.relative_to(out)), "status": cell_status(run_dir)}
        if entry["status"] == "done":
            summary = _read_json(run_dir / "summary.json")
            for key in ("best_test_acc", "best_epoch", "last_test_acc", "weight_auroc", "epochs", "train_seconds",
                        "device", "torch_threads", "torch_version", "diverged"):
                entry[key] = summary.get(key)
            by_group.setdefault((cell.setting, cell.method), []).append(entry)
        cells.append(entry)

    results: dict[str, dict[str, Any]] = {}
    winners: dict[str, dict[str, list[str]]] = {}
    for setting in grid.settings:
        results[setting] = {}
        for method in grid.methods:
            done = sorted(by_group.get((setting, method), []), key=lambda e: e["seed"])
            row: dict[str, Any] = {"seeds": grid.seeds[method], "seeds_done": [e["seed"] for e in done]}
            for metric in (*METRICS, "weight_auroc"):
                row[metric] = summarize_values([e[metric] for e in done if e.get(metric) is not None])
            results[setting][method] = row
        winners[setting] = {metric: _argmax({m: r[metric]["mean"] for m, r in results[setting].items()})
                            for metric in METRICS}
    learned = [m for m in grid.methods
               if any(e["method"] == m and e.get("weight_auroc") not in (None, 0.5) for e in cells)]
    return {"settings": list(grid.settings), "methods": list(grid.methods), "seeds": dict(grid.seeds),
            "overrides": _jsonable(grid.overrides), "cells_total": len(cells),
            "cells_done": sum(e["status"] == "done" for e in cells), "results": results, "winners": winners,
            "learned_weights": learned, "cells": cells}


def write_results(grid: Grid, out: str | Path, *, command: str | None = None) -> dict[str, Any]:
    """Aggregate `out` and write results.json and results.md there (atomically); return the results dict."""
    import torch

    from mwnet import __version__
    from mwnet.benchmark import machine_info

    out = Path(out)
    recorded = _read_json(out / GRID_FILE).get("commands", []) if (out / GRID_FILE).is_file() else []
    results = aggregate(grid, out)
    info = machine_info("cuda" if torch.cuda.is_available() else "cpu", torch.get_num_threads())
    header = {
        "commands": recorded or ([command] if command else []),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {k: v for k, v in info.items() if k in ("cpu", "cores", "os", "python", "gpu")},
        "torch_version": torch.__version__,
        "mwnet_version": __version__,
    }
    results = {**header, **results}
    _write_atomic(out / RESULTS_JSON, json.dumps(rounded(results), indent=2) + "\n")
    _write_atomic(out / RESULTS_MD, format_markdown(results))
    return results


def format_markdown(results: Mapping[str, Any]) -> str:
    """results.md: provenance, then one table for best and one for last test accuracy (and weight AUROC)."""
    settings, methods = results["settings"], results["methods"]
    cells = results["cells"]
    done = [c for c in cells if c["status"] == "done"]
    devices = sorted({f"{c.get('device')} ({_count(c.get('torch_threads'), 'torch thread')})" for c in done})
    seconds = sum(c.get("train_seconds") or 0.0 for c in done)
    machine = results.get("machine", {})
    seeds = ", ".join(f"{m} {results['seeds'][m]}" for m in methods)
    lines = [
        f"# {_count(len(methods), 'method')} × {_count(len(settings), 'setting')}",
        "",
        "Written by `mwnet compare`. Each cell is one run directory `<setting>/<method>/seed<k>/` here.",
        "",
        *[f"- Command: `{c}`" for c in results.get("commands", [])],
        f"- Date: {results.get('date', '?')}; mwnet {results.get('mwnet_version', '?')}, torch "
        f"{results.get('torch_version', '?')}, Python {machine.get('python', '?')}",
        f"- Machine: {machine.get('cpu', '?')}; {machine.get('cores', '?')}; {machine.get('os', '?')}"
        + (f"; GPU {machine['gpu']}" if machine.get("gpu") else ""),
        f"- Cells: {results['cells_done']} of {results['cells_total']} finished"
        + (f", on {', '.join(devices)}; {_duration(seconds)} of training in total" if done else ""),
        f"- Seeds per method: {seeds}",
        f"- Overrides applied to every cell: {overrides_text(results['overrides'])}",
        "",
        "Mean ± sample standard deviation over the finished seeds (n); **bold**: the highest mean in the setting.",
        "",
        "## Best test accuracy (%)",
        "",
        *_table(results, "best_test_acc", bold=True),
        "",
        "## Last test accuracy (%)",
        "",
        "Test accuracy after the final epoch.",
        "",
        *_table(results, "last_test_acc", bold=True),
    ]
    learned = results.get("learned_weights", [])
    has_auroc = any(results["results"][s][m]["weight_auroc"]["n"] for s in settings for m in learned)
    if has_auroc:
        lines += ["", "## Weight AUROC", "",
                  "AUROC of the last epoch's sample weights as a detector of clean training samples (0.5 = chance; "
                  "only where the labels were corrupted), for the methods whose weights vary from sample to sample.",
                  "", *_table(results, "weight_auroc", bold=False, methods=learned, digits=3)]
    diverged = [c for c in done if c.get("diverged")]
    if diverged:
        lines += ["", "## Diverged cells", "",
                  "Training stopped on a non-finite loss; the last accuracy is that of the model it stopped with.", "",
                  *[f"- {c['dir']}: epoch {c['diverged']['epoch']}, iteration {c['diverged']['iteration']} "
                    f"({c['diverged']['error']})" for c in diverged]]
    missing = [c for c in cells if c["status"] != "done"]
    if missing:
        lines += ["", "## Missing cells", "",
                  *[f"- {c['dir']} ({'interrupted' if c['status'] == 'partial' else 'not run'})" for c in missing]]
    return "\n".join(lines) + "\n"


def _table(results: Mapping[str, Any], metric: str, *, bold: bool, methods: Sequence[str] | None = None,
           digits: int = 2) -> list[str]:
    settings = results["settings"]
    rows = [f"| method | {' | '.join(settings)} |", "|---|" + "---|" * len(settings)]
    for method in methods if methods is not None else results["methods"]:
        texts = []
        for setting in settings:
            row = results["results"][setting][method]
            text = format_cell(row[metric], row["seeds"], digits)
            if bold and method in results["winners"][setting][metric]:
                text = f"**{text}**"
            texts.append(text)
        rows.append(f"| {method} | {' | '.join(texts)} |")
    return rows


def format_cell(stats: Mapping[str, Any], expected: int, digits: int = 2) -> str:
    """"85.12 ± 0.34 (n=3)"; "85.12 (n=1)"; "85.12 ± 0.34 (n=2 of 3)" while seeds are missing; "missing"."""
    n = stats["n"]
    if n == 0:
        return "missing"
    text = f"{stats['mean']:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.{digits}f}"
    return f"{text} (n={n})" if n >= expected else f"{text} (n={n} of {expected})"


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------


def _argmax(means: Mapping[str, float | None]) -> list[str]:
    """The key(s) with the highest mean (all of them on a tie); [] when every mean is missing."""
    present = {k: v for k, v in means.items() if v is not None and math.isfinite(v)}
    if not present:
        return []
    top = max(present.values())
    return [k for k, v in present.items() if v == top]


def _config_difference(saved: TrainConfig, wanted: TrainConfig) -> str | None:
    """The first field where a saved run differs from the wanted config, ignoring where it ran and what the runner
    resolves (model "auto"; epochs where iterations decide them)."""
    a, b = config_to_dict(saved), config_to_dict(wanted)
    for f in dataclasses.fields(TrainConfig):
        key = f.name
        if key in (*RUN_FIELDS, "preset"):
            continue
        if (key == "model" and wanted.model == "auto") or (key == "epochs" and wanted.iterations is not None):
            continue
        if a[key] != b[key]:
            return f"{key} is {a[key]!r} there but {b[key]!r} here"
    return None


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def overrides_text(overrides: Mapping[str, Any]) -> str:
    """'epochs=2, lr=0.05' (values as JSON), or a note that there are none."""
    if not overrides:
        return "none (each setting's preset as is)"
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON file ({exc.msg} at line {exc.lineno}): {path}") from None
    if not isinstance(value, dict):
        raise ValueError(f"does not hold a JSON object: {path}")
    return value


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
