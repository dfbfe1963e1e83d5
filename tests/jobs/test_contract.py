"""Every job store (memory, local, S3 on moto and on RGW) keeps the same promises."""

from __future__ import annotations

import asyncio

import pytest

from proxy.jobs.base import ClaimLost, JobNotFound
from proxy.jobs.claims import HeldClaim
from tests.conftest import wait_until
from tests.jobs.conftest import LEASE, Place


async def claim_of(place: Place, store: object) -> HeldClaim:
    claim = await store.claim()  # type: ignore[attr-defined]
    assert isinstance(claim, HeldClaim), f"{place.name}: nothing to claim"
    return claim


async def test_enqueue_get_remove(place: Place) -> None:
    store = await place.open()
    with pytest.raises(JobNotFound):
        await store.get("movies/a.mp4")
    job = await store.enqueue("movies/a.mp4", '"etag-1"')
    assert (job.key, job.source_etag, job.state, job.progress) == ("movies/a.mp4", '"etag-1"', "queued", 0.0)
    assert (job.attempt, job.attempts, job.reason, job.result) == (None, 0, None, {})
    other = await place.open()
    assert await other.get("movies/a.mp4") == job
    again = await other.enqueue("movies/a.mp4", '"etag-2"')
    assert again.generation != job.generation and again.source_etag == '"etag-2"'
    assert len(place.entries()) == 1
    removed = await store.remove("movies/a.mp4")
    assert removed is not None and removed.generation == again.generation
    with pytest.raises(JobNotFound):
        await other.get("movies/a.mp4")
    assert await store.remove("movies/a.mp4") is None
    assert await other.claim() is None
    assert place.entries() == []


async def test_claims_take_the_oldest_first_and_each_once(place: Place) -> None:
    store, other = await place.open(), await place.open()
    keys = ["q/1", "q/2", "q/3"]
    for key in keys:
        await store.enqueue(key, '"e"')
        if place.s3:
            await asyncio.sleep(1.1)  # S3 dates queue entries to the second
    claims = [await claim_of(place, s) for s in (store, other, store)]
    assert [c.job.key for c in claims] == keys
    for claim in claims:
        assert claim.job.state == "running" and claim.job.attempts == 1 and claim.job.attempt
        assert claim.previous_attempt is None and not claim.lost()
        assert (await other.get(claim.job.key)).attempt == claim.job.attempt
    assert await store.claim() is None and await other.claim() is None
    for claim in claims:
        await claim.done({})


async def test_racing_claims_of_one_job_one_wins(place: Place) -> None:
    stores = [await place.open() for _ in range(4)]
    await stores[0].enqueue("race.mp4", '"e"')
    got = await asyncio.gather(*(s.claim() for s in stores))
    won = [c for c in got if c is not None]
    assert len(won) == 1
    assert (await stores[1].get("race.mp4")).attempt == won[0].job.attempt


async def test_progress_is_stored_and_the_claim_held_past_its_lease(place: Place) -> None:
    store, other = await place.open(), await place.open()
    await store.enqueue("p.mp4", '"e"')
    claim = await claim_of(place, store)
    await claim.report(42.5, {"info": {"duration": 3.0}})
    job = await other.get("p.mp4")
    assert (job.state, job.progress, job.result) == ("running", 42.5, {"info": {"duration": 3.0}})
    await asyncio.sleep(LEASE * 2)  # renewals keep it
    assert await other.claim() is None
    assert not claim.lost()
    await claim.report(150)  # clamped
    assert (await other.get("p.mp4")).progress == 100.0


async def test_re_enqueue_during_a_run_makes_the_holder_lose(place: Place) -> None:
    store, other = await place.open(), await place.open()
    await store.enqueue("r.mp4", '"old"')
    claim = await claim_of(place, store)
    first = claim.job
    requeued = await other.enqueue("r.mp4", '"new"')
    await wait_until(claim.lost, LEASE * 3)  # found by its renewal, without a write
    with pytest.raises(ClaimLost):
        await claim.report(10)
    job = await other.get("r.mp4")
    assert (job.state, job.generation, job.source_etag) == ("queued", requeued.generation, '"new"')
    await claim.release()  # the runner does this once the work is cancelled
    taken = await claim_of(place, other)
    assert taken.job.generation == requeued.generation and taken.job.attempts == 1
    assert taken.previous_attempt == first.attempt  # the lost attempt's outputs are stray
    with pytest.raises(ClaimLost):
        await claim.done({})
    assert (await other.get("r.mp4")).state == "running"
    await taken.done({"ok": True})
    assert (await store.get("r.mp4")).result == {"ok": True}


