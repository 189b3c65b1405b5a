"""Running a grid's cells, resumably: skip finished runs, resume interrupted ones, in this process or in workers.

    run_grid(grid, "runs/cmp", jobs=2)           # also writes results.md / results.json after every cell

A run directory is finished iff its summary.json exists; one with a checkpoint but no summary was interrupted and
resumes from the checkpoint (`mwnet.experiment.rundir.run_status`). `plan_run` turns that into what `train` must
do, for the grid's cells and for `mwnet demo`'s two runs alike.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwnet.experiment.aggregate import write_results
from mwnet.experiment.config import TrainConfig
from mwnet.experiment.files import first_line
from mwnet.experiment.grid import Grid, check_cells, record_grid
from mwnet.experiment.markdown import count
from mwnet.experiment.rundir import holds_run, run_status
from mwnet.experiment.runner import train
from mwnet.experiment.signals import TrainingInterrupted
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


def check_data(configs: Iterable[TrainConfig]) -> None:
    """Load each data set the cells use once (downloading it if needed), so a missing one fails before any cell."""
    from mwnet.data import load_dataset

    for dataset, data_dir in sorted({(c.dataset, c.data_dir) for c in configs}, key=str):
        load_dataset(dataset, data_dir=data_dir, verify=False)


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
        The aggregated results (see `mwnet.experiment.aggregate.aggregate`).
    Raises:
        ValueError: a bad grid or directory (before anything is written), or cells that failed (after the others
            ran; the message names the first).
        GridInterrupted: Ctrl-C; run again to continue.
    """
    from mwnet.system import available_cores

    log = log or (lambda _line: None)
    out = Path(out)
    POSITIVE_INT.require(jobs, "jobs")
    if threads is not None:
        POSITIVE_INT.require(threads, "threads")
    if threads is None and jobs > 1:
        threads = max(1, available_cores() // jobs)
    check_cells(grid, out)
    tasks = [task for cell in grid.cells()
             if (task := plan_run(cell.name, grid.config(cell), cell.run_dir(out))) is not None]
    check_data(t.config for t in tasks)

    # Everything is validated: from here on files are written.
    out.mkdir(parents=True, exist_ok=True)
    record_grid(grid, out, command)
    total = len(grid.cells())
    log(f"{total} cells, {total - len(tasks)} finished, {len(tasks)} to run"
        + (f" ({jobs} at a time, {count(threads, 'torch thread')} each)" if jobs > 1 else ""))
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
        _run_pool(tasks, jobs, threads or 1, epoch_lines, log, report)
    results = write_results(grid, out, command=command)
    if interrupted:  # a worker alone was sent SIGINT: its cell is resumable, the grid is not complete
        raise GridInterrupted(f"{len(interrupted)} cells were interrupted, first {interrupted[0]}")
    if failures:
        name, message = failures[0]
        raise ValueError(f"{len(failures)} of {len(tasks)} cells failed; first {name}: {message}")
    return results


def _starting(task: Task) -> str:
    return f"{task.name}: {'resuming' if task.resume else 'training'} -> {task.run_dir}"


def _run_here(tasks: list[Task], threads: int | None, epoch_lines: bool, log: Log, report: Callable) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    for task in tasks:
        log(_starting(task))
        try:
            outcome = _run_task(task, epoch_lines)
        except KeyboardInterrupt:  # outside the training loop (e.g. while loading data): nothing to save
            raise GridInterrupted(f"interrupted while starting {task.name}") from None
        if outcome[0] == "interrupted":
            raise GridInterrupted(outcome[1])  # Ctrl-C reached this process: stop the whole grid
        report(task, outcome)


def _run_pool(tasks: list[Task], jobs: int, threads: int, epoch_lines: bool, log: Log, report: Callable) -> None:
    # spawn, not fork: a forked torch (OpenMP thread pools, CUDA) is not safe to use in the child.
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                               initargs=(threads, stop))
    pending = {}
    try:
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
    except (ValueError, FileNotFoundError) as exc:
        return "failed", first_line(exc)
    except Exception as exc:
        traceback.print_exc()
        return "failed", f"{type(exc).__name__}: {first_line(exc)}"
    return "done", summary
