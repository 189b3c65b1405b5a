"""Running a grid's cells, resumably: skip finished runs, resume interrupted ones, in this process or in workers.

    run_grid(grid, "runs/cmp", jobs=2)           # also writes results.md / results.json after every cell

A run directory is finished iff its summary.json exists; one with a checkpoint but no summary was interrupted and
resumes from the checkpoint (`mwnet.experiment.rundir.run_status`). `plan_run` turns that into what `train` must
do, for the grid's cells and for `mwnet demo`'s two runs alike.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwnet.experiment.aggregate import RESULTS_JSON, RESULTS_MD, write_results
from mwnet.experiment.config import TrainConfig
from mwnet.experiment.files import first_line
from mwnet.experiment.grid import GRID_FILE, Grid, check_cells, record_grid, recorded_run_options
from mwnet.experiment.lock import RunLock
from mwnet.experiment.manifest import holds_run, remove_stale_temps
from mwnet.experiment.markdown import count
from mwnet.experiment.rundir import run_status
from mwnet.experiment.runner import train
from mwnet.experiment.signals import TrainingInterrupted
from mwnet.experiment.workers import die_with_parent, sigint_deferred, sigint_ignored_while_starting
from mwnet.methods.options import POSITIVE_INT

Log = Callable[[str], None]


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C while the grid ran: finished cells are kept, running ones saved a checkpoint; run again to continue."""


@dataclass
class Task:
    """What `train` must do to finish one run (picklable, for the worker processes)."""

    name: str
    config: TrainConfig
    run_dir: Path
    resume: bool = False
    overwrite: bool = False


def plan_run(name: str, config: TrainConfig, run_dir: Path, *, restart: bool = False) -> Task | None:
    """The Task that finishes the run of `config` in `run_dir`, or None when it is finished already.

    An interrupted run is resumed; a directory with the debris of a run killed before its first checkpoint is
    overwritten. `restart` replaces whatever the directory holds (a finished run too). The caller checks first
    that the directory holds no run of another config (`grid.run_difference`).
    """
    status = run_status(run_dir)
    if restart or status == "todo":
        return Task(name, config, run_dir, overwrite=holds_run(run_dir))
    return Task(name, config, run_dir, resume=True) if status == "partial" else None


def check_tasks(tasks: Iterable[Task]) -> None:
    """Check every task's config as `train` will (`mwnet.experiment.build.check_buildable`: the device, the split,
    the model's options and size, the method's options), loading each data set once (downloading it if needed),
    so that a grid with one impossible cell fails before any file is written. The error names the cell."""
    from mwnet.experiment.build import check_buildable, load_run_dataset

    datasets: dict[tuple, Any] = {}
    for task in tasks:
        c = task.config
        key = (c.dataset, c.data_dir, c.labels_csv, c.trusted_csv)
        if key not in datasets:
            datasets[key] = load_run_dataset(c, verify=False)
        try:
            check_buildable(c, datasets[key])
        except ValueError as exc:
            raise ValueError(f"cell {task.name}: {first_line(exc)}") from None


