"""A real Dask cluster started with the `dask scheduler` and `dask worker` commands, as a user starts one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def cli_cluster(folder: Path, workers: list[list[str]]) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """`dask scheduler` on 127.0.0.1 and one `dask worker` (one thread) per entry of `workers`, that entry being
    its extra arguments, each worker in a scratch folder of its own. Yields the scheduler's address and the
    processes (scheduler first), each the leader of its own process group, so a test may kill one whole; stops
    whatever is left on exit."""
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = folder / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for i, extra in enumerate(workers):
            cwd = folder / f"worker{i}"
            cwd.mkdir()
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                           "--local-directory", str(cwd), *extra], cwd=cwd, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address, procs
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
