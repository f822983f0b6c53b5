"""A fleet of clients on one Redis store: one poller per task, status from anywhere, owners
that die are replaced. Real redis-server, real HTTP on loopback, real OS processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import pytest

from wan_async import (
    MemoryStore,
    RedisStore,
    TaskStatus,
    VideoRequest,
    WanClient,
)
from wan_async.testing import FakeGateway, ScaledClock

from .conftest import RedisServer, fixed_processing, make_client, start_redis

pytestmark = pytest.mark.anyio

#: Gateway seconds per real second here: leases are real seconds (the store's clock).
SCALE = 60.0
LEASE = 0.4


def request(i: int) -> VideoRequest:
    return VideoRequest(prompt=f"fleet test {i}", model="wan2.6-t2v")


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway(
        clock=ScaledClock(SCALE), tick=3.0, slots=8, processing_time=fixed_processing(30.0)
    ) as gateway:
        yield gateway


def member(gw: FakeGateway, server: RedisServer, **kwargs: object) -> WanClient:
    """A client of the fleet on ``server``."""
    return make_client(gw, store=RedisStore.from_url(server.url, lease=LEASE), **kwargs)


async def test_status_from_another_client_costs_no_status_check(
    gw: FakeGateway, redis_server: RedisServer
) -> None:
    async with member(gw, redis_server) as owner, member(gw, redis_server) as other:
        handles = [await owner.submit(request(i)) for i in range(4)]
        followed = [other.attach(h.task_id) for h in handles]
        results = [await f for f in followed]
        assert [r.task_id for r in results] == [h.task_id for h in handles]
        assert all(r.video_url for r in results)
        assert other.stats.poller.polls == 0  # every answer came from the store
        assert owner.stats.poller.polls > 0
        latest = await other.latest(handles[0].task_id)
        assert latest is not None
        assert latest.status is TaskStatus.SUCCESS
        assert other.stats.poller.polls == 0


async def test_a_task_is_known_everywhere_once_submitted(
    gw: FakeGateway, redis_server: RedisServer
) -> None:
    """As soon as submit() returns, every client of the fleet answers for the task (a status
    endpoint on another worker never says 404), before any status check."""
    async with member(gw, redis_server) as owner, member(gw, redis_server) as other:
        handle = await owner.submit(request(0))
        latest = await other.latest(handle.task_id)
        assert latest is not None
        assert latest.status is TaskStatus.NOT_START
        assert latest.task_id == handle.task_id
        await handle


async def test_latest_follows_the_owner_while_the_task_runs(
    gw: FakeGateway, redis_server: RedisServer
) -> None:
    async with member(gw, redis_server) as owner, member(gw, redis_server) as other:
        handle = await owner.submit(request(0))
        seen: list[TaskStatus] = []
        with anyio.fail_after(30):
            while True:
                latest = await other.latest(handle.task_id)
                if latest is not None:
                    if not seen or seen[-1] is not latest.status:
                        seen.append(latest.status)
                    if latest.is_terminal:
                        break
                await anyio.sleep(0.01)
        assert seen[-1] is TaskStatus.SUCCESS
        assert TaskStatus.IN_PROGRESS in seen
        assert other.stats.poller.polls == 0


async def test_an_unknown_id_is_polled_by_who_attaches(
    gw: FakeGateway, redis_server: RedisServer
) -> None:
    """A task no live client owns (submitted without the store) is owned and polled by the
    client that attaches to it, and its peers follow that one."""
    async with make_client(gw) as outsider:
        handle = await outsider.submit(request(0))
    async with member(gw, redis_server) as first, member(gw, redis_server) as second:
        a = first.attach(handle.task_id)
        await anyio.sleep(0.05)
        b = second.attach(handle.task_id)
        assert (await a).task_id == (await b).task_id == handle.task_id
        assert first.stats.poller.polls > 0
        assert second.stats.poller.polls == 0


async def test_a_clean_close_hands_the_tasks_over_at_once(
    gw: FakeGateway, redis_server: RedisServer
) -> None:
    """Closing ends the lease: a peer adopts the unfinished tasks within a quarter lease,
    not after the lease."""
    store = RedisStore.from_url(redis_server.url, lease=30.0)  # no expiry within the test
    async with member(gw, redis_server) as peer:
        leaving = make_client(gw, store=store)
        handles = [await leaving.submit(request(i)) for i in range(3)]
        await leaving.aclose()
        followed = [peer.attach(h.task_id) for h in handles]
        with anyio.fail_after(10):
            results = [await f for f in followed]
        assert len(results) == 3
        assert peer.stats.poller.polls > 0


async def test_a_killed_owners_tasks_are_adopted(
    gw: FakeGateway, redis_server: RedisServer
) -> None:
    """``kill -9`` of the process that submitted and polls 5 tasks: a peer adopts them within
    the lease and a quarter, polls them to their end, and everyone who follows sees it."""
    clock = gw.clock
    assert isinstance(clock, ScaledClock)
    async with member(gw, redis_server) as peer:
        worker = await _start_worker(gw, clock, redis_server, n=5)
        try:
            ids = await _read_ids(worker)
            followed = [peer.attach(t) for t in ids]
            await anyio.sleep(0.1)
            assert peer.stats.poller.polls == 0  # the worker owns them
            worker.send_signal(signal.SIGKILL)
            killed = anyio.current_time()
            await worker.wait()
            with anyio.fail_after(30):
                results = [await f for f in followed]
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        assert [r.task_id for r in results] == ids
        assert peer.stats.poller.polls > 0
        # No task lost: each was created once and seen to its end.
        assert gw.stats.tasks_created == 5
        stored = await peer.latest(ids[0])
        assert stored is not None
        assert stored.status is TaskStatus.SUCCESS
        del killed


async def test_a_task_of_another_process_is_followed(
    gw: FakeGateway, redis_server: RedisServer
) -> None:
    clock = gw.clock
    assert isinstance(clock, ScaledClock)
    async with member(gw, redis_server) as peer:
        worker = await _start_worker(gw, clock, redis_server, n=3)
        try:
            ids = await _read_ids(worker)
            with anyio.fail_after(30):
                results = [await peer.attach(t) for t in ids]
        finally:
            worker.kill()
            await worker.wait()
    assert [r.task_id for r in results] == ids
    assert peer.stats.poller.polls == 0


async def test_a_lost_subscription_is_made_good(gw: FakeGateway, redis_server: RedisServer) -> None:
    """The announcements are a hint: after the connection drops, the follower resubscribes
    and re-reads what it follows, so no end is missed."""
    store = RedisStore.from_url(redis_server.url, lease=60.0)  # no re-read by the lease here
    async with member(gw, redis_server) as owner, make_client(gw, store=store) as other:
        handles = [await owner.submit(request(i)) for i in range(3)]
        followed = [other.attach(h.task_id) for h in handles]
        with anyio.fail_after(10):
            while True:  # followed, and read from the store
                if all(f.snapshot is not None for f in followed):
                    break
                await anyio.sleep(0.005)
        assert not any(f.done() for f in followed)  # 30 s tasks: not ended yet
        await store.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        with anyio.fail_after(20):
            results = [await f for f in followed]
        assert len(results) == 3
        assert other.stats.poller.polls == 0


async def test_without_the_store_the_client_goes_on_alone(
    gw: FakeGateway, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis unreachable: submits and waits work as without a store; a log line says so."""
    caplog.set_level(logging.WARNING, logger="wan_async")
    store = RedisStore.from_url(f"redis://127.0.0.1:{closed_port}/0", lease=LEASE)
    async with make_client(gw, store=store) as client:
        handle = await client.submit(request(0))
        attached = client.attach("task_elsewhere_0")  # unknown: polled here, gateway says 404
        assert (await handle).task_id == handle.task_id
        with pytest.raises(Exception, match="task"):
            await attached
    assert any("goes on alone" in r.getMessage() for r in caplog.records)


