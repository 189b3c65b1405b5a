"""The speed benchmark: every timed step really is the step it claims to be; the report has its structure.

Timings are never asserted (they depend on the machine); what the benchmark times is, against independent
references: the official yardstick and the mwnet exact modes give the same update in float64, the CE step is a
hand-written Nesterov SGD step, the peak-memory probe sees the bytes a function allocates.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

from mwnet import MetaReweighter, MetaWeightNet, models
from mwnet.benchmark import (
    CLASSIFIER_SGD,
    METHODS,
    ModelResult,
    PhaseClock,
    Runner,
    SpeedConfig,
    build_runners,
    cpu_snapshot,
    evaluate_targets,
    format_markdown,
    forward_mode_phases,
    official_step,
    others_cpu_share,
    peak_memory,
    random_batches,
    run_speed_benchmark,
    summarize,
    time_runners,
)
from mwnet.cli import main

DTYPE = torch.float64


def tiny_model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return models.create("cnn", in_channels=1, input_size=8, channels=(4,), hidden=8).to(DTYPE)


def tiny_batches():
    return random_batches(1, 8, 12, 10, seed=0, dtype=DTYPE)


def optimizers(model, wnet, wlr=0.5):
    opt = torch.optim.SGD(model.parameters(), **CLASSIFIER_SGD)
    wopt = torch.optim.SGD(wnet.parameters(), lr=wlr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return opt, wopt


def assert_states_close(a: torch.nn.Module, b: torch.nn.Module, tol: float) -> None:
    for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        if ta.is_floating_point():
            assert (ta - tb).abs().max().item() < tol, ka
        else:
            assert torch.equal(ta, tb), ka


def wnet_grads(wnet):
    return torch.cat([p.grad.flatten() for p in wnet.parameters()])


# ---- the timed steps are the steps they claim to be ---------------------------------------------------------


@pytest.mark.parametrize("normalize", ["mean", "sum"])
@pytest.mark.parametrize("mode", ["double-backward", "forward"])
def test_official_yardstick_equals_metareweighter_update(mode, normalize):
    x, y, xm, ym = tiny_batches()
    model = tiny_model()
    torch.manual_seed(1)
    wnet = MetaWeightNet(hidden=16).to(DTYPE)
    ref_model, ref_wnet = copy.deepcopy(model), copy.deepcopy(wnet)
    opt, wopt = optimizers(model, wnet)
    ref_opt, ref_wopt = optimizers(ref_model, ref_wnet)
    rw = MetaReweighter(model, opt, wnet, wopt, normalize=normalize, hypergradient=mode)
    for _ in range(2):
        meta_loss = rw.step(x, y, xm, ym).meta_loss
        ref_meta_loss = official_step(ref_model, ref_opt, ref_wnet, ref_wopt, x, y, xm, ym, normalize=normalize)
        assert abs(meta_loss - ref_meta_loss) < 1e-12
    hyper = wnet_grads(wnet)
    assert hyper.abs().max() > 1e-6  # a hypergradient that is not trivially zero
    torch.testing.assert_close(hyper, wnet_grads(ref_wnet), rtol=1e-9, atol=1e-12)
    assert_states_close(wnet, ref_wnet, 1e-10)
    assert_states_close(model, ref_model, 1e-10)  # parameters and batch-norm statistics


def test_forward_mode_phases_reenact_the_default_step():
    x, y, xm, ym = tiny_batches()
    model = tiny_model()
    torch.manual_seed(1)
    wnet = MetaWeightNet(hidden=16).to(DTYPE)
    ref_model, ref_wnet = copy.deepcopy(model), copy.deepcopy(wnet)
    opt, wopt = optimizers(model, wnet)
    ref_opt, ref_wopt = optimizers(ref_model, ref_wnet)
    rw = MetaReweighter(ref_model, ref_opt, ref_wnet, ref_wopt)
    clock = PhaseClock()
    for _ in range(2):
        meta_loss = forward_mode_phases(model, opt, wnet, wopt, x, y, xm, ym, clock=clock)
        assert abs(meta_loss - rw.step(x, y, xm, ym).meta_loss) < 1e-12
    torch.testing.assert_close(wnet_grads(wnet), wnet_grads(ref_wnet), rtol=1e-9, atol=1e-12)
    assert_states_close(wnet, ref_wnet, 1e-10)
    assert_states_close(model, ref_model, 1e-10)
    assert list(clock.totals) == [
        "first forward (train batch)", "weight-net forward", "virtual backward (ŵ)", "meta forward + backward at ŵ",
        "dual (forward-mode) pass, train batch", "weight-net backward + step", "real backward + optimizer step"]
    assert all(seconds > 0 for seconds in clock.totals.values())


def test_every_runner_performs_its_step():
    batches = x, y, _, _ = tiny_batches()
    model = tiny_model()
    runners = build_runners(model, batches, methods=METHODS, interval=3)
    assert list(runners) == list(METHODS)
    theta0 = torch.cat([p.detach().flatten() for p in runners["official"].weight_net.parameters()])
    for runner in runners.values():
        assert runner.model is not model  # every method on its own copy
        runner.step()

    # CE: one Nesterov SGD step with weight decay from zero momentum, p ← p − lr (1 + μ) (g + λ p), by hand.
    grads = torch.autograd.grad(F.cross_entropy(model.train()(x), y), list(model.parameters()))
    lr, mu, wd = CLASSIFIER_SGD["lr"], CLASSIFIER_SGD["momentum"], CLASSIFIER_SGD["weight_decay"]
    for p, g, q in zip(model.parameters(), grads, runners["ce"].model.parameters()):
        torch.testing.assert_close(q.detach(), p.detach() - lr * (1 + mu) * (g + wd * p.detach()), rtol=1e-9,
                                   atol=1e-12)

    # The exact rows agree with the yardstick; the approximate ones move Θ in nearly the same direction.
    official = runners["official"]
    for method in ("forward", "double-backward"):
        torch.testing.assert_close(wnet_grads(runners[method].weight_net), wnet_grads(official.weight_net),
                                   rtol=1e-9, atol=1e-13)
        assert_states_close(runners[method].model, official.model, 1e-10)
    fd = wnet_grads(runners["finite-difference"].weight_net)
    exact = wnet_grads(official.weight_net)
    assert (fd - exact).norm() < 1e-4 * exact.norm()
    last = wnet_grads(runners["last-layer"].weight_net)
    assert last.norm() > 0 and not torch.allclose(last, exact)

    # Every meta method moved Θ and the model; the interval row ran a whole cycle of 3 iterations, one meta.
    for method in METHODS[1:]:
        theta = torch.cat([p.detach().flatten() for p in runners[method].weight_net.parameters()])
        assert not torch.equal(theta, theta0), method
    for runner in runners.values():
        assert not torch.equal(runner.model.classifier.weight, model.classifier.weight), runner.method
    interval = runners["interval"]
    assert interval.calls == 3 and interval.reweighter.iteration == 3
    assert interval.reweighter.meta_interval == 3
    assert [runners[m].reweighter.iteration for m in ("forward", "last-layer")] == [1, 1]


def test_time_runners_interleaves_in_rotated_rounds():
    log: list[str] = []

    def runner(name: str, calls: int = 1) -> Runner:
        return Runner(name, torch.nn.Linear(1, 1), None, None, None, lambda: log.append(name), calls)  # type: ignore[arg-type]

    times = time_runners({"a": runner("a"), "b": runner("b"), "c": runner("c", calls=4)}, steps=3, warmup=1)
    assert log == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_peak_memory_counts_live_tensor_bytes():
    n = 250_000  # float32: 1e6 bytes

    def together():
        a = torch.ones(n)
        b = torch.ones(n)
        return float(a[0] + b[0])

    def one_after_another():
        for _ in range(3):
            a = torch.ones(n)
            del a

    assert 2_000_000 <= peak_memory(together) < 2_010_000
    assert 1_000_000 <= peak_memory(one_after_another) < 1_010_000


def test_others_cpu_share_subtracts_own_time():
    cores = os.cpu_count() or 1
    # 10 s of wall time; the machine was busy 10·cores·0.75 CPU-seconds, 10·cores·0.25 of them ours.
    before, after = (0.0, 100.0, 5.0), (10.0, 100.0 + 7.5 * cores, 5.0 + 2.5 * cores)
    assert others_cpu_share(before, after) == pytest.approx(0.5)
    assert others_cpu_share(None, after) is None
    assert others_cpu_share(after, after) is None
    snapshot = cpu_snapshot()
    assert snapshot is None or len(snapshot) == 3


# ---- the report ----------------------------------------------------------------------------------------------


def fake_result(model: str, ratios: dict[str, float], ce_ms: float = 100.0) -> ModelResult:
    times = {m: [ce_ms * r / 1e3] * 3 for m, r in ratios.items()}
    return summarize(model, torch.nn.Linear(2, 2), (3, 32, 32), times, {}, interval=5)


def test_targets_are_computed_from_the_numbers():
    met = fake_result("resnet32", {"ce": 1.0, "official": 3.3, "forward": 2.15, "last-layer": 1.3, "interval": 1.24})
    missed = fake_result("cnn", {"ce": 1.0, "official": 2.9, "forward": 2.25, "last-layer": 1.26})
    checks = evaluate_targets([met, missed])
    assert [(c.model, c.met) for c in checks] == [
        ("resnet32", True), ("resnet32", True), ("resnet32", True),  # 2.15 ≤ 2.2, 3.3/2.15 ≥ 1.5, 1.24 ≤ 1.25
        ("cnn", False), ("cnn", False), ("cnn", False)]  # 2.25 > 2.2, 2.9/2.25 < 1.5, 1.26 > 1.25
    assert checks[1].value == pytest.approx(3.3 / 2.15)
    assert checks[2].value == pytest.approx(1.24)  # the faster of last-layer and interval
    assert checks[5].value == pytest.approx(1.26)
    row = met.row("forward")
    assert row.ratio_to_ce == pytest.approx(2.15) and row.median_ms == pytest.approx(215.0)
    assert met.row("ce").ratio_to_ce == 1.0 and met.parameters == 6


def test_report_structure_on_a_tiny_run():
    config = SpeedConfig(models=("cnn",), batch_size=4, steps=2, warmup=1, interval=2, profile_model="cnn",
                         profile_steps=1, threads=1)
    threads = torch.get_num_threads()
    report = run_speed_benchmark(config, command="mwnet bench speed --test")
    assert torch.get_num_threads() == threads  # restored
    (result,) = report.results
    assert [r.method for r in result.methods] == list(METHODS)
    assert all(len(r.times_ms) == 2 and r.median_ms > 0 and r.peak_memory_mib > 0 for r in result.methods)
    assert result.row("ce").ratio_to_ce == 1.0
    assert [c.target for c in report.targets] == ["exact default ≤ 2.2× CE", "official ÷ mwnet exact ≥ 1.5",
                                                  "last-layer or interval ≤ 1.25× CE"]
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
        "| mwnet double-backward", "| mwnet finite-difference", "| mwnet last-layer",
        "| mwnet meta_interval=2 (forward)", "| mwnet last-layer, meta_interval=2"]
    assert rows[0].split(" | ")[5] == "1.00"
    assert all(len(r.split(" | ")) == 7 for r in rows)
    assert "mwnet bench speed --test" in text and report.machine["cpu"] in text
    assert "## Targets" in text and "## Where the time goes: mwnet default (forward mode), cnn" in text
    assert ("Other processes used" in text) == (result.others_cpu is not None)
    assert "functional_call" in text  # the yardstick's one departure from the original is stated
    json.dumps(report.to_dict())


# ---- the command line -----------------------------------------------------------------------------------------


def test_cli_writes_report_and_json(tmp_path, capsys):
    out, js = tmp_path / "bench" / "SPEED.md", tmp_path / "speed.json"
    code = main(["bench", "speed", "--models", "cnn", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                 "--methods", "ce,forward,last-layer", "--device", "cpu", "--threads", "1", "--no-memory",
                 "--output", str(out), "--json", str(js), "--quiet"])
    assert code == 0
    text = out.read_text()
    expected = (f"mwnet bench speed --models cnn --batch-size 4 --steps 1 --warmup 0 --interval 5 --device cpu "
                f"--threads 1 --seed 0 --profile-model none --methods ce,forward,last-layer --no-memory "
                f"--output {out} --json {js}")
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


@pytest.mark.parametrize("flags, message", [
    (["--models", "nope"], "unknown benchmark model 'nope'"),
    (["--models", "cnn", "--steps", "0"], "steps must be an integer >= 1, got 0"),
    (["--models", "cnn", "--methods", "ce,fast"], "unknown method 'fast'"),
    (["--models", "cnn", "--profile-model", "resnet32"], "--profile-model resnet32 is not among"),
    (["--models", "cnn", "--threads", "0"], "threads must be a positive integer, got 0"),
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
