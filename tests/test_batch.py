"""Batches: input order, per-item outcomes, back-pressure, deadlines and early stops."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import anyio
import pytest

from wan_async import (
    AuthenticationError,
    BatchAborted,
    DeadlineExceeded,
    Outcome,
    PollPolicy,
    RetryPolicy,
    StorageError,
    TaskFailed,
    TaskSnapshot,
    TaskStatus,
    VideoRequest,
    WanClient,
)
from wan_async.testing import FakeGateway, Fault, ScaledClock, sample_video

from .conftest import SCALE, fixed_processing, make_client

pytestmark = pytest.mark.anyio


def items(n: int, *, fail: set[int] = frozenset()) -> list[VideoRequest]:  # type: ignore[assignment]
    """``n`` distinct requests; those in ``fail`` are refused by the simulated moderation."""
    return [
        VideoRequest(prompt=f"{'[fail] ' if i in fail else ''}batch item {i}", model="wan2.6-t2v")
        for i in range(n)
    ]


async def test_results_come_in_input_order(client: WanClient) -> None:
    """generate_many returns one result per request, in the order given."""
    requests = items(10)
    results = await client.generate_many(requests)
    assert len(results) == 10
    assert len({r.task_id for r in results}) == 10


async def test_outcomes_instead_of_the_first_exception(
    gateway: FakeGateway, client: WanClient
) -> None:
    """return_outcomes=True keeps the successes; one failure does not stop the others."""
    outcomes = await client.generate_many(items(8, fail={2, 5}), return_outcomes=True)
    assert [o.index for o in outcomes] == list(range(8))
    assert [o.ok for o in outcomes] == [i not in {2, 5} for i in range(8)]
    assert isinstance(outcomes[2].error, TaskFailed)
    assert outcomes[2].task_id is not None
    assert gateway.stats.tasks_created == 8


async def test_without_outcomes_the_first_failure_is_raised_after_all_end(
    gateway: FakeGateway, client: WanClient
) -> None:
    """The error of the first failed item (by input order) is raised once every item ended."""
    with pytest.raises(TaskFailed) as info:
        await client.generate_many(items(6, fail={4, 1}))
    assert "batch item 1" in (gateway.task(info.value.task_id).prompt)
    assert all(t.status in ("SUCCESS", "FAILURE") for t in gateway.tasks())


async def test_as_completed_yields_each_outcome_once(client: WanClient) -> None:
    """as_completed yields every item exactly once, as it ends."""
    seen: list[Outcome] = [o async for o in client.as_completed(items(12, fail={0}))]
    assert sorted(o.index for o in seen) == list(range(12))
    assert sum(not o.ok for o in seen) == 1


async def test_in_flight_limit_gives_back_pressure(gateway: FakeGateway) -> None:
    """With max_in_flight=3 never more than 3 tasks are outstanding at once."""
    peak = 0
    async with make_client(gateway) as client:

        def watch(handle: object, snap: object) -> None:
            nonlocal peak
            peak = max(peak, client.stats.poller.outstanding)

        client.add_status_listener(watch)
        await client.generate_many(items(12), max_in_flight=3)
    assert peak <= 3
    # From the gateway's side too: a task is only created once an earlier one was seen done.
    tasks = gateway.tasks()
    for i, task in enumerate(tasks[3:], start=3):
        seen_done = [
            t for t in tasks[:i] if t.first_terminal_get and t.first_terminal_get <= task.created_at
        ]
        assert len(seen_done) >= i - 2


async def test_adaptive_window_tracks_upstream_capacity() -> None:
    """Without max_in_flight, a batch keeps only a little more than upstream's slots busy."""
    async with (
        FakeGateway(clock=ScaledClock(300), slots=3, processing_time=fixed_processing(90.0)) as gw,
        make_client(gw) as client,
    ):
        peak = 0

        def watch(handle: object, snap: object) -> None:
            nonlocal peak
            peak = max(peak, client.stats.poller.outstanding)

        client.add_status_listener(watch)
        outcomes = await client.generate_many(items(30), return_outcomes=True)
    assert all(o.ok for o in outcomes)
    # A few times upstream's slots while it probes for more, never the whole batch.
    assert peak <= 4 * 3
    assert gw.peak_running == 3