async def test_remove_during_a_run_makes_the_holder_lose(place: Place) -> None:
    store, other = await place.open(), await place.open()
    await store.enqueue("gone.mp4", '"e"')
    claim = await claim_of(place, store)
    assert (await other.remove("gone.mp4")) is not None
    await wait_until(claim.lost, LEASE * 3)
    with pytest.raises(ClaimLost):
        await claim.done({})
    with pytest.raises(JobNotFound):
        await store.get("gone.mp4")
    assert place.entries() == []
    assert await other.claim() is None


async def test_a_dead_holder_s_job_is_taken_over(place: Place) -> None:
    dying, other = await place.open(), await place.open()
    await dying.enqueue("lapse.mp4", '"e"')
    claim = await claim_of(place, dying)
    await dying.close()  # stops renewing without writing, as a killed process does
    if place.name == "local":
        taken = await claim_of(place, other)  # the kernel let go of the run lock
    else:
        assert await other.claim() is None  # the lease still runs
        found: list[object] = []

        async def claimed() -> None:
            while not found:
                got = await other.claim()
                if got is not None:
                    found.append(got)
                else:
                    await asyncio.sleep(0.2)

        await asyncio.wait_for(claimed(), LEASE + 10)
        taken = found[0]  # type: ignore[assignment]
    assert taken.previous_attempt == claim.job.attempt
    assert taken.job.attempts == 2 and taken.job.attempt != claim.job.attempt
    with pytest.raises(ClaimLost):
        await claim.report(1)
    await taken.done({})


async def test_release_makes_it_claimable_at_once(place: Place) -> None:
    store, other = await place.open(), await place.open()
    await store.enqueue("rel.mp4", '"e"')
    claim = await claim_of(place, store)
    await claim.report(30)
    await claim.release()
    await claim.release()  # harmless twice
    job = await other.get("rel.mp4")
    assert (job.state, job.progress) == ("queued", 0.0)
    taken = await claim_of(place, other)
    assert taken.previous_attempt == claim.job.attempt
    with pytest.raises(ClaimLost):
        await claim.report(40)


async def test_done_and_failed_stick(place: Place) -> None:
    store, other = await place.open(), await place.open()
    await store.enqueue("ok.mp4", '"e"')
    await store.enqueue("bad.mp4", '"e"')
    claims = {c.job.key: c for c in [await claim_of(place, store), await claim_of(place, store)]}
    done = await claims["ok.mp4"].done({"hls": "master.m3u8"})
    failed = await claims["bad.mp4"].failed("not a video", {"info": None})
    assert (done.state, done.progress, done.result, done.reason) == (
        "done",
        100.0,
        {"hls": "master.m3u8"},
        None,
    )
    assert (failed.state, failed.reason, failed.result) == ("failed", "not a video", {"info": None})
    assert await other.get("ok.mp4") == done and await other.get("bad.mp4") == failed
    assert place.entries() == []  # a claim scan lists no finished job
    with pytest.raises(ClaimLost):
        await claims["ok.mp4"].report(1)
    await claims["ok.mp4"].release()  # does nothing to an ended claim
    assert await other.claim() is None
    assert (await other.get("ok.mp4")).state == "done"
    requeued = await other.enqueue("bad.mp4", '"e2"')  # POST retries a failed job
    assert requeued.state == "queued" and requeued.reason is None
    assert (await claim_of(place, store)).job.key == "bad.mp4"


async def test_stray_queue_entries_are_dropped_by_a_claim_scan(place: Place) -> None:
    store = await place.open()
    await store.enqueue("fin.mp4", '"e"')
    await (await claim_of(place, store)).done({})
    place.add_entry("fin.mp4")  # as a crash between the record and the entry leaves it
    place.add_entry("never-enqueued.mp4")
    assert len(place.entries()) == 2
    assert await store.claim() is None
    assert place.entries() == []
    assert (await store.get("fin.mp4")).state == "done"
