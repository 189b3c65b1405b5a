"""`mwnet bench speed`: writes the report and JSON, rejects bad values before writing, loads the benchmark lazily."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mwnet.cli import build_parser, main


def test_cli_writes_report_and_json(tmp_path, capsys):
    out, js = tmp_path / "bench" / "SPEED.md", tmp_path / "speed.json"
    code = main(["bench", "speed", "--models", "cnn", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                 "--methods", "ce,forward,last-layer", "--device", "cpu", "--threads", "1", "--no-memory",
                 "--output", str(out), "--json", str(js), "--quiet"])
    assert code == 0
    text = out.read_text()
    expected = (f"mwnet bench speed --models cnn --batch-size 4 --steps 1 --warmup 0 --interval 5 --device cpu "
                f"--precision fp32 --threads 1 --seed 0 --profile-model none --methods ce,forward,last-layer "
                f"--no-memory --output {out} --json {js}")
    assert expected in text
    assert capsys.readouterr().out == text
    reference = tmp_path / "reference.txt"
    reference.write_text("")  # a file made the ordinary way: the umask's permissions, not mkstemp's private 0600
    assert out.stat().st_mode & 0o777 == js.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
    assert sorted(p.name for p in out.parent.iterdir()) == ["SPEED.md"]  # no temporary file left behind
    data = json.loads(js.read_text())
    rows = data["results"][0]["methods"]
    assert [r["method"] for r in rows] == ["ce", "forward", "last-layer"]
    assert rows[0]["peak_memory_mib"] is None and data["config"]["batch_size"] == 4


def test_the_command_line_carries_the_allocator_settings(tmp_path, monkeypatch):
    """CPU timings depend on how host memory is allocated, so the reproducing command sets it as it was."""
    from mwnet.system import ALLOCATOR_VARIABLES

    for name in ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=4294967296")
    out = tmp_path / "SPEED.md"
    assert main(["bench", "speed", "--models", "cnn", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                 "--methods", "ce", "--device", "cpu", "--threads", "1", "--no-memory", "--output", str(out),
                 "--quiet"]) == 0
    text = out.read_text()
    assert "\nGLIBC_TUNABLES=glibc.malloc.trim_threshold=4294967296 mwnet bench speed --models cnn " in text
    assert "- host memory allocator: GLIBC_TUNABLES=glibc.malloc.trim_threshold=4294967296\n" in text


@pytest.mark.parametrize("flags, message", [
    (["--models", "nope"], "unknown benchmark model 'nope'"),
    (["--models", "cnn", "--steps", "0"], "steps must be an integer >= 1, got 0"),
    (["--models", "cnn", "--methods", "ce,fast"], "unknown method 'fast'"),
    (["--models", "cnn", "--profile-model", "resnet32"], "--profile-model resnet32 is not among"),
    (["--models", "cnn", "--threads", "0"], "threads must be a positive integer, got 0"),
    (["--models", "cnn", "--device", "cpu", "--precision", "fp16"], "precision 'fp16' needs CUDA"),
])
def test_cli_rejects_bad_values_before_writing(tmp_path, capsys, flags, message):
    out = tmp_path / "SPEED.md"
    assert main(["bench", "speed", *flags, "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mwnet: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_rejects_output_directory_and_missing_cuda(tmp_path, capsys):
    assert main(["bench", "speed", "--models", "cnn", "--output", str(tmp_path)]) == 2
    assert "--output is a directory" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "speed", "--device", "cuda", "--output", str(tmp_path / "x.md")]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not (tmp_path / "x.md").exists()


def test_help_names_the_benchmarks_defaults(capsys):
    from mwnet.bench import ALL_METHODS, DEFAULT_MODELS, GPU_MODELS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "speed", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"[{','.join(DEFAULT_MODELS)}, plus {','.join(GPU_MODELS)} on CUDA]" in help_text
    assert f"[all: {','.join(ALL_METHODS)}]" in help_text.replace(", ", ",").replace("- ", "-")


def test_library_and_parser_load_no_benchmark_module():
    code = ("import sys, mwnet, mwnet.experiment, mwnet.methods, mwnet.data, mwnet.models, mwnet.cli\n"
            "mwnet.cli.build_parser()\n"
            "print(sorted(m for m in sys.modules if m.startswith('mwnet.bench') or m == 'mwnet.benchmark'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
