"""The speed report: summaries computed from the numbers, and the structure of a tiny real run's Markdown."""

from __future__ import annotations

import json

import pytest
import torch

from mwnet.bench import METHODS, SpeedConfig, format_markdown, run_speed_benchmark
from mwnet.bench.report import ModelResult, PhaseProfile, SpeedReport, summarize, template_blocks
from mwnet.step import STEP_PHASES


def fake_result(model: str, ratios: dict[str, float], ce_ms: float = 100.0) -> ModelResult:
    times = {m: [ce_ms * r / 1e3] * 3 for m, r in ratios.items()}
    return summarize(model, torch.nn.Linear(2, 2), (3, 32, 32), times, {}, interval=5)


def test_summary_is_computed_from_the_numbers():
    result = fake_result("resnet32", {"ce": 1.0, "official": 3.3, "forward": 2.15, "last-layer": 1.3,
                                      "interval": 1.24})
    assert [r.method for r in result.methods] == ["ce", "official", "forward", "last-layer", "interval"]
    row = result.row("forward")
    assert row.ratio_to_ce == pytest.approx(2.15) and row.median_ms == pytest.approx(215.0)
    assert result.row("interval").ratio_to_ce == pytest.approx(1.24)
    assert result.row("official").median_ms / row.median_ms == pytest.approx(3.3 / 2.15)
    assert result.row("ce").ratio_to_ce == 1.0 and result.parameters == 6
    assert result.row("double-backward") is None


def test_template_has_every_block_the_report_fills():
    assert set(template_blocks()) == {"header", "peers", "precision-cpu", "precision-cuda", "precision-autocast",
                                      "memory-cpu", "memory-cuda", "others-cpu", "phases", "measure-cpu",
                                      "measure-cuda", "top-ops"}


def test_report_structure_on_a_tiny_run():
    config = SpeedConfig(models=("cnn",), methods=METHODS, batch_size=4, steps=2, warmup=1, interval=2,
                         profile_model="cnn", profile_steps=1, threads=1)  # the peers: test_bench_peers.py
    threads = torch.get_num_threads()
    report = run_speed_benchmark(config, command="mwnet bench speed --test")
    assert torch.get_num_threads() == threads  # restored
    (result,) = report.results
    assert [r.method for r in result.methods] == list(METHODS)
    assert all(len(r.times_ms) == 2 and r.median_ms > 0 and r.peak_memory_mib > 0 for r in result.methods)
    assert result.row("ce").ratio_to_ce == 1.0
    assert [p.method for p in report.profiles] == ["forward", "official"]
    top_ops = report.profiles[0].top_ops
    assert len(top_ops) == 8 and all(ms > 0 and 0 < share <= 1 for _, ms, share in top_ops)
    assert [share for *_, share in top_ops] == sorted((share for *_, share in top_ops), reverse=True)
    assert report.machine["threads"] == "1" and report.machine["torch"] == torch.__version__

    text = format_markdown(report)
    lines = text.splitlines()
    header = "| method | hypergradient | ms/step (median) | IQR (ms) | min (ms) | × CE | peak memory (MiB) |"
    start = lines.index(header)
    rows = lines[start + 2:start + 2 + len(METHODS)]
    assert [r.split(" | ")[0] for r in rows] == [
        "| plain CE training", "| official algorithm (yardstick)", "| mwnet forward (default)",
        "| mwnet forward, full dual pass", "| mwnet double-backward", "| mwnet finite-difference", "| mwnet last-layer",
        "| mwnet meta_interval=2 (forward)", "| mwnet last-layer, meta_interval=2"]
    assert rows[0].split(" | ")[5] == "1.00"
    assert all(len(r.split(" | ")) == 7 for r in rows)
    assert "mwnet bench speed --test" in text and report.machine["cpu"] in text
    assert "## Where the time goes: mwnet default (forward mode), cnn" in text
    assert "## Where the time goes: official algorithm, cnn" in text
    assert ("Other processes used" in text) == (result.others_cpu is not None)
    assert "functional_call" in text  # the yardstick's one departure from the original is stated
    assert "SGD (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4)" in text  # from CLASSIFIER_SGD, not prose
    assert "SGD (lr 1e-3, momentum 0.9, Nesterov, weight decay 5e-4)" in text  # from WEIGHT_NET_SGD
    assert "$" not in text and "<!--" not in text  # every placeholder filled, no template comment leaked
    assert "no data loading in the timed region; float32." in text and "Peer rows" not in text

    # The default mode's phase table lists the real step's marks, in order, and sums its rows.
    start = lines.index("| phase (mark) | ms | share |")
    phase_rows = lines[start + 2:start + 2 + len(STEP_PHASES)]
    assert [r.split(" | ")[0] for r in phase_rows] == [f"| `{p}`" for p in STEP_PHASES]
    total = float(lines[start + 2 + len(STEP_PHASES)].split(" | ")[1].strip("*"))
    assert total == pytest.approx(sum(ms for _, ms in report.profiles[0].phases), abs=0.06)
    json.dumps(report.to_dict())


def test_cuda_report_states_its_float32_mode_and_cuda_measurements():
    """What a GPU run's report says, checked without a GPU: the card, TF32 off, CUDA memory and kernel times."""
    config = SpeedConfig(models=("resnet32",), device="cuda", profile_model="resnet32")
    machine = {"cpu": "some CPU", "cores": "16 cores", "torch": torch.__version__, "threads": "16", "python": "3.11",
               "os": "Linux", "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"}
    profile = PhaseProfile("forward", "resnet32", 5, [("mwnet.forward", 1.5), ("mwnet.real_update", 0.5)], 2.5,
                           [("aten::mm", 0.5, 0.25)])
    report = SpeedReport(config, machine, "mwnet bench speed --device cuda", "today",
                         [fake_result("resnet32", {"ce": 1.0, "forward": 2.0})], [profile])
    text = format_markdown(report)
    assert "GPU NVIDIA H100 80GB HBM3" in text and ", cuda\n" in text
    assert "float32 with TF32 off for matmuls and cuDNN convolutions" in text
    assert "torch.cuda.max_memory_allocated" in text and "GPU time of the kernels" in text
    assert "self device time per step" in text
    assert "$" not in text and "<!--" not in text


def test_autocast_report_says_what_each_row_runs_in_half_precision():
    config = SpeedConfig(models=("cnn",), precision="bf16")
    machine = {"cpu": "some CPU", "cores": "2 cores", "torch": torch.__version__, "threads": "2", "python": "3.11",
               "os": "Linux", "device": "cpu"}
    report = SpeedReport(config, machine, "mwnet bench speed --precision bf16", "today",
                         [fake_result("cnn", {"ce": 1.0, "forward": 2.0})], [])
    text = format_markdown(report)
    assert "bf16 autocast (`torch.autocast(dtype=torch.bfloat16)`) over the classifier's forwards" in text
    assert 'MetaReweighter(precision="bf16")' in text and "GradScaler" not in text
    assert "batch 100 + meta 100, cpu, bf16" in text
    assert "$" not in text and "<!--" not in text
