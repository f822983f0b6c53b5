"""The shared poller: one coroutine for all tasks, a schedule that spends few GETs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import anyio
import pytest

from wan_async import (
    ClientClosedError,
    PollPolicy,
    TaskFailed,
    TaskHandle,
    TaskNotFound,
    TaskSnapshot,
    TaskStatus,
    VideoRequest,
    WanClient,
)
from wan_async._client import POLLER_TASK_NAME
from wan_async.testing import FakeGateway, Fault, ScaledClock

from .conftest import SCALE, fixed_processing, make_client

pytestmark = pytest.mark.anyio


def request(i: int, *, fail: bool = False) -> VideoRequest:
    """A distinct prompt per item, so the simulator counts tasks per item."""
    return VideoRequest(prompt=f"{'[fail] ' if fail else ''}scene {i}", model="wan2.6-t2v")


def client_tasks() -> list[str]:
    """Names of the running asyncio tasks that belong to the client (not the simulator)."""
    return sorted(
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name() == POLLER_TASK_NAME or "Poller." in t.get_name()
    )


def poller_tasks() -> list[asyncio.Task[object]]:
    """The running asyncio tasks that are a client's poller."""
    return [t for t in asyncio.all_tasks() if t.get_name() == POLLER_TASK_NAME]


def check_tasks() -> list[str]:
    """Names of the running per-GET tasks of a client's poller."""
    return [n for n in client_tasks() if n != POLLER_TASK_NAME]


async def test_one_poller_whatever_the_number_of_tasks(gateway: FakeGateway) -> None:
    """Tracking 40 tasks adds no asyncio task per task: one poller serves all, and the
    GETs it has on the wire at once stay within ``max_concurrent_polls``."""
    limit = 4
    policy = PollPolicy(refresh_period=gateway.tick, max_concurrent_polls=limit)
    async with make_client(gateway, poll_policy=policy) as client:
        assert len(poller_tasks()) == 1
        most = 0
        handles = []
        for i in range(40):
            handles.append(await client.submit(request(i)))
            most = max(most, len(check_tasks()))
        assert len(poller_tasks()) == 1
        pending = [asyncio.ensure_future(h.wait()) for h in handles]
        while not all(p.done() for p in pending):
            most = max(most, len(check_tasks()))
            assert len(poller_tasks()) == 1
            await asyncio.sleep(0)
        assert most <= limit
        results = [p.result() for p in pending]
    assert len({r.task_id for r in results}) == 40


async def test_every_handle_resolves_exactly_once(gateway: FakeGateway) -> None:
    """Each task is seen terminal once and its handle settles once, however many waiters."""
    terminal: list[str] = []

    def listen(handle: TaskHandle, snap: TaskSnapshot) -> None:
        if snap.is_terminal:
            terminal.append(handle.task_id)

    async with make_client(gateway) as client:
        client.add_status_listener(listen)
        handles = [await client.submit(request(i, fail=i % 5 == 0)) for i in range(20)]
        async with anyio.create_task_group() as tg:
            for h in handles:
                for _ in range(3):  # three waiters per handle
                    tg.start_soon(_wait_quietly, h)
    assert sorted(terminal) == sorted(h.task_id for h in handles)
    for i, h in enumerate(handles):
        assert h.done()
        if i % 5 == 0:
            assert isinstance(h.exception(), TaskFailed)
        else:
            assert h.result().task_id == h.task_id
    # The gateway answered each task's end exactly once: no GET after the end was seen.
    for info in gateway.tasks():
        assert info.first_terminal_get is not None


async def _wait_quietly(handle: TaskHandle) -> None:
    with contextlib.suppress(TaskFailed):
        await handle


