"""The request budget against the simulator over HTTP: which 429 slows what.

A rate limiter's 429 (the middleware's per-key bucket, a proxy's, any on a status check) slows
requests once such answers grow common; the gateway's own task-shaped 429 on a submit says
upstream is saturated and stops the window growing instead. Rare 429s change nothing.
"""

from __future__ import annotations

import math

import pytest

from wan_async import VideoRequest
from wan_async.testing import FakeGateway, Fault, ScaledClock

from .conftest import fixed_processing, make_client

pytestmark = pytest.mark.anyio


def items(n: int) -> list[VideoRequest]:
    return [VideoRequest(prompt=f"rate item {i}", model="wan2.6-t2v") for i in range(n)]


async def test_a_few_429s_on_checks_fail_nothing_and_leave_the_rate() -> None:
    """Six 429s among the status checks: every task succeeds, nothing is slowed for good
    (0.1.0 halved the rate at each one and recovered only after 10 quiet seconds)."""
    async with FakeGateway(
        clock=ScaledClock(300), slots=8, processing_time=fixed_processing(45.0)
    ) as gw:
        gw.inject(Fault.RATE_LIMIT, on="get", times=6)
        async with make_client(gw, max_requests_per_second=20.0) as client:
            handles = [await client.submit(request) for request in items(8)]
            results = [await h for h in handles]
            stats = client.stats
    assert len(results) == 8
    assert stats.poller.rate_limited == 6
    assert stats.rate.throttles == 6
    assert stats.rate.current_rate == 20.0  # the cap, still


async def test_random_429s_at_4_percent_never_collapse_the_rate() -> None:
    """429s on ~4 % of requests whatever the rate (not a limiter the rate could satisfy):
    the batch ends, and the rate never falls far (0.1.0 went from 10 to ~1 request/s)."""
    async with (
        FakeGateway(
            clock=ScaledClock(300),
            slots=20,
            processing_time=fixed_processing(30.0),
            fault_rates={Fault.RATE_LIMIT: 0.04},
            seed=7,
        ) as gw,
        make_client(gw) as client,
    ):
        outcomes = await client.generate_many(items(80), return_outcomes=True)
        rate = client.stats.rate
    assert all(o.ok for o in outcomes)
    assert gw.stats.tasks_created == 80
    assert rate.throttles > 0
    assert rate.limited_share < 0.1
    # Unlimited unless the share of 429s rose past the tolerance for a while; if it did, the
    # rate was halved from what was really sent, never to a trickle.
    assert math.isinf(rate.lowest_rate) or rate.lowest_rate >= 1.0


async def test_a_per_key_limiter_sets_the_rate() -> None:
    """A middleware limiting the key to a request every 2 s, below what the batch would send:
    the budget settles near it, most requests get through, every task succeeds, nothing is
    submitted twice."""
    async with (
        FakeGateway(
            clock=ScaledClock(300),
            slots=20,
            processing_time=fixed_processing(60.0),
            rate_limit=0.5,
            rate_burst=2,
        ) as gw,
        make_client(gw) as client,
    ):
        outcomes = await client.generate_many(items(60), return_outcomes=True)
        rate = client.stats.rate
    assert all(o.ok for o in outcomes)
    assert gw.stats.tasks_created == 60
    assert rate.lowest_rate <= 1.0
    assert rate.throttles <= 0.5 * rate.granted


async def test_upstream_saturation_on_submit_slows_the_window_not_the_rate() -> None:
    """The gateway's task-shaped 429 on a submit means upstream is full: the window stops
    growing, the request rate is left alone, the refused submits are retried (certainly not
    created) and nothing is billed twice."""
    async with FakeGateway(
        clock=ScaledClock(300), slots=4, processing_time=fixed_processing(60.0)
    ) as gw:
        gw.inject(Fault.RATE_LIMIT, on="submit", times=4)
        async with make_client(gw) as client:
            outcomes = await client.generate_many(items(30), return_outcomes=True)
            rate = client.stats.rate
            window = client._poller._window
    assert all(o.ok for o in outcomes)
    assert gw.stats.tasks_created == 30
    assert rate.throttles == 0
    assert math.isinf(rate.lowest_rate)
    assert not window.eager  # out of slow start
