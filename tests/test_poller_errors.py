"""Status checks that fail: permanent errors end handles at once, transient ones in bounded time."""

from __future__ import annotations

import logging
import statistics

import anyio
import pytest

from wan_async import (
    AuthenticationError,
    BadRequestError,
    PermissionDeniedError,
    PollPolicy,
    StatusUnavailable,
    TaskNotFound,
    VideoRequest,
    WanClient,
    WanConnectionError,
)
from wan_async.testing import FakeGateway, Fault, ScaledClock

from .conftest import SCALE, fixed_processing, make_client

pytestmark = pytest.mark.anyio


def request(i: int) -> VideoRequest:
    """A distinct prompt per item."""
    return VideoRequest(prompt=f"scene {i}", model="wan2.6-t2v")


async def test_a_rejected_key_fails_every_handle_once_with_one_message(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 on a status check fails every tracked handle at once with that error, logged once."""
    async with make_client(gateway) as client:
        ids = [(await client.create_task(request(i))).task_id for i in range(3)]
    caplog.set_level(logging.ERROR, logger="wan_async")
    async with make_client(gateway, api_key="sk-wrong") as wrong:
        handles = [wrong.attach(task_id) for task_id in ids]
        with anyio.fail_after(5):
            for handle in handles:
                with pytest.raises(AuthenticationError):
                    await handle
        assert wrong.stats.poller.outstanding == 0
        assert wrong.stats.poller.polls <= 4  # not one retry per task, forever
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "3 tracked tasks" in errors[0].getMessage()
    assert "sk-wrong" not in caplog.text


async def test_a_refused_query_fails_that_handle_at_once(gateway: FakeGateway) -> None:
    """A 400 that is not task_not_exist (here a base URL with a stray prefix) is not retried."""
    async with make_client(gateway, base_url=gateway.base_url + "/stray") as client:
        handle = client.attach("task_abc")
        with anyio.fail_after(5), pytest.raises(BadRequestError) as info:
            await handle
    assert not isinstance(info.value, TaskNotFound)
    assert client.stats.poller.polls == 1


async def test_a_gateway_that_stays_down_is_reported_after_give_up_after(
    closed_port: int,
) -> None:
    """Checks failing for give_up_after clock seconds end the wait with StatusUnavailable."""
    clock = ScaledClock(SCALE)
    policy = PollPolicy(give_up_after=120)
    async with WanClient(
        api_key="k", base_url=f"http://127.0.0.1:{closed_port}", clock=clock, poll_policy=policy
    ) as client:
        handle = client.attach("task_abc")
        started = clock.monotonic()
        with anyio.fail_after(5), pytest.raises(StatusUnavailable) as info:
            await handle
        waited = clock.monotonic() - started
    error = info.value
    assert error.task_id == "task_abc"
    assert isinstance(error.cause, WanConnectionError)
    assert 120 <= error.failing_for <= waited
    assert "task_abc" in str(error)
    assert "attach to it later" in str(error)


async def test_a_gateway_back_before_give_up_after_loses_nothing() -> None:
    """Failures shorter than give_up_after are retried and the task still succeeds."""
    async with FakeGateway(clock=ScaledClock(SCALE), processing_time=fixed_processing(60)) as gw:
        gw.inject(Fault.BAD_GATEWAY_HTML, on="get", times=4)
        async with make_client(gw, poll_policy=PollPolicy(give_up_after=600)) as client:
            result = await client.generate(request(0))
    assert result.video_url


async def test_a_task_whose_check_failed_is_not_starved_by_a_saturated_budget() -> None:
    """Under a budget too small for every due check, a task whose check failed gets its turn."""
    clock = ScaledClock(SCALE)
    policy = PollPolicy(error_backoff=(2, 2))
    async with (
        FakeGateway(clock=clock, slots=40, processing_time=fixed_processing(3600)) as gw,
        make_client(gw, max_requests_per_second=0.5, poll_policy=policy) as client,
    ):
        handles = [await client.submit(request(i)) for i in range(30)]
        await clock.sleep(60)
        injected_at = clock.time()
        gw.inject(Fault.SERVER_ERROR, on="get")
        while gw.pending_faults:
            await clock.sleep(1)
        before = {h.task_id: gw.stats.gets_per_task[h.task_id] for h in handles}
        await clock.sleep(1800)
    # The 500 answered the first GET after the injection.
    failed = min(
        handles,
        key=lambda h: min(
            (t for t in gw.task(h.task_id).get_times if t >= injected_at), default=float("inf")
        ),
    ).task_id
    counts = {h.task_id: gw.stats.gets_per_task[h.task_id] - before[h.task_id] for h in handles}
    others = statistics.median(c for t, c in counts.items() if t != failed)
    assert others >= 4
    assert counts[failed] >= others / 2


async def test_a_firewall_403_for_one_task_fails_that_task_only(gateway: FakeGateway) -> None:
    """A WAF's HTML 403 for one id (not the gateway's JSON) failed five healthy tasks with
    PermissionDeniedError; it now fails the task it answered, and the others end well."""
    async with make_client(gateway) as client:
        handles = [await client.submit(request(i)) for i in range(6)]
        blocked = handles[0].task_id
        gateway.inject(Fault.FORBIDDEN_HTML, on="get", times=None, task_id=blocked)
        with pytest.raises(PermissionDeniedError):
            await handles[0]
        results = [await h for h in handles[1:]]
    assert len(results) == 5


async def test_a_firewall_403_on_two_tasks_is_the_clients_trouble(gateway: FakeGateway) -> None:
    """The same refusal for a second task shows it is not about one id: every task fails."""
    async with make_client(gateway) as client:
        handles = [await client.submit(request(i)) for i in range(6)]
        gateway.inject(Fault.FORBIDDEN_HTML, on="get", times=None)
        for h in handles:
            with pytest.raises(PermissionDeniedError):
                await h


async def test_the_gateways_own_403_fails_every_task_at_once(gateway: FakeGateway) -> None:
    """The gateway's JSON 403 (the key is restricted) refuses every check: one is enough."""
    async with make_client(gateway) as client:
        handles = [await client.submit(request(i)) for i in range(4)]
        gateway.forbid_key()
        for h in handles:
            with pytest.raises(PermissionDeniedError):
                await h
    assert gateway.stats.outcomes("get")["403"] <= 4


@pytest.mark.parametrize("task_id", [".", "..", "", " "])
async def test_a_task_id_that_is_not_one_path_segment_is_refused(
    gateway: FakeGateway, task_id: str
) -> None:
    """``attach("..")`` was sent as ``GET /v1/video/`` with the key."""
    async with make_client(gateway) as client:
        with pytest.raises(ValueError, match="task_id"):
            client.attach(task_id)
        with pytest.raises(ValueError, match="task_id"):
            await client.get_task(task_id)
    assert gateway.stats.outcomes("get") == {}
