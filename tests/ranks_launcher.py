"""`python ranks_launcher.py [--kill-at N] [--interrupt-at N --on-rank R] ARGS...`: `mwnet ARGS` as one process of
a torchrun job, with faults injected through the runner's `on_event`:

--kill-at N         SIGKILL this process right after global iteration N (every rank at the same iteration);
--interrupt-at N    send this process SIGINT (Ctrl-C) after iteration N, on rank R only (--on-rank R).

The resume test launches it to stop a distributed run mid-epoch, then relaunches plain `mwnet`.
"""

from __future__ import annotations

import os
import signal
import sys

from mwnet.cli import main
from mwnet.experiment import runner


def faulty_train(faults: dict[str, int]):
    train = runner.train
    rank = int(os.environ["RANK"])

    def run(*args, **kwargs):
        def on_event(point: str, count: int) -> None:
            if point != "iteration":
                return
            if count == faults.get("--kill-at"):
                os.kill(os.getpid(), signal.SIGKILL)
            if count == faults.get("--interrupt-at") and rank == faults.get("--on-rank"):
                os.kill(os.getpid(), signal.SIGINT)

        return train(*args, on_event=on_event, **kwargs)

    return run


if __name__ == "__main__":
    argv, faults = sys.argv[1:], {}
    while argv and argv[0] in ("--kill-at", "--interrupt-at", "--on-rank"):
        faults[argv[0]] = int(argv[1])
        argv = argv[2:]
    runner.train = faulty_train(faults)
    sys.exit(main(argv))
