"""The shared request budget: AIMD on 429s that converges under a storm and recovers after."""

from __future__ import annotations

import anyio
import pytest

from wan_async import RateLimitedError, VideoRequest
from wan_async._ratelimit import RateBudget
from wan_async.testing import FakeGateway, ScaledClock

from .conftest import SCALE, fixed_processing, make_client


class ManualClock:
    """A clock that moves only when told to."""

    scale = 1.0

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def test_a_sustained_storm_keeps_halving_the_rate() -> None:
    """429s every second for two minutes halve the rate every cooldown, recovery or not."""
    clock = ManualClock()
    budget = RateBudget(rate=20.0, burst=20, clock=clock, min_rate=0.1, cooldown=10.0)
    for second in range(120):
        clock.now += 1.0
        budget.throttled()
        assert budget.stats.current_rate <= max(0.1, 20.0 / 2 ** (second // 10 + 1))
    assert budget.stats.current_rate == pytest.approx(0.1)
    assert budget.stats.throttles == 120


def test_the_rate_recovers_step_by_step_once_quiet() -> None:
    """Each quiet cooldown gives back a tenth of the configured rate, up to it."""
    clock = ManualClock()
    budget = RateBudget(rate=20.0, burst=20, clock=clock, cooldown=10.0)
    budget.throttled()
    assert budget.stats.current_rate == 10.0
    clock.now += 9.9
    assert budget.stats.current_rate == 10.0
    clock.now += 0.1
    assert budget.stats.current_rate == 12.0
    clock.now += 5.0
    budget.throttled()  # a 429 within the cooldown of nothing: the quiet spell starts over
    assert budget.stats.current_rate == 6.0
    clock.now += 9.0
    assert budget.stats.current_rate == 6.0
    clock.now += 1000.0
    assert budget.stats.current_rate == 20.0
    assert budget.stats.lowest_rate == 6.0


@pytest.mark.anyio
async def test_a_429_storm_is_absorbed_below_the_gateways_limit() -> None:
    """Against a gateway limited to 1 request/s, 429s die down instead of going on at 5/s."""
    clock = ScaledClock(SCALE)
    async with (
        FakeGateway(
            clock=clock, rate_limit=1.0, rate_burst=2, processing_time=fixed_processing(900)
        ) as gw,
        make_client(gw, max_requests_per_second=20.0) as client,
    ):
        created = await client.create_task(VideoRequest(prompt="p", model="wan2.6-t2v"))
        start = clock.monotonic()
        answers: list[tuple[float, bool]] = []

        async def poll_as_fast_as_allowed() -> None:
            while (now := clock.monotonic() - start) < 300:
                await client._budget.acquire()
                try:
                    await client._get_once(created.task_id)
                except RateLimitedError:
                    client._budget.throttled()
                    answers.append((now, True))
                else:
                    answers.append((now, False))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(poll_as_fast_as_allowed)
    late = [limited for at, limited in answers if at >= 150]
    # Without convergence the rate stays at 5/s or more and most late answers are 429s.
    assert sum(late) <= 0.35 * len(late)
    assert sum(late) / 150 < 0.5  # 429s per second, late in the storm
    assert client.stats.rate.lowest_rate < 1.0