def run_grid(grid: Grid, out: str | Path, *, jobs: int | None = None, threads: int | None = None,
             command: str | None = None, epoch_lines: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Run every unfinished cell of `grid` into `out` (finished cells are skipped, interrupted ones resumed).

    results.md and results.json are rewritten after every finished cell, so a long grid has a table early. `out`
    is locked for the duration (`mwnet.experiment.lock`), and each cell's run directory by `train`.

    Args:
        jobs: cells trained at once, each in its own worker process [as recorded in OUT/compare.json, else 1: in
            this process].
        threads: torch threads per cell [as recorded in OUT/compare.json, else the cores this process may use //
            jobs]. Recorded in compare.json and restored by a continuation: CPU results depend on the thread
            count (the order of floating-point sums), so every cell of a grid runs with the same one.
        command: the command line to record in compare.json and the report.
        epoch_lines: also log each cell's per-epoch lines (prefixed with the cell's name).
        log: receives one line per started / finished cell.
    Returns:
        The aggregated results (see `mwnet.experiment.aggregate.aggregate`).
    Raises:
        ValueError: a bad grid, directory or cell config (before anything is written), or cells that failed
            (after the others ran; the message names the first).
        RunDirectoryLocked: another process is running this grid (a ValueError).
        GridInterrupted: Ctrl-C; run again to continue.
    """
    for name, value in (("jobs", jobs), ("threads", threads)):
        if value is not None:
            POSITIVE_INT.require(value, name)
    with RunLock(out):
        return _run_grid_locked(grid, Path(out), jobs, threads, command, epoch_lines, log or (lambda _line: None))


def _run_grid_locked(grid: Grid, out: Path, jobs: int | None, threads: int | None, command: str | None,
                     epoch_lines: bool, log: Log) -> dict[str, Any]:
    from mwnet.system import available_cores

    check_cells(grid, out)
    recorded = recorded_run_options(out)
    restored = [f"--{k} {recorded[k]}" for k, v in (("jobs", jobs), ("threads", threads))
                if v is None and k in recorded]
    jobs = jobs if jobs is not None else recorded.get("jobs", 1)
    threads = threads if threads is not None else recorded.get("threads", max(1, available_cores() // jobs))
    tasks = [task for cell in grid.cells()
             if (task := plan_run(cell.name, grid.config(cell), cell.run_dir(out))) is not None]
    check_tasks(tasks)

    # Everything is validated: from here on files are written.
    remove_stale_temps(out, (GRID_FILE, RESULTS_JSON, RESULTS_MD))
    record_grid(grid, out, command, {"jobs": jobs, "threads": threads})
    total = len(grid.cells())
    log(f"{total} cells, {total - len(tasks)} finished, {len(tasks)} to run"
        + (f" ({jobs} at a time, {count(threads, 'torch thread')} each)" if jobs > 1 and tasks else ""))
    if restored and tasks:
        log(f"continuing with {' '.join(restored)}, as recorded in {out / GRID_FILE}")
    failures: list[tuple[str, str]] = []
    interrupted: list[str] = []
    finished = 0

    def report(task: Task, outcome: tuple[str, Any]) -> None:
        nonlocal finished
        kind, value = outcome
        if kind == "done":
            finished += 1
            log(f"[{finished}/{len(tasks)}] {task.name}: best {value['best_test_acc']:.2f}%, last "
                f"{value['last_test_acc']:.2f}% ({value['train_seconds']:.0f} s)")
            write_results(grid, out, command=command)
        elif kind == "failed":
            failures.append((task.name, value))
            log(f"{task.name}: failed: {value}")
        else:
            interrupted.append(task.name)
            log(f"{task.name}: {value}")

    if jobs == 1:
        _run_here(tasks, threads, epoch_lines, log, report)
    elif tasks:
        _run_pool(tasks, jobs, threads, epoch_lines, log, report)
    results = write_results(grid, out, command=command)
    if interrupted:  # a worker alone was sent SIGINT: its cell is resumable, the grid is not complete
        raise GridInterrupted(f"{len(interrupted)} cells were interrupted, first {interrupted[0]}")
    if failures:
        name, message = failures[0]
        raise ValueError(f"{len(failures)} of {len(tasks)} cells failed; first {name}: {message}")
    return results


def _starting(task: Task) -> str:
    return f"{task.name}: {'resuming' if task.resume else 'training'} -> {task.run_dir}"


def _run_here(tasks: list[Task], threads: int, epoch_lines: bool, log: Log, report: Callable) -> None:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for task in tasks:
            log(_starting(task))
            try:
                outcome = _run_task(task, epoch_lines)
            except KeyboardInterrupt:  # outside the training loop (e.g. while loading data): nothing to save
                raise GridInterrupted(f"interrupted while starting {task.name}") from None
            if outcome[0] == "interrupted":
                raise GridInterrupted(outcome[1])  # Ctrl-C reached this process: stop the whole grid
            report(task, outcome)
    finally:
        torch.set_num_threads(previous)


def _run_pool(tasks: list[Task], jobs: int, threads: int, epoch_lines: bool, log: Log, report: Callable) -> None:
    # spawn, not fork: a forked torch (OpenMP thread pools, CUDA) is not safe to use in the child.
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                               initargs=(threads, stop, os.getpid()))
    pending = {}
    try:
        with sigint_ignored_while_starting():  # submitting starts the workers
            for task in tasks:  # the pool takes them in submission order: the priority order
                pending[pool.submit(_run_task, task, epoch_lines)] = task
        for task in tasks[:jobs]:
            log(_starting(task))
        started = min(jobs, len(tasks))
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                task = pending.pop(future)
                report(task, future.result())
                if started < len(tasks):
                    log(_starting(tasks[started]))
                    started += 1
    except KeyboardInterrupt:
        # The workers got the same SIGINT: running cells save a checkpoint and return; queued ones must not start,
        # and workers still starting up return as soon as they have started (the stop event). A second Ctrl-C
        # stops the training workers at once, and the main process once they have all ended.
        stop.set()
        with sigint_deferred():
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


def _init_worker(threads: int, stop: Any, parent_pid: int) -> None:
    import torch

    die_with_parent(parent_pid)  # a killed `mwnet compare` leaves no worker training on
    global _worker_stop
    _worker_stop = stop
    # Idle workers ignore Ctrl-C (the main process decides); `train` installs its own handler while it runs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _run_task(task: Task, epoch_lines: bool) -> tuple[str, Any]:
    """("done", summary), ("failed", message) or ("interrupted", message).

    A cell that fails (a bad split, out of memory, a bug) does not stop the others: its error becomes one line
    (with the traceback on stderr where it was not a user's error), and the grid reports it at the end.
    """
    if _worker_stop is not None and _worker_stop.is_set():
        return "interrupted", "not started"
    prefix = f"[{task.name}] "
    epoch_log = (lambda line: print(prefix + line, flush=True)) if epoch_lines else None
    try:
        summary = train(task.config, task.run_dir, resume=task.resume, overwrite=task.overwrite, progress=False,
                        log=epoch_log)
    except TrainingInterrupted as exc:  # its constructor does not survive pickling: pass the message on
        return "interrupted", str(exc)
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint on disk resumes the cell
        return "interrupted", "aborted by a second Ctrl-C; its last checkpoint resumes it"
    except (ValueError, FileNotFoundError) as exc:
        return "failed", first_line(exc)
    except Exception as exc:
        traceback.print_exc()
        return "failed", f"{type(exc).__name__}: {first_line(exc)}"
    return "done", summary
