"""A client's life: with ``async with`` or without, opened and closed from any task.

Web applications open clients in start-up hooks and close them in shutdown hooks, often in
other tasks than the one that opened them; httpx's and aiohttp's clients need no
``async with``. A WanClient works either way, and leaves no task behind once closed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import anyio
import pytest

from wan_async import ClientClosedError, VideoRequest
from wan_async.testing import FakeGateway, ScaledClock

from .conftest import fixed_processing, make_client

pytestmark = pytest.mark.anyio


def request(i: int = 0) -> VideoRequest:
    return VideoRequest(prompt=f"lifecycle {i}", model="wan2.6-t2v")


def client_tasks() -> set[str]:
    """Names of the running asyncio tasks that belong to a client."""
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("wan_async.")}


async def test_a_client_used_without_async_with_starts_on_first_use(
    gateway: FakeGateway,
) -> None:
    """No ``async with``: the poller starts with the first call; ``aclose()`` stops it and
    no task of the client is left running."""
    before = set(asyncio.all_tasks())
    client = make_client(gateway)
    assert client_tasks() == set()  # nothing starts before it is used
    result = await client.generate(request())
    assert result.video_url
    assert "wan_async.poller" in client_tasks()
    await client.aclose()
    assert client_tasks() == set()
    assert set(asyncio.all_tasks()) <= before | {asyncio.current_task()}
    with pytest.raises(ClientClosedError):
        await client.generate(request(1))


async def test_attach_before_any_other_call_is_followed(gateway: FakeGateway) -> None:
    """A handle attached first thing (a web app re-attaching stored ids at start-up, with
    nothing awaited yet) is polled once the client's task runs."""
    async with make_client(gateway) as submitter:
        task_id = (await submitter.submit(request())).task_id
    client = make_client(gateway)
    try:
        with anyio.fail_after(10):
            result = await client.attach(task_id)
        assert result.task_id == task_id
    finally:
        await client.aclose()


async def test_opened_by_a_start_up_task_that_ends_closed_by_another(
    gateway: FakeGateway,
) -> None:
    """``await client.__aenter__()`` in a start-up task that then ends, ``aclose()`` in a
    shutdown task: no ``RuntimeError`` (a cancel scope left in another task), no task of
    the client left behind, and the tasks in between are served."""
    client = make_client(gateway)

    async def start_up() -> None:
        await client.__aenter__()

    async def shut_down() -> None:
        await client.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(start_up)
    assert "wan_async.poller" in client_tasks()
    assert (await client.generate(request())).task_id
    async with anyio.create_task_group() as tg:
        tg.start_soon(shut_down)
    assert client_tasks() == set()
    assert client.closed


async def test_aclose_from_another_task_while_the_opener_waits_cancels_no_one(
    gateway: FakeGateway,
) -> None:
    """The task that entered the client is waiting on a task when a shutdown hook closes
    the client: its wait ends with ClientClosedError, and it is not cancelled (it goes on
    to its own end)."""
    client = make_client(gateway)
    await client.__aenter__()
    handle = await client.submit(request())
    went_on = anyio.Event()

    async def opener() -> None:
        with pytest.raises(ClientClosedError):
            await handle
        await anyio.sleep(0.01)  # a checkpoint: a cancelled task would stop here
        went_on.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(opener)
        await anyio.sleep(0.01)
        await client.aclose()
    assert went_on.is_set()
    assert client_tasks() == set()


async def test_two_closers_at_once_both_return_after_the_client_stopped(
    gateway: FakeGateway,
) -> None:
    """Two tasks closing at once: both return only once no task of the client runs."""
    client = make_client(gateway)
    await client.submit(request())
    seen: list[set[str]] = []

    async def close() -> None:
        await client.aclose()
        seen.append(client_tasks())

    async with anyio.create_task_group() as tg:
        tg.start_soon(close)
        tg.start_soon(close)
    assert seen == [set(), set()]


async def test_a_cancelled_closer_still_leaves_nothing_running(gateway: FakeGateway) -> None:
    """A shutdown hook cancelled while closing: the close is finished anyway."""
    client = make_client(gateway)
    await client.submit(request())
    with anyio.CancelScope() as scope:
        scope.cancel()
        await client.aclose()
    assert client_tasks() == set()
    assert client.closed


async def test_entering_twice_is_refused(gateway: FakeGateway) -> None:
    """One ``async with`` per client: a second would close it under the first."""
    async with make_client(gateway) as client:
        with pytest.raises(RuntimeError, match="enter it once"):
            await client.__aenter__()
        assert (await client.generate(request())).task_id


def test_a_client_never_closed_is_cleaned_up_when_its_loop_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A script that forgets ``aclose()``: when ``asyncio.run`` ends, the client's task is
    cancelled and closes the session: no "Task was destroyed but it is pending", no
    "Unclosed client session"."""

    async def main() -> str:
        async with FakeGateway(clock=ScaledClock(300), processing_time=fixed_processing(30)) as gw:
            client = make_client(gw)
            result = await client.generate(request())
            await client.submit(request(1))  # still running when the loop ends
            return result.task_id

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.ERROR):
        warnings.simplefilter("always")
        assert asyncio.run(main())
        gc.collect()
    assert [str(w.message) for w in caught if "nclosed" in str(w.message)] == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
