"""The task store's contract, on both implementations: a real ``redis-server`` (started by
the tests) and the in-process store. Leases and expiries run on the store's own clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from wan_async import MemoryStore, RedisStore, StoreUnavailable, TaskStore
from wan_async._store import RATE_CHANGED, namespace_for, take_token

from .conftest import RedisServer

pytestmark = pytest.mark.anyio

LEASE = 0.3


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TaskStore]:
    """An open store of each kind, in a namespace of its own."""
    if request.param == "memory":
        made: TaskStore = MemoryStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisStore.from_url(server.url)
    await made.open(namespace_for(f"http://127.0.0.1/{request.node.name}", "sk-contract"))
    try:
        yield made
    finally:
        await made.aclose()


async def test_a_task_has_one_owner_while_its_lease_runs(store: TaskStore) -> None:
    assert await store.beat("a", LEASE, first=True)
    assert await store.beat("b", LEASE, first=True)
    first = await store.claim("t1", "a", new=True)
    assert first.mine
    second = await store.claim("t1", "b", new=False)
    assert not second.mine
    assert second.task.owner == "a"
    assert second.task.alive
    assert (await store.claim("t1", "a", new=False)).mine  # its own claim again


async def test_a_task_whose_owner_stopped_renewing_can_be_claimed(store: TaskStore) -> None:
    await store.beat("a", LEASE, first=True)
    await store.beat("b", 60, first=True)
    await store.claim("t1", "a", new=True)
    await anyio.sleep(LEASE * 1.5)  # a stops renewing
    (stored,) = await store.get(["t1"])
    assert stored is not None
    assert stored.owner == "a"
    assert not stored.alive
    assert (await store.claim("t1", "b", new=False)).mine
    (stored,) = await store.get(["t1"])
    assert stored is not None
    assert (stored.owner, stored.alive) == ("b", True)


async def test_a_snapshot_is_stored_only_if_newer(store: TaskStore) -> None:
    await store.beat("a", 60, first=True)
    await store.claim("t1", "a", new=True)
    assert await store.put("t1", order=10, snapshot="ten", ended=False)
    assert not await store.put("t1", order=9, snapshot="nine", ended=False)  # a stale owner
    assert not await store.put("t1", order=10, snapshot="ten again", ended=False)
    assert await store.put("t1", order=12, snapshot="end", ended=True)
    # Ended is final: nothing replaces the end, however it is ordered.
    assert not await store.put("t1", order=99, snapshot="later", ended=False)
    (stored,) = await store.get(["t1"])
    assert stored is not None
    assert (stored.snapshot, stored.ended, stored.owner) == ("end", True, "")


async def test_an_ended_task_is_not_claimed(store: TaskStore) -> None:
    await store.beat("a", 60, first=True)
    await store.claim("t1", "a", new=True)
    await store.put("t1", order=1, snapshot="end", ended=True)
    claim = await store.claim("t1", "b", new=False)
    assert not claim.mine
    assert claim.task.ended
    assert claim.task.snapshot == "end"


async def test_unknown_tasks_read_as_none(store: TaskStore) -> None:
    assert await store.get(["nope", "neither"]) == [None, None]
    assert await store.get([]) == []


async def test_a_dead_owners_unfinished_tasks_go_to_one_adopter(store: TaskStore) -> None:
    await store.beat("dead", LEASE, first=True)
    for owner in ("x", "y"):
        await store.beat(owner, 60, first=True)
    for i in range(10):
        await store.claim(f"t{i}", "dead", new=True)
    await store.put("t0", order=1, snapshot="end", ended=True)
    await anyio.sleep(LEASE * 1.5)
    taken: dict[str, list[str]] = {}

    async def adopt(owner: str) -> None:
        taken[owner] = await store.adopt(owner)

    async with anyio.create_task_group() as tg:
        tg.start_soon(adopt, "x")
        tg.start_soon(adopt, "y")
    everything = taken["x"] + taken["y"]
    assert sorted(everything) == sorted(f"t{i}" for i in range(1, 10))  # each once, t0 ended
    assert [] in (taken["x"], taken["y"])  # one adopter took them all
    adopter = "x" if taken["x"] else "y"
    found = await store.get(everything)
    assert all(s is not None and s.owner == adopter and s.alive for s in found)
    # The dead owner learns it was taken for dead when it beats again.
    assert not await store.beat("dead", LEASE, first=False)
    assert await store.beat("dead", LEASE, first=False)  # registered afresh
    assert await store.adopt("x") == []


async def test_a_live_owner_is_not_adopted_from(store: TaskStore) -> None:
    await store.beat("a", 60, first=True)
    await store.beat("b", 60, first=True)
    await store.claim("t1", "a", new=True)
    assert await store.adopt("b") == []


async def test_resigning_frees_the_tasks_at_once(store: TaskStore) -> None:
    await store.beat("a", 60, first=True)
    await store.beat("b", 60, first=True)
    await store.claim("t1", "a", new=True)
    await store.resign("a")
    assert await store.adopt("b") == ["t1"]


async def test_stored_snapshots_are_announced(store: TaskStore) -> None:
    await store.beat("a", 60, first=True)
    await store.claim("t1", "a", new=True)
    async with store.announcements() as announced:
        await store.put("t1", order=1, snapshot="one", ended=False)
        await store.put("t1", order=0, snapshot="stale", ended=False)  # not stored: silent
        await store.put("t2", order=1, snapshot="two", ended=True)
        with anyio.fail_after(5):
            assert [await anext(announced), await anext(announced)] == ["t1", "t2"]


async def test_namespaces_are_apart(store: TaskStore, request: pytest.FixtureRequest) -> None:
    await store.beat("a", 60, first=True)
    await store.claim("t1", "a", new=True)
    await store.put("t1", order=1, snapshot="one", ended=False)
    await store.open(namespace_for(f"http://127.0.0.1/{request.node.name}", "sk-other-key"))
    assert await store.get(["t1"]) == [None]
    assert (await store.claim("t1", "b", new=False)).mine


def test_the_namespace_does_not_reveal_the_key() -> None:
    space = namespace_for("https://gateway.example", "sk-secret-1234")
    assert "secret" not in space
    assert "1234" not in space
    assert space != namespace_for("https://gateway.example", "sk-secret-1235")
    assert space != namespace_for("https://other.example", "sk-secret-1234")


async def test_records_expire_with_the_task_ttl(request: pytest.FixtureRequest) -> None:
    for made in (MemoryStore(task_ttl=0.3), _redis(request, task_ttl=0.3)):
        await made.open(namespace_for("http://127.0.0.1/ttl", "sk-ttl"))
        try:
            await made.beat("a", 60, first=True)
            await made.claim("t1", "a", new=True)
            await made.put("t1", order=1, snapshot="one", ended=True)
            assert (await made.get(["t1"]))[0] is not None
            await anyio.sleep(0.5)
            assert await made.get(["t1"]) == [None]
        finally:
            await made.aclose()


def _redis(request: pytest.FixtureRequest, **options: float) -> RedisStore:
    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisStore.from_url(server.url, **options)


async def test_nothing_in_redis_holds_the_key(redis_server: RedisServer) -> None:
    """Keys are derived from a hash of the key; values are the snapshots, nothing more."""
    made = RedisStore.from_url(redis_server.url)
    await made.open(namespace_for("http://127.0.0.1/leak", "sk-very-secret-key"))
    try:
        await made.beat("a", 60, first=True)
        await made.claim("t1", "a", new=True)
        await made.put("t1", order=1, snapshot='{"task_id":"t1"}', ended=False)
        dump = []
        async for key in made.redis.scan_iter():
            dump.append(key)
            kind = (await made.redis.type(key)).decode()
            if kind == "hash":
                dump.extend((await made.redis.hgetall(key)).values())
        assert dump
        assert not any(b"very-secret" in (k if isinstance(k, bytes) else k.encode()) for k in dump)
    finally:
        await made.aclose()


async def test_an_unreachable_server_is_store_unavailable(closed_port: int) -> None:
    made = RedisStore.from_url(f"redis://127.0.0.1:{closed_port}/0")
    with pytest.raises(StoreUnavailable, match="Redis"):
        await made.open("wan:test")
    await made.aclose()


async def test_a_dropped_subscription_raises(redis_server: RedisServer) -> None:
    made = RedisStore.from_url(redis_server.url)
    await made.open(namespace_for("http://127.0.0.1/drop", "sk-drop"))
    try:
        async with made.announcements() as announced:
            await made.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            with anyio.fail_after(5), pytest.raises(StoreUnavailable):
                await anext(announced)
    finally:
        await made.aclose()


# -- the fleet's request budget -----------------------------------------------------------


async def test_the_fleet_rate_moves_once_per_cooldown(store: TaskStore) -> None:
    """However many clients see the 429s, the fleet's rate is halved once per cooldown."""
    assert await store.rate() is None
    async with store.announcements() as announced:
        assert await store.propose_rate(8.0, cooldown=0.3, decrease=True) == 8.0
        with anyio.fail_after(5):
            assert await anext(announced) == RATE_CHANGED
    # Four more clients saw the same burst of 429s: none halves it again.
    for _ in range(4):
        assert await store.propose_rate(4.0, cooldown=0.3, decrease=True) == 8.0
    assert await store.propose_rate(9.0, cooldown=0.3, decrease=False) == 8.0  # nor recovers
    assert await store.propose_rate(16.0, cooldown=0.0, decrease=True) == 8.0  # not lower
    await anyio.sleep(0.35)
    assert await store.propose_rate(4.0, cooldown=0.3, decrease=True) == 4.0
    await anyio.sleep(0.35)
    assert await store.propose_rate(None, cooldown=0.3, decrease=False) is None
    assert await store.rate() is None


