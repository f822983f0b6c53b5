"""Gateway models for self-calibration: sequential refresh passes, start delays, capacity."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from wan_async.testing import RefreshPass, ScaledClock, SystemClock

from .test_simulator import (
    EPOCH,
    Api,
    ManualClock,
    _no_server_errors,  # noqa: F401 - the autouse fixture applies here too
    advance,
    fixed,
    serve,
)

pytestmark = pytest.mark.anyio

E = int(EPOCH)


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


class JumpClock(ManualClock):
    """A clock whose sleeps return at once, having moved the clock on by what they slept."""

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await anyio.lowlevel.checkpoint()


# -- sequential passes -------------------------------------------------------------------------


async def test_sequential_pass_stamps_each_task_in_turn() -> None:
    """Each task is stored refresh_cost after the one before; its period is tick + pass length."""
    async with serve(refresh="sequential", tick=15, refresh_cost=1.0) as (gw, api):
        ids = [await api.submit(f"p{i}") for i in range(3)]
        advance(gw, 16.5)
        first = [(await api.get(i))["updated_at"] for i in ids]
        advance(gw, 2)
        second = [(await api.get(i))["updated_at"] for i in ids]
        advance(gw, 20)
        third = [(await api.get(i))["updated_at"] for i in ids]
        info = gw.task(ids[0])
    # Not refreshed yet, updated_at is created_at.
    assert first == [E + 16, E, E]
    assert second == [E + 16, E + 17, E + 18]
    # The next pass starts 15 s after the last one ended: a period of 15 + 3 * 1 = 18 s.
    assert third == [E + 34, E + 35, E + 36]
    assert info.refresh_times == (EPOCH + 16, EPOCH + 34)
    assert gw.stats.passes == [
        RefreshPass(start=EPOCH + 15, end=EPOCH + 18, refreshed=3, foreign=0),
        RefreshPass(start=EPOCH + 33, end=EPOCH + 36, refreshed=3, foreign=0),
    ]


async def test_other_tenants_lengthen_the_pass_and_their_count_can_change() -> None:
    """Other tenants' tasks come first in each pass and take their time; ours see the delay."""
    tenants = [(0, 5), (30, 0)]
    async with serve(refresh="sequential", tick=15, refresh_cost=1.0, other_tenants=tenants) as (
        gw,
        api,
    ):
        ids = [await api.submit(f"p{i}") for i in range(2)]
        advance(gw, 25)
        first = [(await api.get(i))["updated_at"] for i in ids]
        advance(gw, 20)
        second = [(await api.get(i))["updated_at"] for i in ids]
        gw.set_other_tenants(10)
        assert gw.other_tenants == 10
        advance(gw, 40)
        third = [(await api.get(i))["updated_at"] for i in ids]
    # Pass 1 at 15: five foreign tasks (16-20), then ours at 21 and 22.
    assert first == [E + 21, E + 22]
    # Pass 2 at 22 + 15 = 37, after the tenants left at 30: ours at 38 and 39.
    assert second == [E + 38, E + 39]
    # Pass 3 at 39 + 15 = 54, with ten foreign tasks first.
    assert third == [E + 65, E + 66]
    assert [p.foreign for p in gw.stats.passes] == [5, 0, 10]
    assert gw.stats.foreign_refreshes == 15


async def test_a_pass_walks_only_tasks_submitted_before_it_began() -> None:
    """A task submitted during a pass waits for the next one; the pass after is longer."""
    async with serve(refresh="sequential", tick=10, refresh_cost=2.0) as (gw, api):
        early = await api.submit("early")
        advance(gw, 11)  # the pass began at 10 and stores "early" at 12
        late = await api.submit("late")
        advance(gw, 20)  # next pass at 12 + 10 = 22: early at 24, late at 26
        a, b = await api.get(early), await api.get(late)
    assert (a["updated_at"], b["updated_at"]) == (E + 24, E + 26)
    assert [p.refreshed for p in gw.stats.passes] == [1, 2]


async def test_a_late_catch_up_shows_upstream_as_it_was_at_each_stamp() -> None:
    """Refreshes run late still store what upstream showed at their own times."""
    async with serve(
        refresh="sequential", tick=15, refresh_cost=1.0, processing_time=fixed(20)
    ) as (gw, api):
        task_id = await api.submit()
        # Passes store the task at 16 (still running) and 32 (ended at 20): both run late,
        # on this GET at 100.
        advance(gw, 100)
        data = await api.get(task_id)
        info = gw.task(task_id)
    assert info.upstream_end == EPOCH + 20
    assert info.refresh_times == (EPOCH + 16, EPOCH + 32)
    assert (data["status"], data["start_time"], data["finish_time"]) == ("SUCCESS", E + 16, E + 32)
    assert data["data"]["output"]["end_time"] == "2025-12-10 09:06:39.000"  # EPOCH + 20


