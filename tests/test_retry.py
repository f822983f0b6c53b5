"""Retry rules (SPEC §2, §4): transient GETs are retried, a submit only when never created."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from wan_async import (
    RateLimitedError,
    RetryPolicy,
    ServerError,
    SubmitOutcomeUnknown,
    VideoRequest,
    WanConnectionError,
)
from wan_async._transport import parse_retry_after
from wan_async.testing import FakeGateway, Fault

from .conftest import make_client

pytestmark = pytest.mark.anyio

REQUEST = VideoRequest(prompt="retry me", model="wan2.6-t2v")


@pytest.mark.parametrize(
    "fault",
    [
        Fault.RATE_LIMIT,
        Fault.RATE_LIMIT_RETRY_AFTER,
        Fault.UNAVAILABLE,
        Fault.RESET_BEFORE_CREATE,
        Fault.SERVER_ERROR,
        Fault.BAD_GATEWAY_HTML,
        Fault.TRUNCATED_JSON,
    ],
)
async def test_get_is_retried_through_transient_faults(gateway: FakeGateway, fault: Fault) -> None:
    """Every transient fault on a GET is retried until the answer comes."""
    async with make_client(gateway, retry=RetryPolicy.no_wait()) as client:
        created = await client.create_task(REQUEST)
        gateway.inject(fault, on="get", times=3, retry_after=1)
        snap = await client.get_task(created.task_id)
    assert snap.task_id == created.task_id
    assert gateway.stats.gets_per_task[created.task_id] >= 3


@pytest.mark.parametrize("fault", [Fault.RATE_LIMIT, Fault.UNAVAILABLE])
async def test_submit_retried_when_certainly_not_created(
    gateway: FakeGateway, fault: Fault
) -> None:
    """The gateway's own 429/5xx JSON means nothing was created: retried, one task in the end."""
    gateway.inject(fault, on="submit", times=2)
    async with make_client(gateway, retry=RetryPolicy.no_wait()) as client:
        await client.create_task(REQUEST)
    assert gateway.stats.tasks_per_prompt[REQUEST.prompt] == 1
    assert sum(gateway.stats.outcomes("submit").values()) == 3


@pytest.mark.parametrize(
    "fault",
    [
        Fault.SERVER_ERROR,
        Fault.BAD_GATEWAY_HTML,
        Fault.DROP_AFTER_CREATE,
        Fault.TRUNCATED_JSON,
        Fault.RESET_BEFORE_CREATE,
    ],
)
async def test_submit_never_retried_when_outcome_unknown(
    gateway: FakeGateway, fault: Fault
) -> None:
    """do_request_failed, a proxy's page, a dropped or cut answer: one attempt, then unknown."""
    gateway.inject(fault, on="submit")
    async with make_client(gateway, retry=RetryPolicy.no_wait()) as client:
        with pytest.raises(SubmitOutcomeUnknown):
            await client.create_task(REQUEST)
    assert sum(gateway.stats.outcomes("submit").values()) == 1
    assert gateway.stats.tasks_per_prompt[REQUEST.prompt] <= 1


async def test_attempts_run_out(gateway: FakeGateway) -> None:
    """After the last attempt the error itself is raised."""
    gateway.inject(Fault.UNAVAILABLE, on="submit", times=10)
    async with make_client(gateway, retry=RetryPolicy.no_wait(attempts=3)) as client:
        with pytest.raises(ServerError):
            await client.create_task(REQUEST)
    assert sum(gateway.stats.outcomes("submit").values()) == 3


async def test_retry_after_is_honoured(gateway: FakeGateway) -> None:
    """A Retry-After of 40 gateway seconds is waited out before the retry."""
    gateway.inject(Fault.RATE_LIMIT_RETRY_AFTER, on="submit", retry_after=40)
    async with make_client(gateway, retry=RetryPolicy(initial=0.1)) as client:
        started = client.clock.monotonic()
        await client.create_task(REQUEST)
        waited = client.clock.monotonic() - started
    assert waited >= 40


async def test_no_retry_past_the_callers_deadline(gateway: FakeGateway) -> None:
    """A retry that would outlast the caller's deadline is not attempted."""
    gateway.inject(Fault.RATE_LIMIT_RETRY_AFTER, on="get", retry_after=3600)
    async with make_client(gateway, retry=RetryPolicy()) as client:
        created = await client.create_task(REQUEST)
        with anyio.fail_after(1.0), pytest.raises(RateLimitedError):
            await client.get_task(created.task_id)


