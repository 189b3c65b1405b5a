"""Aggregating a grid directory: every finished cell's summary.json into mean ± std per setting and method.

    results = aggregate(grid, "runs/cmp")         # mean ± std of best and last test accuracy per method and setting
    write_results(grid, "runs/cmp")               # the same, written to results.json and results.md
"""

from __future__ import annotations

import datetime
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mwnet.experiment.files import read_json_object, write_atomic, write_json
from mwnet.experiment.grid import Grid, jsonable, recorded_commands
from mwnet.experiment.markdown import format_markdown
from mwnet.experiment.metrics import rounded
from mwnet.experiment.rundir import run_status

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"
METRICS = ("best_test_acc", "last_test_acc")


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
                                 "dir": str(run_dir.relative_to(out)), "status": run_status(run_dir)}
        if entry["status"] == "done":
            summary = read_json_object(run_dir / "summary.json")
            for key in ("best_test_acc", "best_epoch", "last_test_acc", "weight_auroc", "epochs", "train_seconds",
                        "device", "torch_threads", "torch_version", "diverged"):
                entry[key] = summary.get(key)
            _check_summary(entry, run_dir / "summary.json")
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
            "overrides": jsonable(grid.overrides), "cells_total": len(cells),
            "cells_done": sum(e["status"] == "done" for e in cells), "results": results, "winners": winners,
            "learned_weights": learned, "cells": cells}


def write_results(grid: Grid, out: str | Path, *, command: str | None = None) -> dict[str, Any]:
    """Aggregate `out` and write results.json and results.md there (atomically); return the results dict."""
    import torch

    from mwnet import __version__
    from mwnet.system import machine_info

    out = Path(out)
    recorded = recorded_commands(out)
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
    write_json(out / RESULTS_JSON, rounded(results))
    write_atomic(out / RESULTS_MD, format_markdown(results))
    return results


_NUMBERS = ("best_test_acc", "best_epoch", "last_test_acc", "weight_auroc", "epochs", "train_seconds", "torch_threads")


def _check_summary(entry: Mapping[str, Any], path: Path) -> None:
    """ValueError naming the file and the field when a summary.json value cannot be tabulated (a hand-edited or
    foreign file): numbers must be finite numbers or null, `diverged` null or {epoch, iteration, error}."""
    for key in _NUMBERS:
        value = entry[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"{path}: {key} must be a number or null, got {value!r}")
    diverged = entry["diverged"]
    if diverged is not None and not (isinstance(diverged, dict) and {"epoch", "iteration", "error"} <= set(diverged)):
        raise ValueError(f"{path}: diverged must be null or an object with epoch, iteration and error, got "
                         f"{diverged!r}")


def _argmax(means: Mapping[str, float | None]) -> list[str]:
    """The key(s) with the highest mean (all of them on a tie); [] when every mean is missing."""
    present = {k: v for k, v in means.items() if v is not None and math.isfinite(v)}
    if not present:
        return []
    top = max(present.values())
    return [k for k, v in present.items() if v == top]
