"""A second OS process for the cross-process job tests.

``python -m tests.jobs.racer race (local ROOT | s3 URL BUCKET) LEASE GO``: waits for
the file GO, then claims jobs until none is left, "works" 0.2 s on each and marks
it done, printing each key it claimed (one line each). ``hold`` instead claims one
job, prints ``<key> <attempt>`` and holds it (renewing) until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from proxy.config import S3Config
from proxy.jobs.base import JobStore
from proxy.jobs.local import LocalJobStore
from proxy.jobs.s3 import S3JobStore
from proxy.storage.s3.objects import S3Storage


async def main(args: list[str]) -> None:
    mode, kind = args[0], args[1]
    storage: S3Storage | None = None
    if kind == "local":
        store: JobStore = LocalJobStore(Path(args[2]), float(args[3]))
        rest = args[4:]
    else:
        config = S3Config(
            bucket=args[3], endpoint_url=args[2], region="us-east-1", addressing_style="path", max_attempts=2
        )
        storage = S3Storage(config)
        await storage.start()
        store = S3JobStore(storage, float(args[4]))
        rest = args[5:]
    await store.start()
    try:
        if mode == "hold":
            claim = await store.claim()
            assert claim is not None
            print(claim.job.key, claim.job.attempt, flush=True)
            await asyncio.sleep(3600)
        go = Path(rest[0])
        while not await asyncio.to_thread(go.exists):
            await asyncio.sleep(0.01)
        idle = 0
        while idle < 3:
            claim = await store.claim()
            if claim is None:
                idle += 1
                await asyncio.sleep(0.3)
                continue
            idle = 0
            print(claim.job.key, flush=True)
            await asyncio.sleep(0.2)
            await claim.done({"by": sys.argv})
    finally:
        await store.close()
        if storage is not None:
            await storage.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
