"""`mwnet compare` end to end (two real digits cells in two worker processes), --dry-run, --report-only, and every
bad flag as one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest

import mwnet.experiment.execution as execution
from cli_runner import run
from mwnet.experiment.config import config_to_dict
from mwnet.experiment.grid import Cell, make_grid

# Two cells of about a second each: scikit-learn's digits, a small MLP, one epoch.
TINY = ["--settings", "demo-digits", "--methods", "ce,mwnet", "--epochs", "1", "--device", "cpu",
        "--set", 'model_options={"hidden": [32]}', "--quiet"]


def test_compare_in_two_workers_then_continue_dry_run_and_report(tmp_path, capsys):
    out = tmp_path / "grid"
    code, stdout, stderr = run(["compare", *TINY, "--out", str(out), "--jobs", "2", "--threads", "1"],
                               capsys)
    assert code == 0, stderr
    assert stdout.splitlines()[0] == "2 cells, 0 finished, 2 to run (2 at a time, 1 torch thread each)"
    for method in ("ce", "mwnet"):
        summary = json.loads((out / "demo-digits" / method / "seed0" / "summary.json").read_text())
        assert summary["method"] == method and summary["epochs"] == 1 and summary["torch_threads"] == 1
    results = json.loads((out / "results.json").read_text())
    assert results["cells_done"] == 2 and results["overrides"]["epochs"] == 1
    best = {m: results["results"]["demo-digits"][m]["best_test_acc"]["mean"] for m in ("ce", "mwnet")}
    markdown = (out / "results.md").read_text()
    winner = max(best, key=best.get)
    assert f"| {winner} | **{best[winner]:.2f} (n=1)** |" in markdown
    assert "--epochs 1" in json.loads((out / "compare.json").read_text())["commands"][0]

    code, stdout, _ = run(["compare", "--out", str(out), "--dry-run"], capsys)
    assert code == 0 and stdout.splitlines()[0].startswith("2 cells in ") and "(2 done, 0 partial, 0 todo)" in stdout
    code, stdout, _ = run(["compare", "--out", str(out)], capsys)  # the recorded grid: nothing left to run
    assert code == 0 and stdout.splitlines()[0] == "2 cells, 2 finished, 0 to run"
    (out / "results.md").unlink()
    code, stdout, _ = run(["compare", "--out", str(out), "--report-only"], capsys)
    assert code == 0 and stdout.startswith("2 of 2 cells finished")
    again = (out / "results.md").read_text()
    assert again.split("## Best")[1] == markdown.split("## Best")[1]
    assert f"- Command: `mwnet compare --out {out}`" in again  # the continuation was recorded too


def test_dry_run_lists_status_in_run_order_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "grid"
    grid = make_grid(["demo-digits", "demo"], ["ce", "mwnet"], seeds_for={"ce": 2})
    (Cell("demo", "ce", 0).run_dir(out)).mkdir(parents=True)
    (Cell("demo", "ce", 0).run_dir(out) / "summary.json").write_text("{}")
    partial = Cell("demo-digits", "mwnet", 0).run_dir(out)
    partial.mkdir(parents=True)
    (partial / "checkpoint.pt").write_bytes(b"")
    (partial / "config.json").write_text(json.dumps(config_to_dict(grid.config(
        Cell("demo-digits", "mwnet", 0)))))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, stdout, _ = run(["compare", "--settings", "demo-digits,demo", "--methods", "ce,mwnet", "--seeds-for",
                           "ce=2", "--out", str(out), "--dry-run"], capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].startswith(f"6 cells in {out} (1 done, 1 partial, 4 todo); every cell: none")
    assert [line.split()[1:] for line in lines[1:]] == [
        ["demo-digits/ce/seed0", "todo"], ["demo-digits/mwnet/seed0", "partial"], ["demo/ce/seed0", "done"],
        ["demo/mwnet/seed0", "todo"], ["demo-digits/ce/seed1", "todo"], ["demo/ce/seed1", "todo"]]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


BAD = [
    (["--settings", "nope"], "unknown setting 'nope': settings are preset names"),
    (["--settings", "demo", "--methods", "ce,nope"], "unknown method 'nope'"),
    (["--settings", "demo", "--seeds", "0"], "the number of seeds must be a positive integer, got 0"),
    (["--settings", "demo", "--methods", "ce", "--seeds-for", "ce:3"], "--seeds-for must look like METHOD=K"),
    (["--settings", "demo", "--methods", "ce", "--seeds-for", "mwnet=3"], "seeds given for method 'mwnet'"),
    (["--settings", "demo", "--set", "seed=2"], "seed cannot be overridden"),
    (["--settings", "demo", "--set", "nope=2"], "unknown config field 'nope'"),
    (["--settings", "demo", "--set", "lr"], "--set must look like KEY=VALUE"),
    (["--settings", "demo", "--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["--settings", "demo", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--settings", "demo", "--jobs", "0"], "--jobs must be a positive integer, got 0"),
    (["--methods", "ce"], "--methods needs --settings"),
    (["--epochs", "2"], "--set / override flags needs --settings"),
    ([], "give --settings (no grid recorded in"),
    (["--settings", "demo", "--dry-run", "--report-only"], "give --dry-run or --report-only, not both"),
    (["--settings", "demo", "--report-only"], "no such directory"),
]


@pytest.mark.parametrize(("flags", "message"), BAD, ids=[" ".join(f) or "nothing" for f, _ in BAD])
def test_bad_flags_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "grid"
    code, stdout, stderr = run(["compare", *flags, "--out", str(out)], capsys)
    assert code == 2 and stdout == ""
    assert stderr.startswith("mwnet: error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert not out.exists()


def test_a_grid_directory_keeps_its_overrides(tmp_path, capsys, monkeypatch):
    def fake_train(config, out, **kwargs):
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config)))
        summary = {"best_test_acc": 90.0, "last_test_acc": 85.0, "train_seconds": 1.0}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(execution, "train", fake_train)
    out = tmp_path / "grid"
    code, _, stderr = run(["compare", "--settings", "demo-digits", "--methods", "ce", "--epochs", "2",
                           "--out", str(out)], capsys)
    assert code == 0, stderr
    before = (out / "results.json").read_text()
    code, _, stderr = run(["compare", "--settings", "demo-digits", "--methods", "ce,mwnet", "--epochs", "3",
                           "--out", str(out)], capsys)
    assert code == 2 and "holds a grid run with the overrides epochs=2, not epochs=3: use another --out" in stderr
    assert (out / "results.json").read_text() == before and not (out / "demo-digits" / "mwnet").exists()
