"""A batch journal several hosts run at once, in the fleet's Redis store: each item is
submitted by one host, every host gets every outcome, and a claim is never taken over."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from wan_async import (
    JournalError,
    MemoryStore,
    RedisStore,
    SharedJournal,
    SubmitOutcomeUnknown,
    VideoRequest,
)
from wan_async._shared_journal import StoreJournal
from wan_async._store import namespace_for
from wan_async.testing import FakeGateway, ScaledClock

from .conftest import RedisServer, fixed_processing, make_client, start_redis

pytestmark = pytest.mark.anyio

SCALE = 60.0


def batch(n: int) -> list[VideoRequest]:
    return [VideoRequest(prompt=f"shared batch item {i}", model="wan2.6-t2v") for i in range(n)]


@pytest.fixture
async def gw() -> FakeGateway:  # type: ignore[misc]
    async with FakeGateway(
        clock=ScaledClock(SCALE), tick=3.0, slots=40, processing_time=fixed_processing(20.0)
    ) as gateway:
        yield gateway


async def test_two_hosts_run_one_batch_without_a_duplicate(
    gw: FakeGateway, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two processes, each in its own working directory, run the same batch of 60 on one
    shared journal at once: 60 tasks, none twice, and each process gets all 60 outcomes."""
    clock = gw.clock
    assert isinstance(clock, ScaledClock)
    n = 60
    hosts = []
    for name in ("host-a", "host-b"):
        folder = tmp_path / name
        folder.mkdir()
        hosts.append(
            await anyio.open_process(
                [
                    sys.executable,
                    str(Path(__file__).with_name("_shared_batch_worker.py")),
                    gw.base_url,
                    str(clock.scale),
                    repr(clock.epoch),
                    repr(clock.origin),
                    redis_server.url,
                    "two-hosts",
                    str(n),
                ],
                cwd=folder,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                stderr=None,
            )
        )
    reports = []
    with anyio.fail_after(120):
        for host in hosts:
            assert host.stdout is not None
            out = b""
            async for chunk in host.stdout:
                out += chunk
            assert await host.wait() == 0
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert gw.stats.tasks_created == n
    assert max(gw.stats.tasks_per_prompt.values()) == 1  # no prompt submitted twice
    assert [r["ok"] for r in reports] == [n, n]
    assert reports[0]["ids"] == reports[1]["ids"]
    assert sum(r["submits"] for r in reports) == n
    assert all(r["submits"] > 0 for r in reports)  # both hosts did part of it


async def test_a_rerun_resumes_from_the_store(gw: FakeGateway, redis_server: RedisServer) -> None:
    async with make_client(gw, store=RedisStore.from_url(redis_server.url)) as client:
        first = await client.generate_many(batch(5), journal=SharedJournal(name="rerun"))
    async with make_client(gw, store=RedisStore.from_url(redis_server.url)) as client:
        again = await client.generate_many(batch(5), journal=SharedJournal(name="rerun"))
        assert client.stats.submits == 0
    assert [r.task_id for r in again] == [r.task_id for r in first]
    assert gw.stats.tasks_created == 5


async def test_a_claim_of_a_stopped_client_reads_as_unknown(gw: FakeGateway) -> None:
    """An item left ``submitting`` by a client whose lease ran out: its task may exist, so
    no other host submits it (a lease expiry never takes a claim over)."""
    store = MemoryStore(lease=0.2)
    async with make_client(gw, store=store) as client:
        assert client._fleet is not None
        space = client._fleet.namespace
        other = MemoryStore(lease=0.2)
        other._spaces = store._spaces  # the same process, one store, another client
        await other.open(space)
        await other.beat("gone", 0.1, first=True)
        dead = await StoreJournal.open_in(other, "gone", SharedJournal(name="dead"), batch(3))
        await dead.submitting(1, at=gw.clock.time())  # then killed: no answer recorded
        await anyio.sleep(0.2)
        outcomes = await client.generate_many(
            batch(3), journal=SharedJournal(name="dead"), return_outcomes=True
        )
    assert [o.ok for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, SubmitOutcomeUnknown)
    assert gw.stats.tasks_created == 2


async def test_a_live_claim_is_followed_to_its_task(gw: FakeGateway) -> None:
    """Another live client holds an item's claim: this one waits for its task id, then
    attaches to that task instead of submitting the item again."""
    store = MemoryStore(lease=5.0)
    async with make_client(gw, store=store) as client, make_client(gw, store=store) as peer:
        assert client._fleet is not None
        assert peer._fleet is not None
        spec = SharedJournal(name="live", follow_every=0.01)
        theirs = await StoreJournal.open_in(store, peer._fleet.owner, spec, batch(2))
        await theirs.submitting(0, at=gw.clock.time())

        async def finish_theirs() -> str:
            await anyio.sleep(0.1)
            handle = await peer.submit(batch(2)[0])
            await theirs.submitted(0, handle.task_id)
            return handle.task_id

        async with anyio.create_task_group() as tg:
            task_ids: list[str] = []

            async def run_theirs() -> None:
                task_ids.append(await finish_theirs())

            tg.start_soon(run_theirs)
            outcomes = await client.generate_many(batch(2), journal=spec, return_outcomes=True)
    assert all(o.ok for o in outcomes)
    assert outcomes[0].task_id == task_ids[0]
    assert gw.stats.tasks_created == 2
    assert client.stats.submits == 1


async def test_a_refused_claim_is_free_again(gw: FakeGateway) -> None:
    store = MemoryStore()
    async with make_client(gw, store=store) as client, make_client(gw, store=store) as peer:
        assert peer._fleet is not None
        spec = SharedJournal(name="refused", follow_every=0.01)
        theirs = await StoreJournal.open_in(store, peer._fleet.owner, spec, batch(1))
        await theirs.submitting(0, at=gw.clock.time())

        async def refuse() -> None:
            await anyio.sleep(0.1)
            await theirs.refused(0, "429 upstream saturated")

        async with anyio.create_task_group() as tg:
            tg.start_soon(refuse)
            outcomes = await client.generate_many(batch(1), journal=spec, return_outcomes=True)
    assert outcomes[0].ok
    assert client.stats.submits == 1


async def test_a_server_that_may_lose_writes_is_refused(gw: FakeGateway, tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    try:
        store = RedisStore.from_url(server.url)
        async with make_client(gw, store=store) as client:
            await store.redis.config_set("appendfsync", "everysec")
            with pytest.raises(JournalError, match="appendfsync 'everysec'") as caught:
                await client.generate_many(batch(2), journal=SharedJournal(name="lossy"))
            assert "require_durable=False" in str(caught.value)
            assert gw.stats.tasks_created == 0
            done = await client.generate_many(
                batch(2), journal=SharedJournal(name="lossy", require_durable=False)
            )
            assert len(done) == 2
    finally:
        server.stop()


async def test_a_shared_journal_needs_a_store(gw: FakeGateway) -> None:
    from wan_async import ConfigurationError

    async with make_client(gw) as client:
        with pytest.raises(ConfigurationError, match="task store"):
            await client.generate_many(batch(1), journal=SharedJournal(name="nowhere"))
    assert gw.stats.tasks_created == 0


def test_a_journal_name_is_checked() -> None:
    with pytest.raises(ValueError, match="name"):
        SharedJournal(name="a/b")
    assert namespace_for("x", "y")