async def test_item_timeout(client: WanClient) -> None:
    """A per-item timeout ends the item with DeadlineExceeded; the task id is kept."""
    outcomes = await client.generate_many(items(2), timeout=10, return_outcomes=True)
    for o in outcomes:
        assert isinstance(o.error, DeadlineExceeded)
        assert isinstance(o.error, TimeoutError)
        assert o.task_id is not None
        assert o.error.task_id == o.task_id


async def test_batch_deadline(gateway: FakeGateway, client: WanClient) -> None:
    """The batch deadline ends unfinished items, submitted or not, each with one outcome."""
    outcomes = await client.generate_many(
        items(20), deadline=60, max_in_flight=4, return_outcomes=True
    )
    assert [o.index for o in outcomes] == list(range(20))
    assert all(isinstance(o.error, DeadlineExceeded) for o in outcomes)
    submitted = [o for o in outcomes if o.task_id is not None]
    assert len(submitted) == gateway.stats.tasks_created == 4


async def test_fail_fast_stops_the_rest(gateway: FakeGateway, client: WanClient) -> None:
    """fail_fast: the first failure stops the batch; the rest are BatchAborted."""
    outcomes = await client.generate_many(
        items(10, fail={0}), fail_fast=True, max_in_flight=2, return_outcomes=True
    )
    assert isinstance(outcomes[0].error, TaskFailed)
    aborted = [o for o in outcomes if isinstance(o.error, BatchAborted)]
    assert aborted
    assert all(
        isinstance(o.error, BatchAborted) and isinstance(o.error.cause, TaskFailed) for o in aborted
    )
    assert gateway.stats.tasks_created < 10


async def test_wrong_key_stops_the_batch_at_the_first_401(gateway: FakeGateway) -> None:
    """A rejected key is not 50 failed items: the batch stops after the first 401."""
    async with make_client(gateway, api_key="sk-wrong", max_concurrent_submits=1) as client:
        outcomes = await client.generate_many(items(50), return_outcomes=True)
    assert isinstance(outcomes[0].error, AuthenticationError)
    assert all(isinstance(o.error, BatchAborted) for o in outcomes[1:])
    assert gateway.stats.outcomes("submit")["401"] == 1


async def test_leaving_as_completed_early_stops_the_batch(
    gateway: FakeGateway, client: WanClient
) -> None:
    """Breaking out of the loop stops submitting; the client stays usable."""
    async for _ in client.as_completed(items(20), max_in_flight=2):
        break
    await anyio.sleep(0.05)
    created = gateway.stats.tasks_created
    assert created < 20
    assert (await client.generate(items(1)[0])).task_id


async def test_break_out_of_a_kept_stream_stops_the_batch(
    gateway: FakeGateway, client: WanClient
) -> None:
    """``break`` out of ``async for o in results`` with ``results`` kept in a variable stops
    the batch too (an async generator would stay open and bill every item, PEP 525)."""
    results = client.as_completed(items(20), max_in_flight=2)
    async for _ in results:
        break
    await anyio.sleep(400 / gateway.clock.scale)  # four rounds of 90 s tasks, had it gone on
    assert gateway.stats.tasks_created <= 4
    rest = [o async for o in results]  # the rest, reported cut short
    assert len(rest) == 19
    assert all(isinstance(o.error, BatchAborted) for o in rest if not o.ok)
    assert gateway.stats.tasks_created <= 4


async def test_a_stream_left_and_dropped_is_freed_at_once(
    gateway: FakeGateway, client: WanClient
) -> None:
    """Dropped after ``break``, a stream is freed by reference counting, not kept in a cycle
    with its generator until the garbage collector runs (then, often after the event loop
    was gone, the batch's open stream of outcomes was reported unclosed: a flaky
    ``ResourceWarning`` in CI)."""
    gc.disable()
    try:
        results = client.as_completed(items(20), max_in_flight=2)
        async for _ in results:
            break
        freed = weakref.ref(results)
        del results
        assert freed() is None
    finally:
        gc.enable()
    await anyio.sleep(400 / gateway.clock.scale)
    assert gateway.stats.tasks_created <= 4


