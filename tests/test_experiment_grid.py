"""The grid with a fake `train` (order, skipping, resuming, failures, interrupts) and its aggregation (mean /
sample std against hand computation, winners, the Markdown table)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import mwnet.experiment.execution as execution
from mwnet.experiment.aggregate import aggregate, write_results
from mwnet.experiment.config import config_to_dict
from mwnet.experiment.execution import GridInterrupted, run_grid
from mwnet.experiment.grid import Cell, grid_from_record, make_grid
from mwnet.experiment.manifest import record_files
from mwnet.experiment.markdown import format_cell, format_markdown
from mwnet.experiment.rundir import run_status
from mwnet.experiment.signals import TrainingInterrupted
from mwnet.system import available_cores

S1, S2 = "fmnist-uniform-40", "fmnist-uniform-60"


def write_cell(out: Path, cell: Cell, best: float, last: float, auroc: float | None = None, config=None) -> None:
    run_dir = cell.run_dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config_to_dict(config)))
    summary = {"method": cell.method, "seed": cell.seed, "best_test_acc": best, "last_test_acc": last,
               "weight_auroc": auroc, "best_epoch": 3, "epochs": 5, "train_seconds": 10.0, "device": "cpu",
               "torch_threads": 1}
    (run_dir / "summary.json").write_text(json.dumps(summary))


class FakeTrain:
    """Stands in for `train`: records each call and writes config.json + summary.json."""

    def __init__(self, fail: tuple[str, ...] = (), interrupt: str | None = None) -> None:
        self.calls: list[tuple[str, bool, bool]] = []
        self.fail, self.interrupt, self.crash = fail, interrupt, ()

    def __call__(self, config, out, *, resume=False, overwrite=False, progress=False, log=None):
        out = Path(out)
        cell = Cell(config.preset, config.method, config.seed)
        self.calls.append((cell.name, resume, overwrite))
        if cell.name in self.fail:
            raise ValueError(f"boom in {cell.name}")
        if cell.name in self.crash:
            raise RuntimeError("out of memory")
        if cell.name == self.interrupt:
            raise TrainingInterrupted(out, 1, 7)
        write_cell(out.parents[2], cell, 80.0 + config.seed, 70.0 + config.seed, None, config)
        return json.loads((out / "summary.json").read_text())


@pytest.fixture
def fake(monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(execution, "train", fake)
    monkeypatch.setattr(execution, "check_tasks", lambda tasks: list(tasks))
    return fake


def test_cells_run_all_methods_and_settings_at_seed_0_first():
    grid = make_grid([S1, S2], ["ce", "mwnet", "focal"], seeds=1, seeds_for={"ce": 3, "mwnet": 3})
    names = [c.name for c in grid.cells()]
    assert len(names) == 2 * (3 + 3 + 1)
    assert names[:6] == [f"{s}/{m}/seed0" for s in (S1, S2) for m in ("ce", "mwnet", "focal")]
    assert names[6:10] == [f"{s}/{m}/seed1" for s in (S1, S2) for m in ("ce", "mwnet")]
    assert names[10:] == [f"{s}/{m}/seed2" for s in (S1, S2) for m in ("ce", "mwnet")]
    assert Cell(S1, "ce", 2).run_dir("out") == Path("out") / S1 / "ce" / "seed2"
    config = make_grid([S1], ["ce"], overrides={"epochs": 2}).config(Cell(S1, "ce", 1))
    assert (config.method, config.seed, config.epochs, config.preset, config.noise) == ("ce", 1, 2, S1, "uniform:0.4")
    assert make_grid([S1]).methods[0] == "ce" and make_grid([S1]).methods[-1] == "mwnet"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"settings": ["nope"]}, "unknown setting 'nope'"),
    ({"methods": ["ce", "nope"]}, "unknown method 'nope'"),
    ({"methods": ["ce", "ce"]}, "method 'ce' is given twice"),
    ({"seeds": 0}, "number of seeds must be a positive integer, got 0 for ce"),
    ({"seeds_for": {"focal": 2}}, "seeds given for method 'focal', which is not in the grid"),
    ({"overrides": {"seed": 3}}, "seed cannot be overridden"),
    ({"overrides": {"epochs": 0}}, "epochs must be a positive integer, got 0"),
    ({"overrides": {"nope": 1}}, "unknown config field 'nope'"),
])
def test_bad_grids_are_refused(kwargs, message):
    args = {"settings": [S1], "methods": ["ce"], **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make_grid(args.pop("settings"), args.pop("methods"), **args)


def test_finished_cells_are_skipped_interrupted_ones_resumed_and_debris_replaced(tmp_path, fake):
    grid = make_grid([S1, S2], ["ce", "mwnet"], seeds=1, seeds_for={"mwnet": 2}, overrides={"epochs": 2})
    done, partial, debris = Cell(S1, "ce", 0), Cell(S1, "mwnet", 0), Cell(S2, "ce", 0)
    write_cell(tmp_path, done, 50.0, 40.0, config=grid.config(done))
    partial.run_dir(tmp_path).mkdir(parents=True)
    (partial.run_dir(tmp_path) / "config.json").write_text(json.dumps(config_to_dict(grid.config(partial))))
    (partial.run_dir(tmp_path) / "checkpoint.pt").write_bytes(b"")
    debris.run_dir(tmp_path).mkdir(parents=True)  # killed before its first checkpoint
    (debris.run_dir(tmp_path) / "config.json").write_text(json.dumps(config_to_dict(grid.config(debris))))
    record_files(debris.run_dir(tmp_path), ["config.json"])
    assert [run_status(c.run_dir(tmp_path)) for c in (done, partial, debris)] == ["done", "partial", "todo"]

    lines = []
    results = run_grid(grid, tmp_path, command="mwnet compare --test", log=lines.append)
    assert fake.calls == [(f"{S1}/mwnet/seed0", True, False), (f"{S2}/ce/seed0", False, True),
                          (f"{S2}/mwnet/seed0", False, False), (f"{S1}/mwnet/seed1", False, False),
                          (f"{S2}/mwnet/seed1", False, False)]
    assert lines[0] == "6 cells, 1 finished, 5 to run"
    assert results["cells_done"] == 6 and results["results"][S1]["ce"]["best_test_acc"]["values"] == [50.0]
    record = json.loads((tmp_path / "compare.json").read_text())
    assert record == {"settings": [S1, S2], "methods": ["ce", "mwnet"], "seeds": {"ce": 1, "mwnet": 2},
                      "overrides": {"epochs": 2}, "commands": ["mwnet compare --test"],
                      "run_options": {"jobs": 1, "threads": available_cores()}}
    assert "`mwnet compare --test`" in (tmp_path / "results.md").read_text()

    fake.calls.clear()  # a second run has nothing to do
    run_grid(grid, tmp_path, command="mwnet compare --again")
    assert fake.calls == []
    assert json.loads((tmp_path / "compare.json").read_text())["commands"] == ["mwnet compare --test",
                                                                              "mwnet compare --again"]
    assert grid_from_record(tmp_path).to_dict() == grid.to_dict()


def test_cells_of_another_protocol_are_refused_before_anything_is_written(tmp_path, fake):
    grid = make_grid([S1], ["ce"], overrides={"epochs": 2})
    cell = grid.cells()[0]
    write_cell(tmp_path, cell, 50.0, 40.0, config=make_grid([S1], ["ce"], overrides={"epochs": 3}).config(cell))
    with pytest.raises(ValueError, match=r"cell fmnist-uniform-40/ce/seed0 does not belong to this grid \(epochs is "
                                         r"3 there but 2 here"):
        run_grid(grid, tmp_path)
    assert fake.calls == [] and not (tmp_path / "compare.json").exists() and not (tmp_path / "results.md").exists()

    run_grid(make_grid([S1], ["ce"], overrides={"epochs": 3, "device": "cpu"}), tmp_path)
    # The record fixes the overrides of the directory (new cells too); where to run may change.
    run_grid(make_grid([S1], ["ce"], overrides={"epochs": 3}), tmp_path)
    with pytest.raises(ValueError, match="holds a grid run with the overrides epochs=3, not epochs=2"):
        run_grid(make_grid([S1], ["mwnet"], overrides={"epochs": 2}), tmp_path)


def test_a_missing_data_set_fails_before_anything_is_written(tmp_path, monkeypatch):
    def missing(tasks):
        raise FileNotFoundError("no fashion-mnist here")

    monkeypatch.setattr(execution, "check_tasks", missing)
    with pytest.raises(FileNotFoundError):
        run_grid(make_grid([S1], ["ce"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_cells_do_not_stop_the_others(tmp_path, fake, capsys):
    fake.fail, fake.crash = (f"{S1}/ce/seed0",), (f"{S1}/mwnet/seed0",)
    lines = []
    with pytest.raises(ValueError, match=f"2 of 3 cells failed; first {S1}/ce/seed0: boom in {S1}/ce/seed0"):
        run_grid(make_grid([S1], ["ce", "mwnet", "focal"]), tmp_path, log=lines.append)
    assert len(fake.calls) == 3 and f"{S1}/mwnet/seed0: failed: RuntimeError: out of memory" in lines
    assert "Traceback" in capsys.readouterr().err  # an unexpected error keeps its traceback
    results = json.loads((tmp_path / "results.json").read_text())
    assert [c["status"] for c in results["cells"]] == ["todo", "todo", "done"]


def test_ctrl_c_stops_the_grid_and_keeps_the_table(tmp_path, fake):
    fake.interrupt = f"{S1}/mwnet/seed0"
    with pytest.raises(GridInterrupted, match="checkpoint saved"):
        run_grid(make_grid([S1], ["ce", "mwnet", "focal"]), tmp_path)
    assert [c[0] for c in fake.calls] == [f"{S1}/ce/seed0", f"{S1}/mwnet/seed0"]  # focal never started
    markdown = (tmp_path / "results.md").read_text()
    assert "1 of 3 finished" in markdown and "- fmnist-uniform-40/focal/seed0 (not run)" in markdown


# --------------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------------

# (best, last, weight AUROC) per cell; mwnet/S2 lacks seed 2 and focal/S2 is missing.
VALUES = {
    (S1, "ce"): [(80.0, 60.0, 0.5), (82.0, 62.0, 0.5), (87.0, 58.0, 0.5)],
    (S1, "mwnet"): [(88.0, 85.0, 0.9), (89.0, 84.0, 0.92), (90.0, 86.0, 0.94)],
    (S1, "focal"): [(88.5, 87.0, 0.7)],
    (S2, "ce"): [(70.0, 40.0, 0.5), (71.0, 41.0, 0.5), (75.0, 44.0, 0.5)],
    (S2, "mwnet"): [(84.0, 80.0, 0.85), (86.0, 81.0, 0.87)],
}


@pytest.fixture
def filled(tmp_path):
    grid = make_grid([S1, S2], ["ce", "mwnet", "focal"], seeds=3, seeds_for={"focal": 1})
    for (setting, method), rows in VALUES.items():
        for seed, (best, last, auroc) in enumerate(rows):
            write_cell(tmp_path, Cell(setting, method, seed), best, last, auroc)
    return grid, tmp_path


def test_aggregate_matches_hand_computed_mean_and_sample_std(filled):
    grid, out = filled
    results = aggregate(grid, out)
    ce = results["results"][S1]["ce"]["best_test_acc"]
    # mean 83, deviations -3, -1, 4: sample variance (9 + 1 + 16) / 2 = 13
    assert ce["n"] == 3 and ce["mean"] == pytest.approx(83.0) and ce["std"] == pytest.approx(math.sqrt(13.0))
    last = results["results"][S2]["mwnet"]["last_test_acc"]
    assert last["n"] == 2 and last["mean"] == pytest.approx(80.5) and last["std"] == pytest.approx(math.sqrt(0.5))
    assert results["results"][S2]["mwnet"]["seeds_done"] == [0, 1]
    focal = results["results"][S1]["focal"]["best_test_acc"]
    assert focal == {"n": 1, "mean": 88.5, "std": None, "values": [88.5]}
    assert results["results"][S2]["focal"]["best_test_acc"]["n"] == 0
    assert results["winners"] == {S1: {"best_test_acc": ["mwnet"], "last_test_acc": ["focal"]},
                                  S2: {"best_test_acc": ["mwnet"], "last_test_acc": ["mwnet"]}}
    assert results["learned_weights"] == ["mwnet", "focal"]  # ce's constant weights score exactly 0.5
    assert results["cells_total"] == 14 and results["cells_done"] == 12
    assert results["results"][S1]["mwnet"]["weight_auroc"]["mean"] == pytest.approx(0.92)


def test_format_cell():
    assert format_cell({"n": 3, "mean": 83.0, "std": math.sqrt(13.0)}, 3) == "83.00 ± 3.61 (n=3)"
    assert format_cell({"n": 1, "mean": 88.5, "std": None}, 1) == "88.50 (n=1)"
    assert format_cell({"n": 2, "mean": 85.0, "std": 1.41421}, 3) == "85.00 ± 1.41 (n=2 of 3)"
    assert format_cell({"n": 0, "mean": None, "std": None}, 1) == "missing"


def test_markdown_bolds_each_settings_winner_and_shows_missing_cells(filled):
    grid, out = filled
    write_results(grid, out, command="mwnet compare --settings x")
    markdown = (out / "results.md").read_text()
    sections = markdown.split("## ")
    best = [line for line in sections[1].splitlines() if line.startswith("| ")]
    last = [line for line in sections[2].splitlines() if line.startswith("| ")]
    auroc = [line for line in sections[3].splitlines() if line.startswith("| ")]
    assert best[0] == f"| method | {S1} | {S2} |"
    assert best[1] == "| ce | 83.00 ± 3.61 (n=3) | 72.00 ± 2.65 (n=3) |"
    assert best[2] == "| mwnet | **89.00 ± 1.00 (n=3)** | **85.00 ± 1.41 (n=2 of 3)** |"
    assert best[3] == "| focal | 88.50 (n=1) | missing |"
    assert last[2] == "| mwnet | 85.00 ± 1.00 (n=3) | **80.50 ± 0.71 (n=2 of 3)** |"
    assert last[3] == "| focal | **87.00 (n=1)** | missing |"
    assert [line.split(" |")[0] for line in auroc[1:]] == ["| mwnet", "| focal"]
    assert auroc[1] == "| mwnet | 0.920 ± 0.020 (n=3) | 0.860 ± 0.014 (n=2 of 3) |"
    assert "- fmnist-uniform-60/mwnet/seed2 (not run)" in markdown
    assert "- Command: `mwnet compare --settings x`" in markdown and "12 of 14 finished" in markdown
    data = json.loads((out / "results.json").read_text())
    assert data["results"][S1]["ce"]["best_test_acc"]["std"] == pytest.approx(math.sqrt(13.0), rel=1e-5)
    assert data["torch_version"] and data["machine"]["cpu"] and len(data["cells"]) == 14
    assert {c["status"] for c in data["cells"]} == {"done", "todo"}


def test_markdown_lists_diverged_cells(filled):
    grid, out = filled
    summary_path = Cell(S1, "focal", 0).run_dir(out) / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["diverged"] = {"epoch": 4, "iteration": 321, "error": "non-finite training loss on 100 of 100 samples"}
    summary_path.write_text(json.dumps(summary))
    markdown = format_markdown(aggregate(grid, out))
    section = markdown.split("## Diverged cells")[1].split("## ")[0]
    assert "- fmnist-uniform-40/focal/seed0: epoch 4, iteration 321 (non-finite training loss" in section
    assert markdown.count("epoch 4, iteration 321") == 1