async def test_polls_are_few_and_never_within_a_refresh(gateway: FakeGateway) -> None:
    """Fixed 90 s tasks on a 15 s tick: few polls, and none before the next refresh is due.

    Economy is what is tested: the rule that checks a handful of tasks at every refresh
    from submit on is switched off."""
    asked: dict[str, list[tuple[float, float | None]]] = {}
    policy = PollPolicy(refresh_period=gateway.tick, every_refresh_up_to=0)
    async with make_client(gateway, poll_policy=policy) as client:
        fetch = client._poller._fetch

        async def recording(task_id: str) -> TaskSnapshot:
            # When each poll was sent, and which refresh its answer showed.
            sent = client.clock.time()
            snap = await fetch(task_id)
            refreshed = snap.updated_at.timestamp() if snap.updated_at else None
            if snap.status is TaskStatus.NOT_START:
                refreshed = None  # not refreshed yet: updated_at is the insert time
            asked.setdefault(task_id, []).append((sent, refreshed))
            return snap

        client._poller._fetch = recording
        handles = [await client.submit(request(i)) for i in range(4)]  # 4 slots: no queueing
        for h in handles:
            await h
        # What the first round taught (durations, the loop's phase) plans the second.
        second = [await client.submit(request(10 + i)) for i in range(4)]
        for h in second:
            await h
    per_task = [gateway.stats.gets_per_task[h.task_id] for h in handles + second]
    naive = 90 / (15 / 3)  # polling every third of a tick for a 90 s task: 18 GETs
    # Nothing known of durations at first: any task may end at any refresh (one check per
    # refresh, half of naive's GETs), and one task also searches the loop's phase.
    first = sorted(per_task[:4])
    assert first[-2] <= naive / 2
    assert first[-1] <= naive
    # Four identical ends do not prove the durations never vary: the second round checks from
    # a little before 90 s, at each refresh (0.1.0 took the least of three ends as a bound).
    assert max(gateway.stats.gets_per_task[h.task_id] for h in second) <= 4
    # Never asked again before the gateway could have refreshed the task since the last answer
    # (updated_at has whole seconds: one second of slack), but for a few deliberate probes
    # early in the client's life that prove the refresh period (a stale answer half a period
    # after a refresh shows no shorter period exists).
    early = [
        polls
        for polls in asked.values()
        for (_, seen), (sent, _) in itertools.pairwise(polls)
        if seen is not None and sent < seen + gateway.tick - 1.0
    ]
    assert len(early) <= 2, early


