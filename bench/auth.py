"""What access control costs a request: small range GETs with auth off, with a bearer
token, with a signed path URL and with a signed query URL, all in one run.

Each kind of request has a proxy process of its own, all serving one local root:
auth off (no [auth] section), auth on (a token and a signing key) for each of the
three kinds with credentials, and a second proxy with auth off as a control. Each
has its own client and keep-alive connection. A round sends ``range_count`` GETs of
the first KiB of a 1 MiB object per kind, interleaved one request of each kind at a
time, the kind that goes first rotating: on a shared machine whose speed drifts from
one second to the next, the kinds then see the same machine (consecutive batches of
one kind differed by up to a millisecond), and every process is equally busy (one
proxy serving three kinds answered faster than one serving one).

A row per kind with credentials gives the median over the rounds of its median and
p90 latency beside auth off's, and passes when the median is within AUTH_SLACK of it.
A note gives the control's difference to auth off, what two identical proxies differ
by here (the noise floor), and each proxy's CPU time per request.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from bench.context import BenchContext
from bench.download import nearest_rank
from bench.report import Row, compared_row
from bench.servers import ProxyProcess, local_storage_tables, log, run_proxy
from bench.settings import BenchError, MiB
from bench.upload import proxy_delete, proxy_put
from proxy.rules.grants import Action
from proxy.rules.signatures import SignedGrant, new_signing_secret, signed_url
from proxy.rules.tokens import hash_secret, new_secret

KEY = "auth/object.bin"
OBJECT_SIZE = 1 * MiB
RANGE = "bytes=0-1023"
RANGE_BYTES = 1024
WARMUP = 20  # untimed requests per kind, to open its connection and warm the caches
AUTH_SLACK = 0.0003  # seconds: the target, within 0.3 ms of auth off
KEY_ID = "bench"
OFF, CONTROL = "auth off", "auth off (control)"


@dataclass(frozen=True)
class Kind:
    name: str
    server: ProxyProcess
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Summary:
    median: float
    p90: float

    @classmethod
    def of(cls, seconds: list[float]) -> Summary:
        ordered = sorted(seconds)
        return cls(statistics.median(ordered), nearest_rank(ordered, 0.9))


def auth_toml(token_hash: str, signing_secret: str) -> str:
    """The [auth] section of the proxy with auth on: a read token and a signing key."""
    return (
        "[auth]\nclock_skew = 30\n\n"
        f'[[auth.tokens]]\nname = "bench"\nsha256 = "{token_hash}"\ngrants = ["read:"]\n\n'
        f'[auth.signing_keys.{KEY_ID}]\nsecret = "{signing_secret}"\n'
    )


@contextlib.asynccontextmanager
async def one_connection(headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        yield session


async def range_get(session: aiohttp.ClientSession, url: str) -> float:
    """Seconds of one GET of RANGE, read to the end and checked."""
    start = time.perf_counter()
    async with session.get(url, headers={"Range": RANGE}) as response:
        body = await response.read()
    seconds = time.perf_counter() - start
    if response.status != 206 or len(body) != RANGE_BYTES:
        raise BenchError(f"GET {url[:80]}: HTTP {response.status}, {len(body)} bytes: {body[:200]!r}")
    return seconds


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _diffs(kind: list[Summary], off: list[Summary]) -> str:
    return ", ".join(f"{(k.median - o.median) * 1000:+.3f}" for k, o in zip(kind, off, strict=True))


def cost_row(measurement: str, kind: list[Summary], off: list[Summary], notes: list[str]) -> Row:
    median = statistics.median(s.median for s in kind)
    p90 = statistics.median(s.p90 for s in kind)
    off_median = statistics.median(s.median for s in off)
    off_p90 = statistics.median(s.p90 for s in off)
    diff = median - off_median
    return compared_row(
        measurement,
        f"median {_ms(median)}, p90 {_ms(p90)}",
        f"median {_ms(off_median)}, p90 {_ms(off_p90)}",
        f"median {diff * 1000:+.2f} ms (<= +{AUTH_SLACK * 1000:.1f} ms); "
        f"p90 {(p90 - off_p90) * 1000:+.2f} ms",
        diff <= AUTH_SLACK,
        reference_name="the same requests, interleaved, to a proxy with auth off",
        unit="median/p90 ms",
        proxy_rounds=[f"{s.median * 1000:.2f}/{s.p90 * 1000:.2f}" for s in kind],
        reference_rounds=[f"{s.median * 1000:.2f}/{s.p90 * 1000:.2f}" for s in off],
        notes=[f"{measurement}: median difference per round (ms) {_diffs(kind, off)}", *notes],
    )


async def auth_cost(ctx: BenchContext) -> list[Row]:
    """Small range GETs through a proxy with auth on (bearer token, path signature,
    query signature) against the same with auth off, on the local backend."""
    count, rounds = ctx.settings.range_count, ctx.settings.rounds
    root = ctx.workdir / "auth-root"
    secret, signing_secret = new_secret(), new_signing_secret()
    extra = auth_toml(hash_secret(secret), signing_secret)
    async with contextlib.AsyncExitStack() as stack:
        off, control = [
            await stack.enter_async_context(ctx.local_proxy(name, root))
            for name in ("auth-off", "auth-control")
        ]
        on = [
            await stack.enter_async_context(
                run_proxy(f"auth-on-{i}", ctx.workdir, local_storage_tables(root), extra_toml=extra)
            )
            for i in range(3)
        ]
        await ctx.payload.sha256(OBJECT_SIZE)
        await proxy_put(ctx.http, off.url, KEY, ctx.payload, OBJECT_SIZE)
        grant = SignedGrant(KEY_ID, Action.READ, KEY, int(time.time()) + 24 * 3600)
        key_secret = signing_secret.encode()
        plain = f"/files/{quote(KEY)}"
        kinds = [
            Kind(OFF, off, off.url + plain, {}),
            Kind("bearer token", on[0], on[0].url + plain, {"Authorization": f"Bearer {secret}"}),
            Kind("signed path URL", on[1], signed_url(on[1].url, grant, key_secret), {}),
            Kind("signed query URL", on[2], signed_url(on[2].url, grant, key_secret, in_query=True), {}),
            Kind(CONTROL, control, control.url + plain, {}),
        ]
        try:
            results, cpu = await _rounds(kinds, count, rounds)
        finally:
            await proxy_delete(ctx.http, off.url, KEY)
    name = f"{count} x 1 KiB ranges (local)"
    cpu_text = ", ".join(f"{k.name} {cpu[k.name] * 1e6:.0f} µs" for k in kinds)
    noise = (
        f"auth cost, {name}: a second proxy with auth off (the control) differed from the "
        f"first by median {_diffs(results[CONTROL], results[OFF])} ms per round; proxy CPU "
        f"per request (median of rounds): {cpu_text}"
    )
    with_credentials = kinds[1:4]
    return [
        cost_row(
            f"auth cost: {k.name}, {name}",
            results[k.name],
            results[OFF],
            [noise] if k is with_credentials[-1] else [],
        )
        for k in with_credentials
    ]


async def _rounds(
    kinds: list[Kind], count: int, rounds: int
) -> tuple[dict[str, list[Summary]], dict[str, float]]:
    """Each kind's latency summary per round, and the CPU seconds per request of its
    proxy (median of rounds)."""
    summaries: dict[str, list[Summary]] = {k.name: [] for k in kinds}
    cpu: dict[str, list[float]] = {k.name: [] for k in kinds}
    async with contextlib.AsyncExitStack() as stack:
        sessions = {k.name: await stack.enter_async_context(one_connection(k.headers)) for k in kinds}
        for kind in kinds:
            for _ in range(WARMUP):
                await range_get(sessions[kind.name], kind.url)
        for r in range(rounds):
            seconds: dict[str, list[float]] = {k.name: [] for k in kinds}
            before = {k.name: k.server.cpu_seconds() for k in kinds}
            for i in range(count):
                # One request of each kind at a time, each going first in turn.
                first = (r + i) % len(kinds)
                for kind in kinds[first:] + kinds[:first]:
                    seconds[kind.name].append(await range_get(sessions[kind.name], kind.url))
            for kind in kinds:
                cpu[kind.name].append((kind.server.cpu_seconds() - before[kind.name]) / count)
                summaries[kind.name].append(Summary.of(seconds[kind.name]))
            log(
                f"auth-cost round {r + 1}/{rounds}: "
                + ", ".join(f"{k.name} {_ms(summaries[k.name][-1].median)}" for k in kinds)
            )
    return summaries, {name: statistics.median(values) for name, values in cpu.items()}