async def test_the_fleet_bucket_serves_polls_first(store: TaskStore) -> None:
    rate = 10.0
    first = await store.take("poll", rate=rate, poll_share=0.5)
    assert 0 < first <= 1 / rate + 0.01  # a new bucket starts empty
    await anyio.sleep(1.2)  # both lanes fill: 5 tokens each
    for _ in range(5):
        assert await store.take("submit", rate=rate, poll_share=0.5) == 0
    assert await store.take("submit", rate=rate, poll_share=0.5) > 0  # never the poll lane
    for _ in range(5):
        assert await store.take("poll", rate=rate, poll_share=0.5) == 0
    assert await store.take("poll", rate=rate, poll_share=0.5) > 0


async def test_the_fleet_bucket_holds_for_many_takers(store: TaskStore) -> None:
    """Four clients asking as fast as they can get the fleet's rate between them, no more."""
    rate, seconds = 40.0, 0.5
    granted = 0

    async def client() -> None:
        nonlocal granted
        with anyio.move_on_after(seconds):
            while True:
                wait = await store.take("poll", rate=rate, poll_share=0.5)
                if wait:
                    await anyio.sleep(wait)
                else:
                    granted += 1

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(client)
    assert rate * seconds * 0.6 <= granted <= rate * seconds + 1


async def test_members_are_the_live_leases(store: TaskStore) -> None:
    await store.beat("a", 60, first=True)
    await store.beat("b", LEASE, first=True)
    assert await store.members() == 2
    await anyio.sleep(LEASE * 1.5)
    assert await store.members() == 1


def test_the_bucket_rule() -> None:
    lanes: dict[str, float] = {}
    assert take_token(lanes, "poll", elapsed=0, rate=2, poll_share=0.5) == 0.5  # both lanes
    assert take_token(lanes, "poll", elapsed=10, rate=2, poll_share=0.5) == 0
    assert lanes == {"poll": 0.0, "submit": 1.0}
    assert take_token(lanes, "poll", elapsed=0, rate=2, poll_share=0.5) == 0  # borrows
    assert take_token(lanes, "submit", elapsed=0, rate=2, poll_share=0.5) == 1.0
