"""Batch progress (issue 15, item 4): counts from what the client knows, an ETA from what it
learned, through ``on_progress=`` and ``OutcomeStream.progress()``, over loopback."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from wan_async import (
    BatchProgress,
    ClientClosedError,
    Outcome,
    PollPolicy,
    TaskHandle,
    VideoRequest,
    WanClient,
)
from wan_async import sync as wan_sync
from wan_async._progress import ProgressTracker
from wan_async.testing import FakeGateway, ScaledClock

from .conftest import SCALE, fixed_processing, make_client

pytestmark = pytest.mark.anyio

COUNTS = (
    "waiting",
    "submitting",
    "unchecked",
    "queued",
    "running",
    "saving",
    "succeeded",
    "failed",
    "outcome_unknown",
)


def requests(n: int, *, fail: frozenset[int] = frozenset()) -> list[VideoRequest]:
    return [
        VideoRequest(prompt=f"{'[fail] ' if i in fail else ''}scene {i}", model="wan2.6-t2v")
        for i in range(n)
    ]


def assert_whole(p: BatchProgress) -> None:
    """Every item is in exactly one count."""
    assert sum(getattr(p, name) for name in COUNTS) == p.total, p
    assert p.ended + p.in_flight + p.waiting == p.total


async def test_every_move_is_reported_and_every_item_counted_once(
    gateway: FakeGateway,
) -> None:
    events: list[BatchProgress] = []
    async with make_client(gateway) as client:
        results = await client.generate_many(
            requests(12, fail=frozenset({3})), return_outcomes=True, on_progress=events.append
        )
    assert sum(o.ok for o in results) == 11
    for p in events:
        assert_whole(p)
    ended = [p.ended for p in events]
    assert ended == sorted(ended), "ends are never taken back"
    last = events[-1]
    assert (last.succeeded, last.failed, last.ended, last.eta) == (11, 1, 12, 0.0)
    assert events[0].waiting == 12 - 1
    assert events[0].submitting == 1
    # Each state was seen on the way: on the wire, created and unchecked, queued upstream
    # (4 slots for 12 tasks), running.
    for name in ("submitting", "unchecked", "queued", "running"):
        assert any(getattr(p, name) for p in events), name


async def test_a_task_not_checked_yet_is_unchecked_never_queued(gateway: FakeGateway) -> None:
    """What the client has not asked about is its own count: the live line once said
    "queued 40" for tasks that had ended upstream."""
    events: list[BatchProgress] = []
    async with make_client(gateway) as client:
        stats_at: list[int] = []

        def seen(p: BatchProgress) -> None:
            events.append(p)
            stats_at.append(client.stats.poller.polls)

        await client.generate_many(requests(6), on_progress=seen)
    for p, polls in zip(events, stats_at, strict=True):
        # A task is counted queued or running only once a status check answered about it.
        assert p.queued + p.running <= polls
    created = [p for p in events if p.unchecked]
    assert created
    assert created[0].queued == created[0].running == 0


async def test_eta_is_none_until_something_ended_then_tracks_the_real_end() -> None:
    """Tasks of 90 s on 3 slots, 9 tasks: three waves. Once a wave has ended, the ETA (from
    the learned duration and window) is near the real time left."""
    # A third of the usual pace: a loaded machine's pauses stay well under the tolerance.
    clock = ScaledClock(SCALE / 3)
    async with FakeGateway(
        clock=clock, tick=5.0, slots=3, processing_time=fixed_processing(90.0)
    ) as gw:
        policy = PollPolicy(refresh_period=gw.tick)
        events: list[tuple[float, BatchProgress]] = []
        async with make_client(gw, poll_policy=policy, max_in_flight=3) as client:
            await client.generate_many(
                requests(9), on_progress=lambda p: events.append((clock.monotonic(), p))
            )
            end = clock.monotonic()
    before = [p for _, p in events if p.ended == 0]
    assert before
    assert all(p.eta is None for p in before)
    after_first_wave = [(at, p) for at, p in events if 3 <= p.ended < 6]
    assert after_first_wave
    for at, p in after_first_wave:
        assert p.eta is not None
        assert math.isfinite(p.eta)
        actual = end - at
        # Two waves of 90 s are left, less what the second wave has run: the estimate knows
        # the duration and the window, so it is off by a refresh or two, not by a wave.
        assert abs(p.eta - actual) <= 45.0, (p, actual)
        assert p.window == 3


async def test_progress_reads_the_stream_at_any_time(client: WanClient) -> None:
    stream = client.as_completed(requests(5))
    assert stream.progress() is None  # the batch starts with the first iteration
    seen: list[BatchProgress] = []
    async with stream:
        async for _ in stream:
            p = stream.progress()
            assert p is not None
            assert_whole(p)
            seen.append(p)
    assert [p.ended for p in seen] == [1, 2, 3, 4, 5]
    final = stream.progress()
    assert final is not None
    assert final.succeeded == 5
    assert final.eta == 0.0
    assert "5/5 ended" in str(final)
    assert "not yet checked 0" in str(final)


async def test_a_failing_callback_stops_the_batch_and_is_raised(client: WanClient) -> None:
    class Boom(Exception):
        pass

    calls: list[BatchProgress] = []

    def explode(p: BatchProgress) -> None:
        calls.append(p)
        if p.running:
            raise Boom("the progress bar broke")

    outcomes: list[Outcome] = []

    async def read() -> None:
        async for outcome in client.as_completed(requests(8), on_progress=explode):
            outcomes.append(outcome)

    with pytest.raises(Boom):
        await read()
    assert len(outcomes) == 8, "every item still yields its outcome"
    assert not all(o.ok for o in outcomes), "the batch stopped"
    assert calls[-1].running
    assert not any(p.running for p in calls[:-1]), "never called again once it raised"


async def test_an_async_callback_is_refused_before_anything_is_sent(
    client: WanClient, gateway: FakeGateway
) -> None:
    async def later(p: BatchProgress) -> None:
        pass

    with pytest.raises(TypeError, match="not awaited"):
        await client.generate_many(requests(2), on_progress=later)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BatchProgress"):
        client.as_completed(requests(2), on_progress=42)  # type: ignore[arg-type]
    assert client.stats.submits == 0


async def test_saving_is_counted_while_videos_are_saved(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    events: list[BatchProgress] = []
    async with make_client(gateway) as client:
        await client.generate_many(requests(3), download_dir=tmp_path, on_progress=events.append)
    assert any(p.saving for p in events)
    assert events[-1].succeeded == 3
    assert events[-1].saving == 0
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".mp4"] * 3  # noqa: ASYNC240


def test_sync_generate_many_passes_the_batch_options(tmp_path: Path) -> None:
    """``wan_async.sync.generate_many`` hands on_progress (and retry_failed,
    resubmit_unknown) to the batch, not to the client."""
    import anyio

    events: list[BatchProgress] = []

    async def serve() -> None:
        async with FakeGateway(
            clock=ScaledClock(SCALE), tick=15.0, slots=4, processing_time=fixed_processing(30.0)
        ) as gw:
            results = await anyio.to_thread.run_sync(
                lambda: wan_sync.generate_many(
                    requests(3),
                    api_key=gw.api_key,
                    base_url=gw.base_url,
                    clock=gw.clock,
                    journal=tmp_path / "j.jsonl",
                    retry_failed=True,
                    resubmit_unknown=True,
                    on_progress=events.append,
                )
            )
            assert len(results) == 3

    anyio.run(serve)
    assert events
    assert events[-1].succeeded == 3


class _Learned:
    """What a poller would have learned: tasks of 90 s, 3 at once, no task's start known."""

    def expected_end(self, handle: TaskHandle) -> float | None:
        return None

    def typical_duration(self, key: object) -> float | None:
        return 90.0

    def window(self) -> int:
        return 3


def test_a_task_ended_but_not_yet_reported_holds_no_slot_in_the_eta() -> None:
    """Between a task's end (its handle settled) and its outcome reaching the reader (a
    journal line is written first), the ETA once counted it as a task just started: 90 s
    too late for each item that waited for its slot."""
    clock = ScaledClock(SCALE)
    tracker = ProgressTracker(
        requests(4), clock=clock, outlook=_Learned(), cap=3, on_progress=None, failed=print
    )
    handle = TaskHandle("task-0", request=None, clock=clock)
    tracker.tracking(0, handle)
    handle._fail(ClientClosedError("gone"))  # settled; the batch has not reported it yet
    progress = tracker.progress()
    assert progress.waiting == 3
    assert progress.eta == 90.0  # the three waiting items start at once, on three free slots