async def test_detection_is_prompt(gateway: FakeGateway) -> None:
    """The GET that sees a task end comes soon after the gateway saw it end."""
    async with make_client(gateway) as client:
        handles = [await client.submit(request(i)) for i in range(8)]
        for h in handles:
            await h
    lags = gateway.detection_lags()
    assert len(lags) == 8
    # Within a third of a tick (what a naive 'every 5 s' poller guarantees) for most tasks.
    assert sorted(lags)[len(lags) // 2] <= gateway.tick / 3


async def test_a_sequential_pass_is_followed_task_by_task() -> None:
    """A pass over 10 other users' tasks and ours, 0.5 s each, after a 3 s sleep: each task's
    refresh comes right after the one created before it, and the period shrinks from 16 s as
    ours end. Once one task is seen refreshed, the next one's check goes a pass step later,
    and a check waits while the task before it is seen stale: every end of 16 tasks with
    spread-out durations is seen within a third of the period, most within an eighth."""
    durations = iter([40.0 + 7.0 * i for i in range(16)])
    async with FakeGateway(
        clock=ScaledClock(SCALE / 10),
        refresh="sequential",
        tick=3,
        refresh_cost=0.5,
        other_tenants=10,
        processing_time=lambda body, rng: next(durations),
    ) as gw:
        async with make_client(gw) as client:
            handles = [await client.submit(request(i)) for i in range(16)]
            for h in handles:
                await h
        lags = sorted(gw.detection_lags())
    assert len(lags) == 16
    period = 3 + (10 + 16) * 0.5
    assert lags[-1] <= period / 3, lags
    assert lags[len(lags) // 2] <= period / 8, lags


async def test_attach_by_id(gateway: FakeGateway, client: WanClient) -> None:
    """A task created elsewhere is tracked by id; attaching twice gives the same handle."""
    created = await client.create_task(request(1))
    handle = client.attach(created.task_id)
    assert client.attach(created.task_id) is handle
    result = await handle
    assert result.task_id == created.task_id


async def test_attach_unknown_id_fails_that_handle_only(client: WanClient) -> None:
    """task_not_exist fails the attached handle with TaskNotFound; others go on."""
    good = await client.submit(request(1))
    bad = client.attach("task_unknown000")
    with pytest.raises(TaskNotFound):
        await bad
    assert (await good).task_id == good.task_id


async def test_cancelling_one_waiter_leaves_the_others(client: WanClient) -> None:
    """A waiter cancelled mid-wait stops only its own wait."""
    handle = await client.submit(request(1))
    with anyio.move_on_after(0.01):
        await handle
    assert not handle.done()
    result = await handle
    assert result.task_id == handle.task_id


async def test_wait_timeout_keeps_the_task_tracked(client: WanClient) -> None:
    """A per-wait timeout raises TimeoutError; the task goes on and can be awaited again."""
    handle = await client.submit(request(1))
    with pytest.raises(TimeoutError):
        await handle.wait(timeout=5)
    assert (await handle.wait()).task_id == handle.task_id


async def test_close_fails_pending_waits(gateway: FakeGateway) -> None:
    """Leaving the client fails outstanding handles with ClientClosedError; nothing leaks."""
    async with make_client(gateway) as client:
        handle = await client.submit(request(1))
    with pytest.raises(ClientClosedError):
        await handle
    assert poller_tasks() == []


async def test_transient_poll_errors_are_retried(gateway: FakeGateway) -> None:
    """5xx, HTML and resets while polling never fail a task."""
    for fault in (Fault.SERVER_ERROR, Fault.BAD_GATEWAY_HTML, Fault.TRUNCATED_JSON):
        gateway.inject(fault, on="get", times=2)
    async with make_client(gateway) as client:
        handles = [await client.submit(request(i)) for i in range(3)]
        for h in handles:
            await h
        assert client.stats.poller.poll_errors == 6


async def test_status_regression_and_unknown_status_keep_polling(gateway: FakeGateway) -> None:
    """A step back to QUEUED or an unknown status does not end or break tracking."""
    seen: list[TaskStatus] = []
    gateway.inject(Fault.UNKNOWN_STATUS, on="get", times=2)
    async with make_client(gateway) as client:
        client.add_status_listener(lambda h, s: seen.append(s.status))
        handle = await client.submit(request(1))
        await handle
    assert TaskStatus.UNKNOWN in seen
    assert seen[-1] is TaskStatus.SUCCESS


async def test_attach_to_an_ended_task_costs_nothing(
    gateway: FakeGateway, client: WanClient
) -> None:
    """A task this client saw end is answered from memory: same handle, no request."""
    handle = await client.submit(request(1))
    await handle
    gets = gateway.stats.gets_per_task[handle.task_id]
    again = client.attach(handle.task_id)
    assert again is handle
    assert (await again).task_id == handle.task_id
    assert gateway.stats.gets_per_task[handle.task_id] == gets


async def test_a_failing_listener_does_not_stop_the_poller(
    client: WanClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; tasks still resolve."""

    def broken(handle: TaskHandle, snap: TaskSnapshot) -> None:
        raise RuntimeError("listener bug")

    client.add_status_listener(broken)
    handle = await client.submit(request(1))
    assert (await handle).task_id == handle.task_id
    assert any("listener" in r.getMessage() for r in caplog.records)
    client.remove_status_listener(broken)


async def test_overdue_checks_of_tasks_past_their_usual_end_free_window_room() -> None:
    """Checks held back (here: every poll slot stuck in a slow answer) do not keep tasks that
    have run longer than such tasks take counted in the window: their slots upstream are
    likely free. Tasks not yet past that, or being checked, still count."""
    clock = ScaledClock(SCALE)
    policy = PollPolicy(refresh_period=3.0, max_concurrent_polls=2)
    async with (
        FakeGateway(clock=clock, tick=3.0, slots=10, processing_time=fixed_processing(60)) as gw,
        make_client(gw, poll_policy=policy) as client,
    ):
        poller = client._poller
        await (await client.submit(request(0)))  # teaches a 60 s duration
        with poller.using_window():
            handles = [await client.submit(request(1 + i)) for i in range(6)]
            await clock.sleep(20)  # each seen running (few tasks: checked at every refresh)
            assert all(h.status is TaskStatus.IN_PROGRESS for h in handles)
            assert poller.in_flight() == 6
            gw.inject(Fault.SLOW, on="get", times=2, delay=4 * 60 / SCALE)  # 4 minutes
            await clock.sleep(20)  # both poll slots are stuck; the other checks fall due
            assert poller.in_flight() == 6  # due, but not yet past their usual end
            await clock.sleep(40)
            # Four wait for a slot, past their end; the two being checked still count.
            assert poller.in_flight() == 2
            for h in handles:
                await h
            assert poller.in_flight() == 0


async def test_a_coroutine_listener_is_refused(client: WanClient) -> None:
    """An async listener was accepted and never awaited (so it never ran)."""

    async def listener(handle: TaskHandle, snap: TaskSnapshot) -> None:
        pass

    class Listener:
        async def __call__(self, handle: TaskHandle, snap: TaskSnapshot) -> None:
            pass

    with pytest.raises(TypeError, match="coroutine function"):
        client.add_status_listener(listener)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine function"):
        client.add_status_listener(Listener())  # type: ignore[arg-type]


async def test_a_listener_returning_an_awaitable_is_removed_and_reported(
    client: WanClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain function returning a coroutine (a lambda around an async function): the
    coroutine is closed (no "never awaited" warning), the listener removed, the poller goes on."""
    seen: list[str] = []

    async def work(snap: TaskSnapshot) -> None:
        seen.append(snap.raw_status)

    client.add_status_listener(lambda handle, snap: work(snap))  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="wan_async"):
        result = await client.generate(request(0))
    assert result.task_id
    assert seen == []
    assert sum("returned an awaitable" in r.getMessage() for r in caplog.records) == 1