async def test_clients_of_one_process_share_a_memory_store(gw: FakeGateway) -> None:
    store = MemoryStore(lease=LEASE)
    async with make_client(gw, store=store) as owner, make_client(gw, store=store) as other:
        handle = await owner.submit(request(0))
        assert (await other.attach(handle.task_id)).task_id == handle.task_id
        assert other.stats.poller.polls == 0


async def test_the_store_can_come_from_the_environment(
    gw: FakeGateway, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAN_REDIS_URL", redis_server.url)
    async with make_client(gw) as owner, make_client(gw) as other:
        assert isinstance(owner._fleet.store if owner._fleet else None, RedisStore)
        handle = await owner.submit(request(0))
        assert (await other.attach(handle.task_id)).task_id == handle.task_id
        assert other.stats.poller.polls == 0


async def _start_worker(
    gw: FakeGateway,
    clock: ScaledClock,
    server: RedisServer,
    *,
    n: int,
    cap: float | None = None,
    prefix: str = "fleet item",
) -> anyio.abc.Process:
    return await anyio.open_process(
        [
            sys.executable,
            str(Path(__file__).with_name("_fleet_worker.py")),
            gw.base_url,
            str(clock.scale),
            repr(clock.epoch),
            repr(clock.origin),
            server.url,
            str(n),
            str(LEASE),
            "" if cap is None else str(cap),
            prefix,
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        stderr=None,
    )


async def _read_ids(worker: anyio.abc.Process) -> list[str]:
    assert worker.stdout is not None
    line = b""
    with anyio.fail_after(30):
        async for chunk in worker.stdout:
            line += chunk
            if b"\n" in line:
                break
    ids: list[str] = json.loads(line.split(b"\n", 1)[0])
    return ids


async def test_tasks_no_one_follows_are_adopted_too(
    gw: FakeGateway, redis_server: RedisServer
) -> None:
    """Nobody attached to the killed worker's tasks: a live client adopts them by itself
    (within the lease and a quarter), polls them to their end and stores it."""
    clock = gw.clock
    assert isinstance(clock, ScaledClock)
    async with member(gw, redis_server) as peer:
        worker = await _start_worker(gw, clock, redis_server, n=4)
        try:
            ids = await _read_ids(worker)
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
            with anyio.fail_after(30):
                while True:
                    stored = [await peer.latest(t) for t in ids]
                    if all(s is not None and s.is_terminal for s in stored):
                        break
                    await anyio.sleep(0.05)
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        assert peer.stats.poller.polls > 0
        assert peer._fleet is not None
        assert peer._fleet.followed == 0


# -- one request budget for the fleet ------------------------------------------------------


def _peak_rate(gw: FakeGateway, window: float) -> float:
    """The most requests the gateway served in any ``window`` clock seconds, per second."""
    times = sorted(r.at for r in gw.stats.request_log if r.kind in ("submit", "get"))
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most / window


async def test_a_cap_holds_for_the_whole_fleet(gw: FakeGateway, redis_server: RedisServer) -> None:
    """Three clients, each told ``max_requests_per_second=2``: with the store they share one
    bucket, and the gateway sees the fleet at 2 requests a second, not 6."""
    cap = 2.0
    clients = [member(gw, redis_server, max_requests_per_second=cap) for _ in range(3)]
    async with clients[0] as a, clients[1] as b, clients[2] as c:

        async def run(client: WanClient, first: int) -> None:
            await client.generate_many([request(first + i) for i in range(6)])

        async with anyio.create_task_group() as tg:
            for n, client in enumerate((a, b, c)):
                tg.start_soon(run, client, 10 * n)
    assert gw.stats.tasks_created == 18
    # Over any minute: at most the cap, plus the bucket's two lanes of one token each, plus
    # a few for the loop's jitter (a token taken at its time is used a little later).
    # Without the store, each client would spend its own 2 a second: 6 for the three.
    assert _peak_rate(gw, 60.0) <= cap + 6 / 60.0
    assert sum(cl.stats.rate.granted for cl in (a, b, c)) >= 18 * 2


async def test_429s_seen_by_every_client_move_the_fleet_rate_once(gw: FakeGateway) -> None:
    """Clients of one fleet share the rate the gateway's 429s set: a burst that every
    client sees halves it once (per cooldown), and all of them use the rate the store holds."""
    store = MemoryStore(lease=LEASE)
    async with FakeGateway(
        clock=ScaledClock(SCALE),
        tick=3.0,
        slots=8,
        processing_time=fixed_processing(30.0),
        rate_limit=3.0,
    ) as limited:
        clients = [make_client(limited, store=store) for _ in range(3)]
        async with clients[0] as a, clients[1] as b, clients[2] as c:

            async def run(client: WanClient, first: int) -> None:
                await client.generate_many([request(first + i) for i in range(8)])

            async with anyio.create_task_group() as tg:
                for n, client in enumerate((a, b, c)):
                    tg.start_soon(run, client, 10 * n)
            held = await store.rate()
            rates = {cl.stats.rate.current_rate for cl in (a, b, c)}
    assert limited.stats.tasks_created == 24
    assert held is not None  # the 429s set a fleet rate
    assert len(rates) == 1  # every client uses it
    (rate,) = rates
    assert rate == pytest.approx(held / SCALE)  # the store's rate is per real second
    # Halved once per cooldown, not once per client per burst, and from the fleet's pace
    # (each client sends a third of it): each client halving its own pace took the fleet to
    # 0.4 a second. The rule itself is replayed in tests/test_ratelimit.py; over HTTP the
    # 429s keep coming for a while after a decrease, so a second one may follow a cooldown.
    assert min(cl.stats.rate.lowest_rate for cl in (a, b, c)) >= 3.0 / 4


async def test_with_redis_gone_each_client_keeps_its_share(
    gw: FakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stops mid-run: each of the two clients falls back to half the fleet's cap (the
    clients alive when last counted), says so once, and every task still ends."""
    caplog.set_level(logging.WARNING, logger="wan_async")
    server = start_redis(tmp_path)
    cap = 2.0
    try:
        a = member(gw, server, max_requests_per_second=cap)
        b = member(gw, server, max_requests_per_second=cap)
        async with a, b:
            await anyio.sleep(LEASE / 2)  # both have beaten: two clients alive
            server.stop()
            start = gw.clock.monotonic()

            async def run(client: WanClient, first: int) -> None:
                await client.generate_many([request(first + i) for i in range(5)])

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, a, 0)
                tg.start_soon(run, b, 10)
    finally:
        server.stop()
    assert gw.stats.tasks_created == 10
    times = sorted(r.at for r in gw.stats.request_log if r.at >= start)
    window = 60.0
    most = max(sum(1 for t in times if at <= t <= at + window) for at in times)
    # Each client's lanes at 1 a second (two lanes of one token each), plus jitter.
    assert most <= cap * window + 6
    alone = [r for r in caplog.records if "goes on alone" in r.getMessage()]
    assert 1 <= len(alone) <= 2  # once per client


async def test_latest_without_a_store_knows_this_clients_tasks(gw: FakeGateway) -> None:
    """Without a store, latest() answers for this client's own tasks (NOT_START from the
    submit on), and None for any other id: no gateway request either way."""
    async with make_client(gw) as client:
        handle = await client.submit(request(0))
        first = await client.latest(handle.task_id)
        assert first is not None
        assert first.status is TaskStatus.NOT_START
        assert await client.latest("task_of_someone_else") is None
        await handle
        polls = client.stats.poller.polls
        done = await client.latest(handle.task_id)
        assert done is not None
        assert done.status is TaskStatus.SUCCESS
        assert client.stats.poller.polls == polls


async def test_what_was_seen_while_redis_was_down_is_stored_when_it_is_back(
    gw: FakeGateway, tmp_path: Path
) -> None:
    """Redis stops while a task runs and ends: its owner polls on alone, and once Redis is
    back (same server, its AOF reloaded) the end is in the store for everyone."""
    server = start_redis(tmp_path)
    try:
        async with member(gw, server) as owner:
            handle = await owner.submit(request(0))
            server.stop()
            await handle  # the task ends while the store is down
            server = start_redis(tmp_path)  # the same folder: the same socket and data
            async with member(gw, server) as reader:
                await _stored_end(reader, handle.task_id)
                assert reader.stats.poller.polls == 0
    finally:
        server.stop()


async def test_a_hung_redis_holds_no_submit(gw: FakeGateway, tmp_path: Path) -> None:
    """Redis stops answering (SIGSTOP) mid-run: a submit returns within a quarter lease and
    the task is polled here; once Redis answers again, the task is claimed in the store."""
    server = start_redis(tmp_path)
    try:
        async with member(gw, server) as owner, member(gw, server) as other:
            server.process.send_signal(signal.SIGSTOP)
            started = anyio.current_time()
            with anyio.fail_after(10):  # it used to wait for as long as Redis hung
                handle = await owner.submit(request(0))
                assert anyio.current_time() - started < LEASE  # bounded by a quarter lease
                second = await owner.submit(request(1))  # known down: at once
            server.process.send_signal(signal.SIGCONT)
            await handle
            await second
            await _stored_end(other, second.task_id)
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()


async def _stored_end(client: WanClient, task_id: str) -> None:
    """Wait until ``client`` reads the end of ``task_id`` (from the store, for a follower)."""
    with anyio.fail_after(20):
        while True:
            latest = await client.latest(task_id)
            if latest is not None and latest.is_terminal:
                return
            await anyio.sleep(0.02)


async def test_two_processes_keep_one_cap(gw: FakeGateway, redis_server: RedisServer) -> None:
    """Two OS processes on one key, each told ``max_requests_per_second=2``: the gateway sees
    the two at 2 requests a second between them (4 without the store)."""
    clock = gw.clock
    assert isinstance(clock, ScaledClock)
    cap = 2.0
    workers = [
        await _start_worker(gw, clock, redis_server, n=8, cap=cap, prefix=f"capped {w}")
        for w in range(2)
    ]
    try:
        with anyio.fail_after(60):
            for worker in workers:
                await _read_ids(worker)
            assert gw.stats.tasks_created == 16
            while True:
                if all(t.status == "SUCCESS" for t in gw.tasks()):
                    break
                await anyio.sleep(0.05)
    finally:
        for worker in workers:
            worker.kill()
            await worker.wait()
    assert _peak_rate(gw, 60.0) <= cap + 6 / 60.0