async def test_first_pass_at_a_sub_second_offset_is_hidden_by_whole_seconds() -> None:
    """first_refresh=0.7: passes at .7 s; updated_at (whole seconds) reads .7 s early."""
    async with serve(refresh="sequential", tick=3, first_refresh=0.7) as (gw, api):
        task_id = await api.submit()
        advance(gw, 3.5)
        before = (await api.get(task_id))["updated_at"]
        advance(gw, 0.25)
        after = (await api.get(task_id))["updated_at"]
        info = gw.task(task_id)
    assert (before, after) == (E, E + 3)
    assert info.refresh_times == (EPOCH + 0.7, EPOCH + 3.7)


async def test_sequential_passes_run_by_themselves_on_a_scaled_clock() -> None:
    """The loop alone runs the passes on a fast clock, each store at its exact time."""
    clock = ScaledClock(300)
    async with serve(
        clock=clock, refresh="sequential", tick=3, refresh_cost=0.5, processing_time=fixed(1000)
    ) as (gw, api):
        await api.submit("a")
        await api.submit("b")
        with anyio.fail_after(5):
            while len(gw.stats.passes) < 3:  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.005)
        a, b = gw.tasks()
    passes = gw.stats.passes
    period = 3 + 2 * 0.5
    assert passes[0].start == gw.started_at + 3
    offsets = [p.start - passes[0].start for p in passes[:3]]
    assert offsets == pytest.approx([0, period, 2 * period], abs=1e-6)
    assert a.refresh_times[:2] == (passes[0].start + 0.5, passes[1].start + 0.5)
    assert b.refresh_times[:2] == (passes[0].start + 1.0, passes[1].start + 1.0)


async def test_tick_mode_keeps_its_fixed_schedule_with_a_first_offset() -> None:
    """refresh="tick" with first_refresh: passes at start + first + n * tick, all at once."""
    async with serve(clock=JumpClock(), tick=3, first_refresh=0.5) as (gw, _):
        with anyio.fail_after(5):
            while len(gw.stats.passes) < 3:
                await anyio.lowlevel.checkpoint()
        passes = gw.stats.passes[:3]
    assert [p.start - gw.started_at for p in passes] == pytest.approx([0.5, 3.5, 6.5])
    assert all(p.start == p.end for p in passes)


async def test_refresh_limit_counts_other_tenants() -> None:
    """max_refresh_per_tick covers other tenants' tasks too: ours share what is left."""
    async with serve(max_refresh_per_tick=3, other_tenants=2, processing_time=fixed(1000)) as (
        gw,
        api,
    ):
        ids = [await api.submit(f"p{i}") for i in range(2)]
        advance(gw, 15)
        assert gw.refresh_now() == 1
        advance(gw, 15)
        assert gw.refresh_now() == 1
        stamps = [(await api.get(i))["updated_at"] for i in ids]
    assert stamps == [E + 15, E + 30]


# -- upstream: start delay and capacity --------------------------------------------------------


async def test_start_delay_keeps_a_task_queued_with_a_free_slot() -> None:
    """start_delay: a task waits QUEUED for its delay even though upstream has free slots."""
    async with serve(slots=4, start_delay=(20, 20), processing_time=fixed(100)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 15)
        gw.refresh_now()
        queued = await api.get(task_id)
        advance(gw, 10)
        gw.refresh_now()
        running = await api.get(task_id)
        info = gw.task(task_id)
    assert (queued["status"], queued["start_time"]) == ("QUEUED", 0)
    assert gw.upstream_running == 1
    assert (running["status"], running["start_time"]) == ("IN_PROGRESS", E + 25)
    assert info.upstream_start == EPOCH + 20


async def test_start_delays_are_drawn_per_task_and_seeded() -> None:
    """Each task draws its own delay within (low, high); the same seed draws the same ones."""
    runs = []
    for _ in range(2):
        async with serve(slots=50, start_delay=(5, 30), seed=4, processing_time=fixed(50)) as (
            gw,
            api,
        ):
            for i in range(20):
                await api.submit(f"p{i}")
            advance(gw, 1000)
            gw.refresh_now()
            runs.append([(t.upstream_start or 0) - t.created_at for t in gw.tasks()])
    assert runs[0] == runs[1]
    assert all(5 <= d <= 30 for d in runs[0])
    assert len(set(runs[0])) == 20


async def statuses(api: Api, ids: list[str]) -> list[str]:
    """The gateway's status of each task, read over HTTP."""
    return [(await api.get(i))["status"] for i in ids]


