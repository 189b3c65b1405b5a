"""A grid of methods × settings × seeds in one directory (the paper's Tables 1 and 2): what it is and where it lives.

    grid = make_grid(["fmnist-uniform-40", "fmnist-uniform-60"], ["ce", "mwnet", "focal"], seeds=1,
                     seeds_for={"ce": 3, "mwnet": 3}, overrides={"epochs": 2})

A setting is a preset name; a cell is one run directory OUT/<setting>/<method>/seed<k>/. OUT/compare.json records
the grid (settings, methods, seeds, the overrides applied to every cell) and every command that ran cells, so that
the same command, or `mwnet compare --out OUT` alone, continues it (`mwnet.experiment.execution.run_grid`), with
the recorded torch thread count, so that resumed cells compute what an uninterrupted grid would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mwnet.experiment.config import RUN_FIELDS, TrainConfig, config_difference, load_config, resolve_config
from mwnet.experiment.files import read_json_object, write_json
from mwnet.experiment.presets import PRESETS
from mwnet.methods import list_methods
from mwnet.methods.options import POSITIVE_INT

GRID_FILE = "compare.json"
# The grid decides these fields of every cell; they cannot be overridden for all cells at once.
GRID_FIELDS = ("method", "seed", "preset")


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
                "overrides": jsonable(self.overrides)}


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
        if not POSITIVE_INT.holds(count):
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
    record = read_json_object(path)
    try:
        overrides = {**record["overrides"], **(run_fields or {})}
        return make_grid(record["settings"], record["methods"], seeds_for=record["seeds"], overrides=overrides)
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"not a compare record (needs settings, methods, seeds, overrides): {path}") from None


def recorded_commands(out: str | Path) -> list[str]:
    """The commands that ran cells of the grid in OUT, as compare.json records them ([] before the first)."""
    path = Path(out) / GRID_FILE
    return read_json_object(path).get("commands", []) if path.is_file() else []


def record_grid(grid: Grid, out: str | Path, command: str | None, run_options: Mapping[str, int] | None = None) -> None:
    """Write OUT/compare.json: the grid, every command that ran it (`command` appended when new) and the last
    `run_options` (jobs, threads: how cells ran, which a continuation restores)."""
    commands = recorded_commands(out)
    if command and command not in commands:
        commands.append(command)
    record = {**grid.to_dict(), "commands": commands}
    if run_options:
        record["run_options"] = dict(run_options)
    write_json(Path(out) / GRID_FILE, record)


def recorded_run_options(out: str | Path) -> dict[str, int]:
    """The jobs and threads compare.json records for the grid in OUT ({} before the first run); ValueError for a
    value that is not a positive integer."""
    path = Path(out) / GRID_FILE
    options = read_json_object(path).get("run_options", {}) if path.is_file() else {}
    if not isinstance(options, dict):
        raise ValueError(f"run_options must be an object in {path}")
    for key in ("jobs", "threads"):
        if key in options:
            POSITIVE_INT.require(options[key], f"run_options.{key} in {path}")
    return {k: options[k] for k in ("jobs", "threads") if k in options}


def run_difference(run_dir: Path, config: TrainConfig) -> str | None:
    """How the run in `run_dir` differs from `config` ("epochs is 3 there but 2 here"), or None when it is the
    same run or no run (no config.json)."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        return None
    difference = config_difference(load_config(config_file), config)
    return None if difference is None else "{} is {!r} there but {!r} here".format(*difference)


def check_cells(grid: Grid, out: str | Path) -> None:
    """ValueError if a cell directory holds a run of another config (e.g. other --epochs), or OUT is not the grid's.

    Such a cell would otherwise be skipped or resumed silently and mix two protocols in one table.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out is not a directory: {out}")
    if (out / GRID_FILE).is_file():
        recorded = read_json_object(out / GRID_FILE).get("overrides", {})
        recorded = {k: v for k, v in recorded.items() if k not in RUN_FIELDS}
        if recorded != jsonable(grid.identity()):
            raise ValueError(f"{out} holds a grid run with the overrides {overrides_text(recorded)}, not "
                             f"{overrides_text(grid.identity())}: use another --out")
    for cell in grid.cells():
        difference = run_difference(cell.run_dir(out), grid.config(cell))
        if difference:
            raise ValueError(f"cell {cell.name} does not belong to this grid ({difference} in "
                             f"{cell.run_dir(out) / 'config.json'}): use another --out")


def overrides_text(overrides: Mapping[str, Any]) -> str:
    """'epochs=2, lr=0.05' (values as JSON), or a note that there are none."""
    if not overrides:
        return "none (each setting's preset as is)"
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())


def jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples as lists)."""
    return json.loads(json.dumps(value))
