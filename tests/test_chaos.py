"""Chaos: batches of hundreds of items with every simulator fault switched on at once.

Run alone with ``pytest -m chaos``. The assertions come from the simulator's own counters:
nothing is lost, nothing is billed twice, nothing hangs.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import anyio
import pytest

from wan_async import (
    DeadlineExceeded,
    Outcome,
    RetryPolicy,
    SubmitOutcomeUnknown,
    Timeouts,
    VideoRequest,
)
from wan_async.testing import FakeGateway, Fault, ScaledClock

from .conftest import make_client

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

#: Every fault at once, a few percent each: about one request in four misbehaves.
FAULTS = {
    Fault.RATE_LIMIT: 0.03,
    Fault.RATE_LIMIT_RETRY_AFTER: 0.02,
    Fault.SERVER_ERROR: 0.02,
    Fault.UNAVAILABLE: 0.02,
    Fault.BAD_GATEWAY_HTML: 0.02,
    Fault.RESET_BEFORE_CREATE: 0.02,
    Fault.DROP_AFTER_CREATE: 0.02,
    Fault.SLOW: 0.02,
    Fault.TRUNCATED_JSON: 0.02,
    Fault.STATUS_REGRESSION: 0.03,
    Fault.UNKNOWN_STATUS: 0.03,
}


def requests(n: int) -> list[VideoRequest]:
    """Distinct prompts (a few refused by moderation), mixed sizes and durations."""
    sizes = ["1280*720", "1920*1080", "960*960"]
    return [
        VideoRequest(
            prompt=f"{'[fail] ' if i % 37 == 0 else ''}chaos item {i}",
            model="wan2.6-t2v",
            size=sizes[i % 3],
            duration=5 if i % 2 else 10,
        )
        for i in range(n)
    ]


def check_accounting(gw: FakeGateway, outcomes: list[Outcome], n: int) -> None:
    """The invariants of SPEC §2 from the simulator's side."""
    # Every item ends in exactly one outcome.
    assert sorted(o.index for o in outcomes) == list(range(n))
    # No prompt has a second task: a submit is only ever repeated when certainly not created.
    assert max(gw.stats.tasks_per_prompt.values(), default=0) <= 1
    # Every task the simulator created is tracked by its item or reported as outcome-unknown.
    by_prompt = {o.request.prompt: o for o in outcomes}
    for task in gw.tasks():
        outcome = by_prompt[task.prompt]
        if isinstance(outcome.error, SubmitOutcomeUnknown):
            continue
        assert outcome.task_id == task.task_id, (task.prompt, outcome)
    # And no item claims a task the simulator never made.
    created = {t.task_id for t in gw.tasks()}
    assert {o.task_id for o in outcomes if o.task_id} <= created


async def test_chaos_batch(caplog: pytest.LogCaptureFixture) -> None:
    """300 items through every fault: one outcome each, no duplicates, no key in the logs."""
    caplog.set_level(logging.DEBUG)
    n = 300
    async with (
        FakeGateway(
            clock=ScaledClock(300),
            slots=40,
            seed=11,
            fault_rates=FAULTS,
            slow_delay=0.3,
            retry_after=5,
            failure_rate=0.03,
        ) as gw,
        make_client(
            gw,
            timeouts=Timeouts(read=0.15),
            retry=RetryPolicy(initial=2.0),
            max_requests_per_second=50.0,
        ) as client,
    ):
        with anyio.fail_after(90):  # real seconds: nothing may hang
            outcomes = await client.generate_many(
                requests(n), return_outcomes=True, deadline=4 * 3600
            )
    check_accounting(gw, outcomes, n)
    kinds = Counter(type(o.error).__name__ if o.error else "ok" for o in outcomes)
    assert kinds["ok"] > n * 0.7, kinds  # ~12% of submits end "unknown" by design
    assert not any(isinstance(o.error, DeadlineExceeded) for o in outcomes), kinds
    assert kinds["SubmitOutcomeUnknown"] > 0, kinds  # drops after create did happen
    faults = Counter(f for (_, f) in gw.stats.faults.elements())
    assert set(faults) == set(FAULTS), faults
    assert all(gw.api_key not in r.getMessage() for r in caplog.records)


async def test_chaos_crash_and_resume(tmp_path: Path) -> None:
    """A faulty batch stopped half-way, then resumed from its journal: still no duplicates."""
    journal = tmp_path / "chaos.jsonl"
    n = 200
    async with FakeGateway(
        clock=ScaledClock(300), slots=30, seed=5, fault_rates=FAULTS, slow_delay=0.3
    ) as gw:
        options: dict[str, object] = {
            "timeouts": Timeouts(read=0.15),
            "retry": RetryPolicy(initial=2.0),
        }
        async with make_client(gw, **options) as client:
            # The first run is cut off after a while, as a crash would.
            first = await client.generate_many(
                requests(n), return_outcomes=True, journal=journal, deadline=600
            )
        assert any(isinstance(o.error, DeadlineExceeded) for o in first)
        async with make_client(gw, **options) as client:
            with anyio.fail_after(90):
                outcomes = await client.generate_many(
                    requests(n), return_outcomes=True, journal=journal
                )
    check_accounting(gw, outcomes, n)
    assert not any(isinstance(o.error, DeadlineExceeded) for o in outcomes)
