"""The step under torch.distributed (gloo, 2 CPU processes) equals one process on the concatenated batches.

One spawn runs every case (spawning costs seconds); each rank saves its states, and the test compares them with
a single-process reference built here. Shards are uneven on purpose (5 + 7 training, 3 + 5 meta samples), so a
wrong weighting of the ranks' meta losses or normalisers shows.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import assert_states_close, make_mlp
from mwnet import MetaReweighter, MetaWeightNet, NonFiniteLossError
from mwnet.distributed import RankDivergedError, RankFailedError
from mwnet.hypergradients import EXACT_HYPERGRADIENTS, HYPERGRADIENTS
from mwnet.methods import MethodContext, create_method

DTYPE = torch.float64
TRAIN_SPLIT, META_SPLIT = [5, 7], [3, 5]
STEPS = 3

CASES: dict[str, dict] = {
    **{f"{mode}-{norm}": {"hypergradient": mode, "normalize": norm}
       for mode in HYPERGRADIENTS for norm in ("sum", "mean")},
    "interval": {"hypergradient": "forward", "normalize": "sum", "meta_interval": 2},
    "ddp-forward-sum": {"hypergradient": "forward", "normalize": "sum", "ddp": True},
    "ddp-double-backward-mean": {"hypergradient": "double-backward", "normalize": "mean", "ddp": True},
    "batch-norm": {"hypergradient": "forward", "normalize": "sum", "batch_norm": True},
}


def make_model(batch_norm: bool = False) -> nn.Module:
    if not batch_norm:
        return make_mlp(5, 16, 3, seed=0)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3)).to(DTYPE)


def make_batches(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x, xm = torch.randn(12, 5, generator=g, dtype=DTYPE), torch.randn(8, 5, generator=g, dtype=DTYPE)
    return x, torch.randint(0, 3, (12,), generator=g), xm, torch.randint(0, 3, (8,), generator=g)


def shard(tensor: torch.Tensor, split: list[int], rank: int) -> torch.Tensor:
    return tensor.split(split)[rank]


def make_reweighter(model: nn.Module, options: dict) -> tuple[MetaReweighter, nn.Module, nn.Module]:
    torch.manual_seed(1)
    wnet = MetaWeightNet(hidden=(7,)).to(DTYPE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    wopt = torch.optim.SGD(wnet.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    kwargs = {k: v for k, v in options.items() if k not in ("ddp", "batch_norm")}
    return MetaReweighter(model, opt, wnet, wopt, **kwargs), model, wnet


class PerShard(nn.Module):
    """One-process reference for batch norm under DDP: each rank's shard normalised with its own statistics."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = TRAIN_SPLIT if x.shape[0] == sum(TRAIN_SPLIT) else META_SPLIT
        return torch.cat([self.inner(part) for part in x.split(split)])


def run_case(options: dict, rank: int | None) -> dict:
    """STEPS steps of one case; rank None is the one-process reference on the concatenated batches."""
    inner = make_model(options.get("batch_norm", False))
    model: nn.Module = inner
    if rank is None and options.get("batch_norm"):
        model = PerShard(inner)
    elif rank is not None and options.get("ddp"):
        model = nn.parallel.DistributedDataParallel(inner)
    rw, _, wnet = make_reweighter(model, options)
    record: dict = {"weights": [], "losses": [], "meta_loss": [], "loss": [], "traffic": []}
    for step in range(STEPS):
        x, y, xm, ym = make_batches(step)
        if rank is not None:
            x, y = shard(x, TRAIN_SPLIT, rank), shard(y, TRAIN_SPLIT, rank)
            xm, ym = shard(xm, META_SPLIT, rank), shard(ym, META_SPLIT, rank)
        before = rw.traffic.collectives, rw.traffic.bytes
        result = rw.step(x, y, xm, ym)
        record["traffic"].append((rw.traffic.collectives - before[0], rw.traffic.bytes - before[1]))
        for key in ("weights", "losses"):
            record[key].append(getattr(result, key))
        record["meta_loss"].append(result.meta_loss)
        record["loss"].append(result.loss)
    record["model"] = copy.deepcopy(inner.state_dict())
    record["wnet"] = copy.deepcopy(wnet.state_dict())
    return record


