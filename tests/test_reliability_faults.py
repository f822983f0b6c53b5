"""The client against the simulator's harder faults: errors after create, keys, outages."""

from __future__ import annotations

import anyio
import pytest

from wan_async import (
    AuthenticationError,
    BatchAborted,
    DecodeError,
    PermissionDeniedError,
    PollPolicy,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    StatusUnavailable,
    SubmitOutcomeUnknown,
    UnexpectedRedirect,
    VideoRequest,
    WanConnectionError,
)
from wan_async.testing import FakeGateway, Fault, ScaledClock

from .conftest import SCALE, fixed_processing, make_client

pytestmark = pytest.mark.anyio

AFTER_UPSTREAM = [
    Fault.DO_REQUEST_FAILED_AFTER_CREATE,
    Fault.READ_RESPONSE_BODY_FAILED,
    Fault.UNMARSHAL_RESPONSE_BODY_FAILED,
    Fault.INVALID_RESPONSE,
    Fault.INSERT_TASK_FAILED,
]


def batch(n: int) -> list[VideoRequest]:
    """``n`` distinct requests."""
    return [VideoRequest(prompt=f"fault item {i}", model="wan2.6-t2v") for i in range(n)]


@pytest.fixture
async def gw() -> FakeGateway:  # type: ignore[misc]
    """A simulator with quick tasks."""
    async with FakeGateway(clock=ScaledClock(SCALE), processing_time=fixed_processing(60)) as g:
        yield g


@pytest.mark.parametrize("fault", [*AFTER_UPSTREAM, Fault.NO_TASK_ID])
async def test_errors_after_upstream_accepted_are_unknown_and_never_resubmitted(
    gw: FakeGateway, fault: Fault
) -> None:
    """A 500 sent after upstream accepted the task, or a 200 without id: unknown, one task."""
    gw.inject(fault, on="submit")
    async with make_client(gw, retry=RetryPolicy.no_wait()) as client:
        outcomes = await client.generate_many(batch(3), return_outcomes=True)
    unknown = outcomes[0].error
    assert isinstance(unknown, SubmitOutcomeUnknown)
    assert isinstance(unknown.cause, (ServerError, DecodeError))
    assert [o.ok for o in outcomes[1:]] == [True, True]
    assert max(gw.stats.tasks_per_prompt.values()) == 1
    assert gw.stats.tasks_created == 3  # the unknown one was created (and billed)


async def test_a_proxys_429_page_on_submit_is_retried(gw: FakeGateway) -> None:
    """A 429 HTML page from a proxy certainly created nothing: the submit is retried."""
    gw.inject(Fault.RATE_LIMIT_HTML, on="submit", times=2)
    async with make_client(gw, retry=RetryPolicy.no_wait()) as client:
        result = await client.generate(batch(1)[0])
    assert result.video_url
    assert gw.stats.tasks_created == 1
    assert client.stats.rate.throttles == 2


async def test_a_proxys_429_page_is_a_rate_limit_error(gw: FakeGateway) -> None:
    """With retries off, the proxy's page surfaces as RateLimitedError, not as unknown."""
    gw.inject(Fault.RATE_LIMIT_HTML, on="submit")
    async with make_client(gw, retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.create_task(batch(1)[0])
    assert not info.value.task_may_exist


async def test_a_redirect_on_submit_is_unknown_and_stops_the_batch(gw: FakeGateway) -> None:
    """A 3xx on a submit: that item is unknown, and the batch submits nothing more."""
    gw.inject(Fault.REDIRECT, on="submit")
    async with make_client(gw, max_concurrent_submits=1) as client:
        outcomes = await client.generate_many(batch(4), return_outcomes=True, max_in_flight=1)
    first = outcomes[0].error
    assert isinstance(first, SubmitOutcomeUnknown)
    assert isinstance(first.cause, UnexpectedRedirect)
    assert all(isinstance(o.error, BatchAborted) for o in outcomes[1:])
    assert gw.stats.tasks_created == 0


async def test_a_key_revoked_mid_batch_fails_every_task_once_with_its_id(
    gw: FakeGateway,
) -> None:
    """The key is revoked while tasks run: each item ends with the 401 and its task id."""
    async with make_client(gw) as client:
        outcomes: list[object] = []

        async def run() -> None:
            outcomes.extend(await client.generate_many(batch(6), return_outcomes=True))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while gw.stats.tasks_created < 4:
                await gw.clock.sleep(1)
            gw.revoke_key()
    created = {t.task_id for t in gw.tasks()}
    reported = {o.task_id for o in outcomes if o.task_id}  # type: ignore[attr-defined]
    assert reported == created
    for outcome in outcomes:
        assert isinstance(
            outcome.error,  # type: ignore[attr-defined]
            (AuthenticationError, BatchAborted),
        )
    assert max(gw.stats.tasks_per_prompt.values()) == 1


async def test_a_forbidden_key_fails_every_tracked_task(gw: FakeGateway) -> None:
    """A 403 on status checks (the key's group changed) ends every wait with that error."""
    async with make_client(gw) as client:
        handles = [await client.submit(r) for r in batch(3)]
        gw.forbid_key()
        with anyio.fail_after(5):
            for handle in handles:
                with pytest.raises(PermissionDeniedError):
                    await handle


async def test_an_answer_that_never_parses_ends_in_status_unavailable(gw: FakeGateway) -> None:
    """One task whose answers never parse fails after give_up_after; the others succeed."""
    policy = PollPolicy(refresh_period=gw.tick, give_up_after=300)
    async with make_client(gw, poll_policy=policy) as client:
        handles = [await client.submit(r) for r in batch(3)]
        gw.inject(Fault.NOT_JSON, on="get", times=None, task_id=handles[0].task_id)
        with anyio.fail_after(10), pytest.raises(StatusUnavailable) as info:
            await handles[0]
        # The first task searched the refresh loop for the others, which waited for it: when
        # it fails another takes over (they waited forever before).
        with anyio.fail_after(10):
            for handle in handles[1:]:
                assert (await handle).video_url
    assert isinstance(info.value.cause, DecodeError)
    assert info.value.failing_for >= 300


async def test_a_gateway_down_for_a_while_loses_nothing(gw: FakeGateway) -> None:
    """Connections refused for a few minutes: checks resume when it is back; all succeed."""
    async with make_client(gw, poll_policy=PollPolicy(refresh_period=gw.tick)) as client:
        handles = [await client.submit(r) for r in batch(3)]
        await gw.go_down("refuse")
        await gw.clock.sleep(180)
        await gw.come_back()
        with anyio.fail_after(10):
            for handle in handles:
                assert (await handle).video_url


async def test_a_gateway_that_stays_down_ends_every_wait(gw: FakeGateway) -> None:
    """A gateway that never comes back ends each wait with StatusUnavailable, in bounded time."""
    policy = PollPolicy(refresh_period=gw.tick, give_up_after=240)
    async with make_client(gw, poll_policy=policy) as client:
        handles = [await client.submit(r) for r in batch(3)]
        await gw.go_down("refuse")
        with anyio.fail_after(10):
            for handle in handles:
                with pytest.raises(StatusUnavailable) as info:
                    await handle
                assert isinstance(info.value.cause, WanConnectionError)
        await gw.come_back()
