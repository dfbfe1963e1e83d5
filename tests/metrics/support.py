"""What the metrics tests share: the proxy served as ``stream-proxy serve`` serves it
(with the access logger, which counts each answered request), and /metrics read
into numbers. Metrics are the process's, so tests compare scrapes before and after."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.config import Config
from proxy.storage.backend import Backend as StorageBackend
from proxy.web.access_log import AccessLogger


@contextlib.asynccontextmanager
async def serving(config: Config, app_backend: StorageBackend | None = None) -> AsyncIterator[TestServer]:
    server = TestServer(create_app(config, app_backend), host="127.0.0.1")
    await server.start_server(access_log_class=AccessLogger)
    try:
        yield server
    finally:
        await server.close()


@dataclass(frozen=True)
class Scrape:
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]
    content_type: str

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for one not (yet) exported."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


async def scrape(url: str, headers: Mapping[str, str] | None = None) -> Scrape:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics", headers=headers) as answer:
        assert answer.status == 200, await answer.text()
        text = await answer.text()
        content_type = answer.headers["Content-Type"]
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return Scrape(samples, content_type)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)