async def test_leaving_async_with_stops_the_batch(gateway: FakeGateway, client: WanClient) -> None:
    """The deterministic style: leaving ``async with client.as_completed(...)`` stops it,
    whatever holds the stream; an exception in the loop goes through."""

    async def read_one() -> None:
        async with client.as_completed(items(20), max_in_flight=2) as results:
            async for _ in results:
                raise LookupError

    with pytest.raises(LookupError):
        await read_one()
    await anyio.sleep(400 / gateway.clock.scale)
    assert gateway.stats.tasks_created <= 4
    assert (await client.generate(items(1)[0])).task_id


async def test_cancelling_the_caller_stops_the_batch(
    gateway: FakeGateway, client: WanClient
) -> None:
    """A cancelled generate_many leaves no batch running behind it.

    A submit already on the wire is shielded and may still create its task (at most
    ``max_in_flight`` of them); nothing is sent after, although the 90 s tasks of the first
    two would have ended and made room twice over."""
    with anyio.move_on_after(0.05):
        await client.generate_many(items(30), max_in_flight=2)
    await anyio.sleep(200 / gateway.clock.scale)
    assert gateway.stats.tasks_created <= 2


async def test_download_dir_saves_each_video_as_it_succeeds(
    gateway: FakeGateway, client: WanClient, tmp_path: Path
) -> None:
    """download_dir: every successful item's video is on disk; failures have no file."""
    folder = tmp_path / "videos"
    outcomes = await client.generate_many(
        items(4, fail={1}), return_outcomes=True, download_dir=folder
    )
    assert [o.ok for o in outcomes] == [True, False, True, True]
    for o in outcomes:
        if o.ok:
            assert o.path is not None
            assert o.path.parent == folder
            assert o.path.read_bytes() == sample_video()
        else:
            assert o.path is None
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        o.path.name for o in outcomes if o.path
    )
    assert gateway.download_auth_headers == [False, False, False]


async def test_failed_download_keeps_the_result(gateway: FakeGateway, tmp_path: Path) -> None:
    """A video that cannot be saved still reports its result (the URL is valid 24 h)."""
    gateway.inject(Fault.SERVER_ERROR, on="download", times=10)
    async with make_client(gateway, retry=RetryPolicy.no_wait(attempts=2)) as client:
        [outcome] = await client.generate_many(
            items(1), return_outcomes=True, download_dir=tmp_path
        )
    assert outcome.result is not None
    assert isinstance(outcome.error, StorageError)
    assert outcome.error.status == 500
    assert not outcome.ok


async def test_the_window_does_not_grow_on_part_of_a_round() -> None:
    """Slow start, 4 slots upstream (FIFO), 8 tasks in flight, answers one at a time: at the
    first refresh the four that started answer first. Each start used to grow the window by
    two (8 -> 12) before the four waiting behind them were seen, and the batch let in four
    tasks that could only queue. The window now holds until the round has answered."""
    clock = ScaledClock(SCALE)
    policy = PollPolicy(refresh_period=3.0, max_concurrent_polls=1)
    async with (
        FakeGateway(clock=clock, tick=3.0, slots=4, processing_time=fixed_processing(60)) as gw,
        make_client(gw, poll_policy=policy) as client,
    ):
        peak, ended = 0, False

        def watch(handle: object, snap: TaskSnapshot) -> None:
            nonlocal peak, ended
            ended = ended or snap.status is TaskStatus.SUCCESS
            if not ended:  # later, tasks past their usual end stop counting (checks queue)
                peak = max(peak, client.stats.poller.outstanding)

        client.add_status_listener(watch)
        outcomes = await client.generate_many(items(16), return_outcomes=True)
    assert all(o.ok for o in outcomes)
    assert gw.peak_running == 4
    assert peak == 8  # was 12
