"""Metrics of several worker processes, summed in the /metrics answer of any one.

prometheus_client chooses where a process keeps its values once, when it is first
imported: in memory, or (with PROMETHEUS_MULTIPROC_DIR set) in files of that
directory, one set per process, which the /metrics answer reads and sums. So the
parent of the workers calls ``prepared`` before it starts any, and starts them as
fresh interpreters (subprocess, multiprocessing's ``spawn``), which inherit the
variable before they import anything; a worker forked from a parent that had already
imported the metrics would keep them in memory, unseen by the others.

The parent calls ``process_ended`` for each worker that exits: its gauges (requests
in flight, memory budget) stop counting, while its counters stay in the sums, so
totals never go down when a worker is replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_directory() -> str | None:
    """The directory the values of this process's metrics are kept in, or None
    when they are in memory (one process)."""
    return os.environ.get(ENVIRONMENT) or None


@contextlib.contextmanager
def prepared(workers: int) -> Iterator[str | None]:
    """Around the life of ``workers`` worker processes, in their parent, before the
    first starts: for more than one, a private directory for their metrics named in
    the environment they inherit (yielded; None for one worker, which keeps its
    metrics in memory). The directory and the variable go on exit."""
    if workers <= 1:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="stream-proxy-metrics-")
    previous = os.environ.get(ENVIRONMENT)
    os.environ[ENVIRONMENT] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(ENVIRONMENT, None)
        else:
            os.environ[ENVIRONMENT] = previous
        shutil.rmtree(directory, ignore_errors=True)


def process_ended(pid: int) -> None:
    """Worker ``pid`` has exited (in the parent, within ``prepared``): its live
    gauges leave the sums. Nothing to do with one process."""
    directory = multiprocess_directory()
    if directory is None:
        return
    # Imported here: the parent needs none of prometheus_client otherwise.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
