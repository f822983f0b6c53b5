"""A client machine whose wall clock steps (NTP, a restored VM): the engine schedules and
measures on the monotonic clock, and reads wall time only beside the gateway's stamps."""

from __future__ import annotations

import anyio
import pytest

from wan_async import VideoRequest
from wan_async.testing import FakeGateway

from .conftest import make_client

pytestmark = pytest.mark.anyio


def request(i: int) -> VideoRequest:
    """A distinct prompt per item."""
    return VideoRequest(prompt=f"scene {i}", model="wan2.6-t2v")


async def test_a_step_back_of_the_wall_clock_does_not_freeze_polling(
    gateway: FakeGateway,
) -> None:
    """30 minutes back mid-run (a task was detected 1,830 s late when the schedule used wall
    time): the 90 s tasks are seen ending at the refresh after their end."""
    clock = gateway.clock.shifted(0)  # the client's own clock, stepped alone
    async with make_client(gateway, clock=clock) as client:
        started = gateway.clock.monotonic()
        handles = [await client.submit(request(i)) for i in range(3)]
        await gateway.clock.sleep(30)
        clock.step(-1800)
        for handle in handles:
            await handle
        took = gateway.clock.monotonic() - started
    assert took <= 90 + 3 * gateway.tick


async def test_a_step_forward_during_an_outage_does_not_give_up_early(
    gateway: FakeGateway,
) -> None:
    """15 minutes forward during a 2-minute outage: give_up_after (600 s) counts the outage's
    2 minutes, not the step (a wait ended with StatusUnavailable "for 902 s")."""
    clock = gateway.clock.shifted(0)
    async with make_client(gateway, clock=clock) as client:
        handles = [await client.submit(request(i)) for i in range(3)]
        await gateway.clock.sleep(20)
        await gateway.go_down()
        await gateway.clock.sleep(10)
        clock.step(900)
        await gateway.clock.sleep(110)
        await gateway.come_back()
        with anyio.fail_after(300 / gateway.clock.scale):
            results = [await handle for handle in handles]
    assert [r.task_id for r in results] == [h.task_id for h in handles]