async def test_set_slots_changes_how_many_run() -> None:
    """set_slots(): more slots start queued tasks at once; fewer retire slots as tasks end."""
    async with serve(slots=1, processing_time=fixed(100)) as (gw, api):
        ids = [await api.submit(f"p{i}") for i in range(5)]
        advance(gw, 10)
        gw.set_slots(3)
        assert gw.slots == 3
        gw.refresh_now()
        widened = await statuses(api, ids)
        advance(gw, 10)
        gw.set_slots(1)
        advance(gw, 90)  # t = 110: the first ended at 100, the other two at 110
        gw.refresh_now()
        narrowed = await statuses(api, ids)
        starts = [t.upstream_start for t in gw.tasks()]
    assert widened == ["IN_PROGRESS"] * 3 + ["QUEUED"] * 2
    assert narrowed == ["SUCCESS"] * 3 + ["IN_PROGRESS", "QUEUED"]
    assert starts[:4] == [EPOCH, EPOCH + 10, EPOCH + 10, EPOCH + 110]
    assert gw.peak_running == 3


async def test_capacity_schedule_changes_slots_mid_batch() -> None:
    """capacity=[(t, n), ...] changes upstream's slots at those clock seconds from start."""
    async with serve(slots=1, capacity=[(100, 3), (200, 0)], processing_time=fixed(150)) as (
        gw,
        api,
    ):
        ids = [await api.submit(f"p{i}") for i in range(5)]
        advance(gw, 1000)
        gw.refresh_now()
        tasks = gw.tasks()
        # Capacity 0 from 200 on: the last two never start.
        final = await statuses(api, ids)
    assert [t.upstream_start for t in tasks] == [EPOCH, EPOCH + 100, EPOCH + 100, EPOCH + 150, None]
    assert final == ["SUCCESS"] * 4 + ["QUEUED"]
    assert gw.slots == 0


# -- the client's clock ------------------------------------------------------------------------


def test_shifted_clocks_read_ahead_or_behind_at_the_same_rate() -> None:
    """shifted(s) reads s seconds more (or less) on the same origin and rate."""
    base = ScaledClock(300, epoch=EPOCH, origin=1000.0)
    ahead = base.shifted(7)
    behind = ahead.shifted(-10)
    assert (ahead.scale, ahead.origin, ahead.epoch) == (300, 1000.0, EPOCH + 7)
    assert behind.epoch == EPOCH - 3
    system = SystemClock().shifted(-2.5)
    assert (system.offset, system.scale) == (-2.5, 1.0)
    assert system.shifted(0.5).offset == -2.0
    assert "offset=-2.5" in repr(system)
    with pytest.raises(ValueError, match="finite"):
        base.shifted(float("nan"))


# -- stats for plots ---------------------------------------------------------------------------


async def test_stats_log_requests_passes_and_finishes_over_time() -> None:
    """request_log, request_counts and finishes give the timelines a benchmark plots."""
    async with serve(processing_time=fixed(20)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 5)
        await api.get(task_id)
        await api.get(task_id)
        advance(gw, 25)
        gw.refresh_now()
        await api.get(task_id)
        await api.get_raw("task_missing")
    stats = gw.stats
    assert [(r.at, r.kind, r.outcome, r.task_id) for r in stats.request_log] == [
        (EPOCH, "submit", "200", None),
        (EPOCH + 5, "get", "200", task_id),
        (EPOCH + 5, "get", "200", task_id),
        (EPOCH + 30, "get", "200", task_id),
        (EPOCH + 30, "get", "400", "task_missing"),
    ]
    assert stats.request_times("get", "400") == [EPOCH + 30]
    assert stats.request_counts("get", bucket=10, start=EPOCH) == [2, 0, 0, 2]
    assert stats.request_counts("get", bucket=10, outcome="200") == [2, 0, 0, 1]
    (finish,) = stats.finishes
    assert (finish.task_id, finish.status) == (task_id, "SUCCESS")
    assert (finish.upstream_end, finish.gateway_finish) == (EPOCH + 20, EPOCH + 30)
    assert stats.passes == [RefreshPass(start=EPOCH + 30, end=EPOCH + 30, refreshed=1, foreign=0)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"refresh": "round-robin"},
        {"refresh_cost": 0.1},
        {"refresh": "sequential", "refresh_cost": -1},
        {"first_refresh": -1},
        {"other_tenants": -1},
        {"other_tenants": [(-5, 1)]},
        {"capacity": [(10, -1)]},
        {"capacity": "soon"},
        {"start_delay": (10, 5)},
    ],
)
def test_new_settings_are_validated(kwargs: dict[str, object]) -> None:
    """Bad refresh, tenant, capacity and delay settings fail at construction."""
    from wan_async.testing import FakeGateway

    with pytest.raises((ValueError, TypeError)):
        FakeGateway(**kwargs)  # type: ignore[arg-type]
