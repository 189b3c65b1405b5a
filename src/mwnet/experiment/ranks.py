"""One run over several processes (`torchrun --nproc-per-node N -m mwnet train ...`), equal to one process.

torchrun starts N copies of `mwnet train` and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in each
one's environment; `start_process_group` joins them. From there the runner works as in one process, except
(docs/distributed.md):

- Batches: `--batch-size` is the global batch. Every rank loads the same data and draws the same permutation and
  augmentation from the same seed; rank r trains on block r of each global batch (`mwnet.data.loaders.shard_block`:
  contiguous blocks in rank order), so the blocks concatenated are the batch one process would see, and the
  library's step (`mwnet.distributed`) equals one process's step on it. Meta and evaluation batches likewise.
- Records: each rank records its own samples' weights, losses and predictions; they are merged before metrics and
  checkpoints (`merge_record`), and evaluation counts are summed over ranks (`evaluation`).
- Files: rank 0 alone writes the run directory; the checkpoint also holds every rank's random state (dropout
  masks differ between ranks), so a killed run resumes to the same numbers.
- Failures: where a rank may fail on its own (a file it cannot read, a bad value), the ranks agree before going on
  (`agreement`): the failing rank raises its error, every other one `OtherRankError` naming it, and rank 0 alone
  prints the one message. Failures inside a step are agreed by the library (`mwnet.distributed.Shards.agree`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

#: What the command line turns into one line and exit code 2 (a user's input, not a bug).
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                 IsADirectoryError)
_QUIET = "mwnet_reported_by_rank_0"  # attribute set on an error whose message rank 0 prints
_AGREED = "mwnet_agreed"  # attribute set on an error every rank raised together (`Ranks.settle`)


class OtherRankError(ValueError):
    """Another rank rejected its input (a file it could not read, a bad value); this rank stops with it."""


class OtherRankCrashed(RuntimeError):
    """Another rank failed unexpectedly (not because of an input); this rank stops with it."""


def launched_rank() -> int:
    """This process's RANK as torchrun sets it (0 when absent or unreadable)."""
    text = os.environ.get("RANK", "0")
    return int(text) if text.isdigit() else 0


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when absent); ValueError when it is not a positive integer."""
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer (torchrun sets it), got {text!r}")
    return int(text)


def reported_by_rank_0(error: BaseException) -> BaseException:
    """Mark `error` as one whose message rank 0 prints (the command line stays silent about it here)."""
    if launched_rank() > 0 or (dist.is_available() and dist.is_initialized() and dist.get_rank() > 0):
        setattr(error, _QUIET, True)
    return error


def is_reported_by_rank_0(error: BaseException) -> bool:
    return bool(getattr(error, _QUIET, False))


def is_agreed(error: BaseException) -> bool:
    """Whether every rank raised `error` (or its counterpart) together, so that all may leave the group."""
    return bool(getattr(error, _AGREED, False))


def start_process_group() -> Ranks | None:
    """Join the torchrun job described by the environment; None for one process (no WORLD_SIZE, or 1).

    One process group carries CPU tensors over gloo and CUDA tensors over NCCL ("cpu:gloo,cuda:nccl" where CUDA
    exists), so it serves a run on either device.
    """
    world = launched_world_size()
    if world < 2:
        return None
    if not dist.is_initialized():
        missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise reported_by_rank_0(ValueError(
                f"WORLD_SIZE is {world} but {', '.join(missing)} is not set: start several processes with torchrun "
                "(torchrun --nproc-per-node N -m mwnet train ...)"))
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return current_ranks()


_current: tuple[Any, Ranks] | None = None


def stop_process_group(ranks: Ranks) -> None:
    """Leave the process group where every rank arrives (the end of a run, an agreed error): a barrier, then
    destroy it, keeping no reference to a group. A gloo group still alive when the interpreter exits can abort
    the process (std::terminate in its threads: exit code -6 instead of 0 or 2)."""
    global _current
    dist.barrier(group=ranks.control)
    _current = None  # no reference to a group may outlive it: its threads must end before the interpreter does
    dist.destroy_process_group()


def current_ranks() -> Ranks | None:
    """The ranks of the default process group when torch.distributed runs with more than one, else None.

    Collective: every rank calls it at the same point (the first call creates the gloo group of `Ranks.control`).
    """
    global _current
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    if _current is None or _current[0] is not dist.group.WORLD:
        rank = dist.get_rank()
        local = os.environ.get("LOCAL_RANK", "")
        _current = (dist.group.WORLD, Ranks(rank, dist.get_world_size(), int(local) if local.isdigit() else rank,
                                            dist.new_group(backend="gloo")))
    return _current[1]


@dataclass
class Ranks:
    """This process's place in the run, and the host-side collectives the runner needs.

    Attributes:
        rank, world_size: in the default process group; rank 0 writes the run directory.
        local_rank: the process's index on its node (its GPU with --device cuda).
        control: a gloo group for the runner's CPU collectives (agreements, records, counts, random states),
            whatever the step's backend.
    """

    rank: int
    world_size: int
    local_rank: int
    control: Any

    @property
    def writer(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world_size): which block of each global batch this rank's loaders yield."""
        return self.rank, self.world_size

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: CUDA → the GPU of LOCAL_RANK; ValueError for a device ranks cannot share."""
        if device.type == "cpu":
            return device
        if device.type != "cuda":
            raise ValueError(f"device {str(device)!r} does not run under torchrun: use cpu or cuda")
        if device.index is not None:
            raise ValueError(f"--device {device} names one GPU, but under torchrun each process takes the GPU of "
                             "its LOCAL_RANK: give --device cuda")
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise ValueError(f"LOCAL_RANK is {self.local_rank} but this node has {count} GPUs: start at most "
                             f"{count} processes per node (--nproc-per-node)")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def check_method(self, name: str) -> None:
        from mwnet.methods import method_class

        if not method_class(name).supports_ranks:
            raise ValueError(f"method {name!r} does not run on several processes (its step is not sharded over "
                             "ranks); train it in one process")

    def check_batches(self, what: str, flag: str, size: int, batch_size: int) -> None:
        """ValueError unless every batch of a pass over `size` samples gives each rank at least one sample."""
        batch_size = min(batch_size, size)
        last = size % batch_size
        smallest = min(batch_size, last) if last else batch_size
        if smallest < self.world_size:
            raise ValueError(f"with {self.world_size} processes every {what} batch needs at least "
                             f"{self.world_size} samples (one per process), but a pass over {size} samples in "
                             f"batches of {batch_size} has one of {smallest}: choose another {flag}")

    def seed_streams(self, seed: int) -> None:
        """A torch random stream per rank (dropout masks differ between ranks' blocks), derived from the seed."""
        torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    # -- agreement --------------------------------------------------------------------------------------------

    def settle(self, error: BaseException | None, input_errors: tuple[type[BaseException], ...] = ()) -> None:
        """Every rank learns whether any rank failed. Returns when none did, and when this rank failed (its
        caller re-raises its own error); raises OtherRankError / OtherRankCrashed on the others. Rank 0 alone
        prints: its own error, or the first failing rank's message."""
        report = None
        if error is not None:
            report = (_message(error), isinstance(error, (*INPUT_ERRORS, *input_errors)))
        reports: list[Any] = [None] * self.world_size
        dist.all_gather_object(reports, report, group=self.control)
        failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
        if not failed:
            return
        if error is not None:
            setattr(error, _AGREED, True)
            if self.rank > 0:
                setattr(error, _QUIET, True)
            return
        first, (message, is_input) = failed[0]
        text = f"rank {first} of {self.world_size}: {message}"
        other = OtherRankError(text) if is_input else OtherRankCrashed(text)
        setattr(other, _AGREED, True)
        if self.rank > 0:
            setattr(other, _QUIET, True)
        raise other

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (Ctrl-C reaches ranks at different iterations; they stop together)."""
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item() > 0)

    # -- records, evaluation, checkpoints ---------------------------------------------------------------------

    def merge_record(self, record: Any) -> None:
        """Every rank's visited samples in every rank's `EpochRecord` (a sample is visited by one rank per epoch;
        merging again changes nothing, so a record restored from a merged checkpoint merges correctly)."""
        seen = record.visited
        values = torch.stack([record.weights.double(), record.losses.double(), record.predictions.double(),
                              seen.double()])
        values[:3, ~seen] = -math.inf
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.control)
        seen = values[3] > 0
        record.visited = seen
        record.weights = torch.where(seen, values[0], 0.0).to(record.weights.dtype)
        record.losses = torch.where(seen, values[1], 0.0).to(record.losses.dtype)
        record.predictions = torch.where(seen, values[2], -1.0).to(record.predictions.dtype)

    def end_epoch(self, record: Any, model: torch.nn.Module, epoch: int) -> None:
        """Merge the epoch's records; RuntimeError if the ranks' models differ (a step that was not global)."""
        self.merge_record(record)
        states = [t.detach().double() for t in model.state_dict().values() if t.is_floating_point()]
        mine = torch.stack([sum(t.sum() for t in states), sum(t.abs().sum() for t in states)]).cpu()
        every = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine, group=self.control)
        if any(not torch.equal(every[0], other) for other in every[1:]):
            raise RuntimeError(f"the ranks' models differ after epoch {epoch}: a step was not the same on every "
                               "rank")

    def evaluation(self, loss_sum: float, predictions: list[torch.Tensor], targets: list[torch.Tensor],
                   num_classes: int) -> dict[str, Any]:
        """`mwnet.experiment.loop.evaluate`'s numbers from every rank's block: counts and loss summed over ranks."""
        k = num_classes
        pred = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)
        true = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
        counts = torch.zeros(2 * k + 1, dtype=torch.float64)
        counts[:k] = torch.bincount(true[pred == true], minlength=k).double()
        counts[k:2 * k] = torch.bincount(true, minlength=k).double()
        counts[-1] = loss_sum
        dist.all_reduce(counts, group=self.control)
        correct, total, n = counts[:k], counts[k:2 * k], float(counts[k:2 * k].sum())
        per_class = [None if t == 0 else 100.0 * float(c / t) for c, t in zip(correct, total)]
        return {"loss": float(counts[-1]) / n, "acc": 100.0 * float(correct.sum()) / n, "per_class": per_class}

    def saver(self, setup: Any, state: Any, path: Path) -> Callable[[], None]:
        """The loop's `save`: merge the epoch in progress, gather every rank's random state; rank 0 writes."""
        from mwnet.experiment.checkpoint import rng_state, save_run

        def save() -> None:
            if state.epoch is not None:
                self.merge_record(state.epoch)
            streams: list[Any] = [None] * self.world_size
            dist.all_gather_object(streams, rng_state(), group=self.control)
            with agreement(self):
                if self.writer:
                    save_run(setup, state, path, extra={"world_size": self.world_size, "rank_rng": streams})

        return save

    def finish(self, setup: Any, state: Any, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        """`finish_run` on rank 0 alone, on the whole test and training sets (suspects.csv ranks every training
        sample); its summary is returned on every rank."""
        from mwnet.experiment.rundir import finish_run

        summary = None
        with agreement(self):
            if self.writer:
                test_loader = copy.copy(setup.test_loader)
                test_loader.shard = None
                summary = finish_run(dataclasses.replace(setup, test_loader=test_loader, ranks=None), state, out,
                                     log)
        box = [summary]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


def resume_streams(checkpoint: dict[str, Any], ranks: Ranks | None, path: Path) -> None:
    """Check that a run resumes with as many processes as it ran with, and give each rank its random state back."""
    saved = int(checkpoint.get("world_size", 1))
    now = 1 if ranks is None else ranks.world_size
    if saved != now:
        raise ValueError(f"cannot resume {path} with {now} process(es): it ran with {saved}, and each process's "
                         "random stream is in the checkpoint; relaunch with the same number of processes")
    if ranks is not None:
        from mwnet.experiment.checkpoint import set_rng_state

        set_rng_state(checkpoint["rank_rng"][ranks.rank])


@contextlib.contextmanager
def agreement(ranks: Ranks | None, input_errors: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Run a block on every rank; if it fails on any, it fails on all (see `Ranks.settle`). The block must hold
    no collective (a rank that fails early would meet the others' collective with its own)."""
    if ranks is None:
        yield
        return
    try:
        yield
    except Exception as exc:
        ranks.settle(exc, input_errors)
        raise
    ranks.settle(None, input_errors)


def _message(error: BaseException) -> str:
    from mwnet.experiment.files import first_line

    message = first_line(error)
    if isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    return message