def l2rw_case(rank: int | None) -> dict:
    model = make_mlp(5, 16, 3, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = create_method("l2rw", model, opt, MethodContext(num_classes=3, class_counts=(4, 4, 4)))
    weights = []
    for step in range(STEPS):
        x, y, xm, ym = make_batches(step)
        if rank is not None:
            x, y = shard(x, TRAIN_SPLIT, rank), shard(y, TRAIN_SPLIT, rank)
            xm, ym = shard(xm, META_SPLIT, rank), shard(ym, META_SPLIT, rank)
        weights.append(method.step(x, y, xm, ym).weights)
    return {"model": copy.deepcopy(model.state_dict()), "weights": weights}


def supervised_case(name: str, rank: int | None) -> dict:
    """A baseline method's step (supervised_step: CE; focal's weights differentiated with the loss) on shards."""
    model = make_model(batch_norm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    inner = model
    if rank is None:
        model = PerShard(model)
    method = create_method(name, model, opt, MethodContext(num_classes=3, class_counts=(4, 4, 4)))
    results = []
    for step in range(STEPS):
        x, y, _, _ = make_batches(step)
        if rank is not None:
            x, y = shard(x, TRAIN_SPLIT, rank), shard(y, TRAIN_SPLIT, rank)
        results.append(method.step(x, y))
    return {"model": copy.deepcopy(inner.state_dict()), "weights": [r.weights for r in results],
            "loss": [r.loss for r in results]}


def outcome_of(step) -> str:
    try:
        step()
    except RankDivergedError:  # checked first: it is also a RankFailedError and a NonFiniteLossError
        return "another rank diverged"
    except NonFiniteLossError:
        return "non-finite"
    except RankFailedError:
        return "other rank failed"
    except ValueError:
        return "bad input"
    return "stepped"


def failure_case(rank: int) -> dict:
    """Rank 1 gets a NaN input: both ranks refuse the step, change nothing, and the next step works on both; a
    label out of range on rank 1 is refused on both likewise."""
    rw, model, wnet = make_reweighter(make_mlp(5, 16, 3, seed=0), {})
    x, y, xm, ym = make_batches(0)
    rw.step(shard(x, TRAIN_SPLIT, rank), shard(y, TRAIN_SPLIT, rank), shard(xm, META_SPLIT, rank),
            shard(ym, META_SPLIT, rank))
    before = copy.deepcopy((model.state_dict(), wnet.state_dict(), rw.optimizer.state_dict()))
    x, y, xm, ym = make_batches(1)
    x_rank = shard(x, TRAIN_SPLIT, rank).clone()
    if rank == 1:
        x_rank[0, 0] = float("nan")
    outcome = outcome_of(lambda: rw.step(x_rank, shard(y, TRAIN_SPLIT, rank), shard(xm, META_SPLIT, rank),
                                         shard(ym, META_SPLIT, rank)))
    y_rank = shard(y, TRAIN_SPLIT, rank).clone()
    if rank == 1:
        y_rank[0] = 3  # three classes
    bad_label = outcome_of(lambda: rw.step(shard(x, TRAIN_SPLIT, rank), y_rank, shard(xm, META_SPLIT, rank),
                                           shard(ym, META_SPLIT, rank)))
    after = (model.state_dict(), wnet.state_dict(), rw.optimizer.state_dict())
    unchanged = all(torch.equal(a, b) for a, b in zip(before[0].values(), after[0].values())) and all(
        torch.equal(a, b) for a, b in zip(before[1].values(), after[1].values()))
    rw.step(shard(x, TRAIN_SPLIT, rank), shard(y, TRAIN_SPLIT, rank), shard(xm, META_SPLIT, rank),
            shard(ym, META_SPLIT, rank))
    sync_bn = nn.Sequential(nn.Linear(5, 4), nn.SyncBatchNorm(4), nn.Linear(4, 3)).to(DTYPE)
    refused = ""
    try:
        make_reweighter(sync_bn, {})[0].step(shard(x, TRAIN_SPLIT, rank), shard(y, TRAIN_SPLIT, rank),
                                            shard(xm, META_SPLIT, rank), shard(ym, META_SPLIT, rank))
    except ValueError as exc:
        refused = str(exc)
    return {"outcome": outcome, "bad_label": bad_label, "unchanged": unchanged, "refused": refused}


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {name: run_case(options, rank) for name, options in CASES.items()}
        results["l2rw"] = l2rw_case(rank)
        results["ce"], results["focal"] = supervised_case("ce", rank), supervised_case("focal", rank)
        results["failure"] = failure_case(rank)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("distributed")
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process_on_the_concatenated_batches(ranks, case):
    reference = run_case(CASES[case], None)
    tol = 1e-10 if CASES[case]["hypergradient"] in EXACT_HYPERGRADIENTS else 1e-9
    for rank, got in enumerate(ranks):
        result = got[case]
        assert_states_close(result["wnet"], reference["wnet"], tol)
        if CASES[case].get("batch_norm"):  # parameters as the per-rank-statistics reference; buffers: rank 0's
            params = {k: v for k, v in result["model"].items() if "running" not in k and "num_batches" not in k}
            expected = {k.removeprefix("inner."): v for k, v in reference["model"].items() if k in params}
            assert_states_close(params, expected, tol)
            assert_states_close(result["model"], ranks[0][case]["model"], 0.0)
        else:
            assert_states_close(result["model"], reference["model"], tol)
        for step in range(STEPS):
            torch.testing.assert_close(result["weights"][step], reference["weights"][step].split(TRAIN_SPLIT)[rank],
                                       rtol=0, atol=tol)
            torch.testing.assert_close(result["losses"][step], reference["losses"][step].split(TRAIN_SPLIT)[rank],
                                       rtol=0, atol=tol)
            assert abs(result["loss"][step] - reference["loss"][step]) < tol
            m, r = result["meta_loss"][step], reference["meta_loss"][step]
            assert (m != m and r != r) or abs(m - r) < tol  # nan on both when Θ was not updated


def test_communication_is_bucketed(ranks):
    """A handful of collectives per step, carrying about three copies of the parameters (docs/distributed.md)."""
    parameters = sum(p.numel() for p in make_mlp(5, 16, 3).parameters())
    for case in ("forward-sum", "forward-mean", "double-backward-sum"):
        collectives, sent = ranks[0][case]["traffic"][0]
        assert collectives <= 7, (case, collectives)
        assert 3 * parameters * 8 <= sent <= 3 * parameters * 8 + 1024, (case, sent)


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_baselines_step_on_the_global_batch(ranks, name):
    """supervised_step on two ranks equals one process on the concatenated batch (batch norm: per-rank statistics,
    rank 0's running buffers), focal's loss-dependent weights included."""
    reference = supervised_case(name, None)
    for rank, got in enumerate(ranks):
        params = {k: v for k, v in got[name]["model"].items() if "running" not in k and "num_batches" not in k}
        assert_states_close(params, {k: v for k, v in reference["model"].items() if k in params}, 1e-10)
        for step in range(STEPS):
            assert abs(got[name]["loss"][step] - reference["loss"][step]) < 1e-10
            torch.testing.assert_close(got[name]["weights"][step],
                                       reference["weights"][step].split(TRAIN_SPLIT)[rank], rtol=0, atol=1e-10)


def test_l2rw_equals_one_process(ranks):
    reference = l2rw_case(None)
    for rank, got in enumerate(ranks):
        assert_states_close(got["l2rw"]["model"], reference["model"], 1e-10)
        for step in range(STEPS):
            torch.testing.assert_close(got["l2rw"]["weights"][step],
                                       reference["weights"][step].split(TRAIN_SPLIT)[rank], rtol=0, atol=1e-10)


def test_a_failure_on_one_rank_ends_the_step_on_every_rank(ranks):
    assert [r["failure"]["outcome"] for r in ranks] == ["another rank diverged", "non-finite"]
    assert [r["failure"]["bad_label"] for r in ranks] == ["other rank failed", "bad input"]
    assert all(r["failure"]["unchanged"] for r in ranks)
    assert all("SyncBatchNorm" in r["failure"]["refused"] for r in ranks)
