"""The text of the /metrics answer: this process's metrics, or with several worker
processes the sums of all of theirs (read from their files: call it in a thread)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.process_collector import ProcessCollector

from proxy.metrics.definitions import REGISTRY
from proxy.metrics.processes import multiprocess_directory

CONTENT_TYPE = CONTENT_TYPE_LATEST  # text/plain; version=...; charset=utf-8

_DIRECTORY = multiprocess_directory()  # chosen at import, as prometheus_client does
if _DIRECTORY is None:
    # CPU, memory and open descriptors of the process; with several processes
    # those of whichever answered would mislead, so they are left out there.
    ProcessCollector(registry=REGISTRY)


def latest() -> bytes:
    """Prometheus' text format of every metric, summed over the worker processes."""
    if _DIRECTORY is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=_DIRECTORY)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