async def test_which_429_on_a_submit_the_budget_counts(gateway: FakeGateway) -> None:
    """A proxy's 429 (with Retry-After) counts towards the share of limited answers that
    slows every request; the gateway's task-shaped 429 without one says upstream is
    saturated: the submit is retried, the request budget is left alone."""
    gateway.inject(Fault.RATE_LIMIT_RETRY_AFTER, on="submit", times=2, retry_after=0)
    gateway.inject(Fault.RATE_LIMIT, on="submit", times=2)
    async with make_client(gateway, retry=RetryPolicy.no_wait(attempts=6)) as client:
        await client.create_task(REQUEST)
        assert client.stats.rate.throttles == 2
    assert gateway.stats.tasks_created == 1


async def test_a_rate_limiters_429s_have_their_own_count_of_tries(
    gateway: FakeGateway,
) -> None:
    """Eight 429s in a row on a submit (a limiter at its limit) are tried through, although
    five tries are allowed for failures: a 429 says "slower", not "failed" (a batch under a
    per-key limiter lost items to RateLimitedError before). One try means no retry at all."""
    gateway.inject(Fault.RATE_LIMIT_RETRY_AFTER, on="submit", times=8, retry_after=0)
    async with make_client(gateway, retry=RetryPolicy.no_wait(attempts=5)) as client:
        await client.create_task(REQUEST)
    assert gateway.stats.tasks_created == 1
    gateway.inject(Fault.RATE_LIMIT_RETRY_AFTER, on="submit", times=1, retry_after=0)
    async with make_client(gateway, retry=RetryPolicy.no_wait(attempts=1)) as client:
        with pytest.raises(RateLimitedError):
            await client.create_task(REQUEST)


async def test_connection_refused_submit_is_retried(gateway: FakeGateway) -> None:
    """Nothing listening is 'certainly not created': retried, then raised as itself."""
    async with make_client(gateway, retry=RetryPolicy.no_wait(attempts=2)) as client:
        client._transport._base_url = "http://127.0.0.1:9"  # discard port: nothing listens
        with pytest.raises(WanConnectionError):
            await client.create_task(REQUEST)


def test_backoff_grows_with_jitter_and_can_be_switched_off() -> None:
    """Delays double up to the maximum, jittered into [d/2, d]; no_wait gives zero."""
    policy = RetryPolicy(initial=1.0, maximum=8.0)
    rng = random.Random(1)
    delays = [policy.delay(n, retry_after=None, rng=rng) for n in range(1, 7)]
    for n, d in enumerate(delays, start=1):
        full = min(8.0, 2 ** (n - 1))
        assert full / 2 <= d <= full
    assert policy.delay(1, retry_after=12.5, rng=rng) == 12.5
    assert RetryPolicy.no_wait().delay(3, retry_after=12.5, rng=rng) == 0.0


def test_retry_after_header_forms() -> None:
    """Retry-After is delay-seconds or an HTTP-date; junk is ignored."""
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after(soon) or 0) <= 31
    assert parse_retry_after("yesterday") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0


async def _within(seconds: float, call: Callable[[], Awaitable[object]]) -> object:
    """Run ``call`` with no deadline of its own; fail the test if it takes longer than
    ``seconds`` (real time) to end, whatever way it ends."""
    outcome: list[object] = []

    async def run() -> None:
        try:
            outcome.append(await call())
        except Exception as exc:
            outcome.append(exc)
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.sleep(seconds)
        tg.cancel_scope.cancel()
    assert outcome, f"still running after {seconds} s"
    return outcome[0]


async def test_a_retry_after_beyond_the_policy_maximum_is_raised_not_waited(
    gateway: FakeGateway,
) -> None:
    """``Retry-After: 86400`` from a proxy: the error is raised at once (it was obeyed: "retry
    1/4 in 86400.0s"), with no deadline set by the caller."""
    gateway.inject(Fault.RATE_LIMIT_RETRY_AFTER, on="submit", retry_after=86400)
    async with make_client(gateway, retry=RetryPolicy(maximum=60)) as client:
        error = await _within(2.0, lambda: client.create_task(REQUEST))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 86400
    assert gateway.stats.tasks_created == 0


async def test_a_status_check_told_to_wait_a_day_comes_back_within_its_backoff(
    gateway: FakeGateway,
) -> None:
    """The poller caps a 429's Retry-After at its longest back-off: a day's pause of one
    task's checks would hold its video back for a day."""
    async with make_client(gateway) as client:
        handle = await client.submit(REQUEST)
        gateway.inject(Fault.RATE_LIMIT_RETRY_AFTER, on="get", retry_after=86400)
        result = await _within(3.0, lambda: handle.wait())
    assert not isinstance(result, Exception), result
