"""Workers die with their parent: a pool worker ends when its parent is SIGKILLed (parent-death signal, and the
pipe watchdog alone), and `mwnet compare --jobs 2` killed mid-grid leaves no worker running, so that the advertised
rerun resumes every cell once, to the numbers of an uninterrupted grid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A parent that starts one pool worker (which records its pid and sleeps), then SIGKILLs itself.
POOL_SCRIPT = """
import functools, multiprocessing, os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from mwnet.experiment.workers import die_with_parent

def sleeper(path):
    with open(path + ".part", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(path + ".part", path)
    time.sleep(120)

if __name__ == "__main__":
    pid_file, mode = sys.argv[1], sys.argv[2]
    init = functools.partial(die_with_parent, use_prctl=mode == "prctl")
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=init,
                               initargs=(os.getpid(),))
    pool.submit(sleeper, pid_file)
    while not os.path.exists(pid_file):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
"""

# `mwnet compare ARGS` whose cells (in the spawned workers too, which import this file as their main module) touch
# $MARKERS/<method> at every iteration and then sleep, so that they are mid-training when the test kills the parent.
COMPARE_SCRIPT = """
import os, sys, time
from pathlib import Path
from mwnet.experiment import execution

real_train = execution.train

def slow_train(config, out, **kwargs):
    def event(point, count):
        if point == "iteration":
            (Path(os.environ["MARKERS"]) / config.method).touch()
            time.sleep(0.3)
    return real_train(config, out, on_event=event, **kwargs)

execution.train = slow_train

if __name__ == "__main__":
    from mwnet.cli import main
    sys.exit(main(["compare", *sys.argv[1:]]))
"""

# `mwnet compare ARGS` whose spawned workers take a few seconds to start (they import this file as their main
# module, announcing themselves in $MARKERS first): a Ctrl-C then reaches them while Python is starting them up.
SLOW_START_SCRIPT = """
import os, sys, time
from pathlib import Path

if __name__ == "__mp_main__":
    (Path(os.environ["MARKERS"]) / str(os.getpid())).touch()
    time.sleep(3)

if __name__ == "__main__":
    from mwnet.cli import main
    sys.exit(main(["compare", *sys.argv[1:]]))
"""

GRID = ["--settings", "demo-digits", "--methods", "ce,mwnet", "--epochs", "2", "--device", "cpu", "--set",
        'model_options={"hidden": [32]}', "--quiet", "--jobs", "2", "--threads", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _ended(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie waiting for init counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["prctl", "watchdog"])
def test_a_pool_worker_ends_when_its_parent_is_killed(tmp_path, mode):
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.run([sys.executable, str(script), str(pid_file), mode], env=ENV, timeout=120)
    assert parent.returncode == -signal.SIGKILL
    worker = int(pid_file.read_text())
    try:
        assert _wait_until(lambda: _ended(worker), 10), f"worker {worker} outlived its parent ({mode})"
    finally:
        if not _ended(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_compare_killed_mid_grid_leaves_no_worker_and_resumes_to_the_uninterrupted_table(tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run([sys.executable, "-m", "mwnet", "compare", *GRID, "--out", str(reference)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    out, markers = tmp_path / "grid", tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "compare.py"
    script.write_text(COMPARE_SCRIPT)
    cells = [out / "demo-digits" / method / "seed0" for method in ("ce", "mwnet")]
    with subprocess.Popen([sys.executable, str(script), *GRID, "--out", str(out)], env={**ENV, "MARKERS": str(markers)},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as parent:
        try:
            assert _wait_until(lambda: all((markers / m).exists() for m in ("ce", "mwnet")), 240)
            workers = [int((cell / ".mwnet.lock").read_text()) for cell in cells]
        finally:
            parent.kill()  # SIGKILL, mid-grid
    try:
        assert _wait_until(lambda: all(_ended(pid) for pid in workers), 10), "a worker outlived mwnet compare"
    finally:
        for pid in workers:
            if not _ended(pid):
                os.kill(pid, signal.SIGKILL)
    assert not any((cell / "summary.json").exists() for cell in cells)

    rerun = subprocess.run([sys.executable, "-m", "mwnet", "compare", "--out", str(out)], env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "continuing with --jobs 2 --threads 1" in rerun.stdout
    for cell in cells:
        expected = reference / cell.relative_to(out) / "metrics.jsonl"
        assert (cell / "metrics.jsonl").read_bytes() == expected.read_bytes()  # every epoch once, same numbers
    reference_table = (reference / "results.md").read_text().split("## Best")[1]
    assert (out / "results.md").read_text().split("## Best")[1] == reference_table


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals a process group")
def test_two_ctrl_c_while_workers_start_print_no_traceback(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "slow_start.py"
    script.write_text(SLOW_START_SCRIPT)
    with subprocess.Popen([sys.executable, str(script), *GRID, "--out", str(tmp_path / "grid")],
                          env={**ENV, "MARKERS": str(markers)}, start_new_session=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as compare:
        try:
            assert _wait_until(lambda: len(os.listdir(markers)) == 2, 240)
            os.killpg(compare.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, workers included
            time.sleep(0.2)
            os.killpg(compare.pid, signal.SIGINT)
            _, stderr = compare.communicate(timeout=120)
        finally:
            if compare.poll() is None:
                os.killpg(compare.pid, signal.SIGKILL)
    assert compare.returncode == 130 and "Traceback" not in stderr, stderr
    # multiprocessing's resource tracker, a process of the same group, may warn about a semaphore the workers
    # already released (Python's own two-line UserWarning); mwnet's last word is the line that counts.
    ours = [line for line in stderr.strip().splitlines()
            if "resource_tracker" not in line and not line.strip().startswith("warnings.warn(")]
    assert ours[-1] == "mwnet: interrupted", stderr
