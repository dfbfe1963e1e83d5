"""Fixtures of the local storage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.storage.local.objects import LocalStorage


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[LocalStorage]:
    """A started LocalStorage over a fresh root, closed after the test."""
    store = LocalStorage(tmp_path / "root")
    await store.start()
    yield store
    await store.close()
