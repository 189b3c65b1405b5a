"""`python ranks_launcher.py --kill-at N ARGS...`: `mwnet ARGS` as one process of a torchrun job that SIGKILLs
itself right after global iteration N (every rank at the same iteration), through the runner's `on_event`.

The resume test launches it with torchrun to kill a distributed run mid-epoch, then relaunches plain `mwnet`.
"""

from __future__ import annotations

import os
import signal
import sys

from mwnet.cli import main
from mwnet.experiment import runner


def killing_train(kill_at: int):
    train = runner.train

    def run(*args, **kwargs):
        def on_event(point: str, count: int) -> None:
            if point == "iteration" and count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        return train(*args, on_event=on_event, **kwargs)

    return run


if __name__ == "__main__":
    if sys.argv[1] != "--kill-at":
        sys.exit("usage: ranks_launcher.py --kill-at N ARGS...")
    runner.train = killing_train(int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
