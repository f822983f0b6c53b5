"""The refresh estimator: clock offset, period and per-task phase, learned from answers alone.

The learning rules are checked one by one on hand-made samples, then together against a small
deterministic model of the gateway's refresh loop (a sleep, then a sequential pass over the
tasks) polled by a toy planner that asks where the estimator says. Times are model seconds.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable

import attrs
import pytest

from wan_async._refresh import (
    ClockOffset,
    Forecast,
    RefreshEstimator,
    RefreshPeriod,
    StampPosition,
)

# -- the model -------------------------------------------------------------------------------

#: (pass number, gateway time) -> seconds
Schedule = Callable[[int, float], float]


def constant(seconds: float) -> Schedule:
    """A sleep or pass length that never changes."""
    return lambda k, t: seconds


def ramp(start: float, end: float, *, begin: float, over: float) -> Schedule:
    """A pass length going from ``start`` to ``end`` over ``over`` seconds from ``begin``."""

    def length(k: int, t: float) -> float:
        share = min(1.0, max(0.0, (t - begin) / over))
        return start + (end - start) * share

    return length


class Loop:
    """The gateway's refresh loop: pass k starts at T_k, sleeps after it, and refreshes a task
    at ``position`` (0-1) of the way through it."""

    def __init__(
        self, *, sleep: Schedule, passes: Schedule | None = None, start: float = 1000.6
    ) -> None:
        passes = passes or constant(0.0)
        self.passes: list[tuple[float, float]] = []
        t, k = start, 0
        while t < start + 6000:
            length = passes(k, t)
            self.passes.append((t, length))
            t, k = t + length + sleep(k, t), k + 1
        self._starts = [p[0] for p in self.passes]

    def latest(self, position: float, born: float, at: float) -> float | None:
        """The latest refresh at or before ``at`` of a task created at ``born``."""
        i = bisect.bisect_right(self._starts, at) - 1
        while i >= 0:
            begin, length = self.passes[i]
            if begin <= born:
                return None
            refresh = begin + position * length
            if refresh <= at:
                return refresh
            i -= 1
        return None


@attrs.define
class Run:
    """What a polling run saw."""

    estimator: RefreshEstimator
    polls: int = 0
    stale: int = 0
    probes: int = 0
    #: For each poll that saw a new refresh: how long after that refresh it was sent.
    lags: list[float] = attrs.Factory(list)
    #: The period estimate after each answer.
    periods: list[float] = attrs.Factory(list)

    def lag(self, q: float) -> float:
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    @property
    def wasted(self) -> float:
        """Stale answers per answer that saw a new refresh."""
        return self.stale / max(1, self.polls - self.stale)


def poll(
    loop: Loop,
    *,
    hint: float,
    tasks: int = 10,
    until: float = 1000.0,
    offset: float = 0.0,
    every: int = 1,
    positions: bool = False,
    probes: bool = True,
    latency: float = 0.02,
    seed: int = 0,
) -> Run:
    """Submit ``tasks``, then check each at (nearly) every ``every``-th refresh as forecast.

    Args:
        offset: the client's clock minus the gateway's.
        positions: spread the tasks through the pass (else all at its start).
        probes: send the early GETs the estimator asks for.
    """
    rng = random.Random(seed)
    run = Run(RefreshEstimator(hint=hint))
    est = run.estimator
    born: dict[int, tuple[float, float]] = {}
    heap: list[tuple[float, int]] = []
    for i in range(tasks):
        created = 1000.0 + 0.37 * i  # gateway time
        born[i] = (rng.random() if positions else 0.0, created)
        sent = created + offset - latency
        est.observe_submit(i, sent=sent, received=sent + 2 * latency, created=math.floor(created))
        heapq.heappush(heap, (sent + 30.0, i))
    end = 1000.0 + offset + until
    while heap:
        sent, i = heapq.heappop(heap)
        if sent > end:
            break
        position, created = born[i]
        served = sent - offset + latency  # gateway time the GET is answered
        refresh = loop.latest(position, created, served)
        stamp = None if refresh is None else math.floor(refresh)
        previous = est._tasks[i].stamp
        run.polls += 1
        if stamp is not None and stamp == previous:
            run.stale += 1
        elif refresh is not None and previous is not None:
            run.lags.append(served - refresh)
        received = sent + 2 * latency
        est.observe(i, sent=sent, received=received, stamp=stamp)
        run.periods.append(est.period)
        after = received + (every - 1) * est.period
        ask = est.next_refresh(i, after).ask_at
        early = est.probe_at(i, after=after, now=received) if probes else None
        if early is not None and early < ask:
            run.probes += 1
            heapq.heappush(heap, (max(early, received), i))
        else:
            heapq.heappush(heap, (max(ask, received), i))
    return run


# -- the clock offset ------------------------------------------------------------------------


def test_offset_is_bracketed_by_submits_whichever_way_the_clock_is_off() -> None:
    """created_at stamps of submits bracket the offset from both sides, ahead or behind."""
    for truth in (7.0, -7.0, 0.3):
        clock = ClockOffset()
        for i in range(20):
            gateway = 5000.0 + 1.37 * i
            clock.observe_window(
                sent=gateway + truth - 0.01,
                received=gateway + truth + 0.01,
                stamp=math.floor(gateway),
            )
        low, high = clock.bounds
        assert low < truth <= high
        assert high - low < 0.1
        assert clock.offset == pytest.approx(truth, abs=0.05)


def test_a_clock_ahead_is_corrected_not_only_a_clock_behind() -> None:
    """A refresh first seen after a poll that missed it bounds the offset from below too."""
    clock = ClockOffset()
    # The client is 7 s ahead: a refresh at gateway 100.6 (stamped 100) happened after a poll
    # sent at local 107.5 and before an answer received at local 107.7.
    clock.observe_after(sent=107.5, stamp=100)
    clock.observe_before(received=107.7, stamp=100)
    low, high = clock.bounds
    assert 6.5 <= low < 7.0 <= high <= 7.7 + 1e-9
    assert clock.offset > 6.5  # 0.1.0 only ever moved its skew towards a clock behind


def test_a_clock_step_gives_way_to_the_newer_evidence() -> None:
    """Bounds that contradict newer ones (the client's clock was stepped) are dropped."""
    clock = ClockOffset()
    clock.observe_window(sent=100.0, received=100.1, stamp=100)
    clock.observe_window(sent=200.0 + 30, received=200.1 + 30, stamp=200)
    low, high = clock.bounds
    assert low < 30.0 <= high
    assert clock.offset == pytest.approx(29.6, abs=0.6)


def test_the_offset_is_zero_until_anything_is_known() -> None:
    """Before any stamp, the client's clock is taken as the gateway's."""
    assert ClockOffset().offset == 0.0
    assert ClockOffset().bounds == (-math.inf, math.inf)


# -- the period, rule by rule ----------------------------------------------------------------


def test_gaps_between_sparse_polls_never_inflate_the_period() -> None:
    """Gaps of 45, 60 and 75 s on a 15 s loop are multiples: the estimate stays at 15 s."""
    period = RefreshPeriod(15.0)
    at = 1000.0
    for gap in (45, 60, 75, 45, 60, 75, 45, 90):
        at += gap
        period.observe_gap(at=at, low=gap - 1, high=gap + 1)
        assert period.period <= 15.0  # 0.1.0 planned with the smallest gap: 45 s
    assert not period.certified  # and it knows it does not know: it wants a probe


def test_a_stale_answer_certifies_a_gap_as_one_period() -> None:
    """A poll 9 s after a refresh that saw nothing new leaves only m = 1 for a 15 s gap."""
    period = RefreshPeriod(40.0)
    period.observe_stale(at=1009.0, lower=9.0)
    assert period.observe_gap(at=1016.0, low=14.0, high=16.0, value=15.0, lower=9.0) == 1
    assert period.certified
    assert period.period == pytest.approx(15.0, abs=0.01)


def test_a_hint_too_long_is_corrected_by_the_first_shorter_gap() -> None:
    """A 45 s hint on a 15 s loop: one 15 s gap is enough to plan with 15 s."""
    period = RefreshPeriod(45.0)
    period.observe_gap(at=1015.0, low=14.0, high=16.0, value=15.0)
    assert period.period == pytest.approx(15.0, abs=0.01)
    assert not period.certified  # 15 s might still be 5 x 3 s: a probe will tell


def test_a_hint_too_short_is_corrected_by_stale_answers() -> None:
    """A 3 s hint on a 15 s loop: answers that see nothing new for longer raise the period."""
    period = RefreshPeriod(3.0)
    period.observe_stale(at=1005.0, lower=5.0)
    period.observe_stale(at=1011.0, lower=11.0)
    assert period.period > 11.0
    assert period.certified  # nothing shorter than 11 s is left: no multiple of a shorter one


def test_the_number_of_periods_in_a_gap_is_resolved_by_a_lower_bound() -> None:
    """Once the period is proven longer than 10 s, a 31 s gap is 2 periods, not 1 or 3."""
    period = RefreshPeriod(15.0)
    period.observe_stale(at=1000.0, lower=10.0)
    period.observe_gap(at=1015.0, low=14.5, high=15.5, value=15.0)  # certified: 15 s
    assert period.observe_gap(at=1050.0, low=30.0, high=32.0, value=31.0, lower=10.0) == 2


def test_the_period_follows_a_drift() -> None:
    """Certified samples growing from 15 to 40 s are followed, trend included."""
    period = RefreshPeriod(15.0)
    at, value = 1000.0, 15.0
    while value < 40.0:
        at += value
        period.observe_stale(at=at - 1, lower=0.6 * value)
        period.observe_gap(at=at, low=value - 0.2, high=value + 0.2, lower=0.6 * value)
        value += 0.5
    assert period.period == pytest.approx(40.0, abs=1.0)


# -- the shared position in the second -------------------------------------------------------


def test_refreshes_that_agree_share_where_in_the_second_they_land() -> None:
    """Three narrowed refreshes of the same second of the pass agree: others may use it."""
    position = StampPosition()
    assert position.window(1015, 15.0) is None
    position.observe(lo=1000.5, hi=1001.0, stamp=1000, period=15.0)
    position.observe(lo=1015.2, hi=1015.7, stamp=1015, period=15.0)
    position.observe(lo=1030.55, hi=1030.9, stamp=1030, period=15.0)
    window = position.window(1045, 15.0)
    assert window is not None
    assert 0.5 <= window[0] < 0.6 < window[1] <= 0.72


def test_a_refresh_that_disagrees_withdraws_the_shared_position() -> None:
    """Tasks of one second of the pass that land elsewhere: nothing is shared any more."""
    position = StampPosition()
    for stamp in (1000, 1015, 1030):
        position.observe(lo=stamp + 0.5, hi=stamp + 0.7, stamp=stamp, period=15.0)
    position.observe(lo=1045.1, hi=1045.3, stamp=1045, period=15.0)
    assert position.window(1060, 15.0) is None


def test_no_shared_position_when_the_period_is_not_whole_seconds() -> None:
    """With a 15.4 s period, where in its second a refresh lands moves every pass."""
    position = StampPosition()
    for stamp in (1000, 1015, 1030, 1046):
        position.observe(lo=stamp + 0.5, hi=stamp + 0.7, stamp=stamp, period=15.4)
    assert position.window(1061, 15.4) is None


# -- the estimator, answer by answer ---------------------------------------------------------


def test_a_not_start_answer_is_no_refresh() -> None:
    """NOT_START carries the insert time: the estimator learns only that no refresh came yet."""
    est = RefreshEstimator(hint=15.0)
    est.observe_submit("t", sent=1000.0, received=1000.1, created=1000)
    est.observe("t", sent=1010.0, received=1010.1, stamp=None)
    assert est.loop.samples == 0
    assert est.next_refresh("t", 1010.1).ask_at > 1010.0


def test_after_a_stale_answer_the_late_refresh_is_expected_soon() -> None:
    """A poll that came just before a refresh is followed up within a second, not a period."""
    est = RefreshEstimator(hint=15.0)
    for i in range(5):  # submits at varied fractions of a second pin the clock offset down
        created = 990.0 + 1.37 * i
        est.observe_submit(i, sent=created - 0.02, received=created + 0.02, created=int(created))
    for k in range(8):  # a 15 s loop refreshing at .6 past whole seconds, checked at .8
        est.observe("t", sent=1000.8 + 15 * k, received=1000.85 + 15 * k, stamp=1000 + 15 * k)
        est.observe("t", sent=1010.0 + 15 * k, received=1010.05 + 15 * k, stamp=1000 + 15 * k)
    assert est.next_refresh("t", 1110.0).ask_at < 1121.8
    est.observe("t", sent=1120.9, received=1120.95, stamp=1105)  # the refresh is late
    ask = est.next_refresh("t", 1120.95).ask_at
    assert 1120.9 < ask < 1122.0


def test_only_one_period_probe_is_out_at_a_time() -> None:
    """While the period is uncertified, one task at a time is asked early to measure it."""
    est = RefreshEstimator(hint=15.0)
    for task in ("a", "b"):
        est.observe(task, sent=1000.9, received=1001.0, stamp=1000)
    first = est.probe_at("a", after=1001.0, now=1001.0)
    assert first is not None
    assert 1001.0 < first < 1015.0
    est._tokens = 0.0  # no phase probe either
    assert est.probe_at("b", after=1001.0, now=1001.0) is None
    est.observe("a", sent=first, received=first + 0.05, stamp=1000)  # stale: certified
    assert est.certified


def test_a_new_task_is_expected_where_the_newest_task_refreshes() -> None:
    """A task not refreshed yet is forecast at the refresh of the newest task before it."""
    est = RefreshEstimator(hint=15.0)
    est.observe_submit("old", sent=990.0, received=990.05, created=990)
    est.observe("old", sent=1001.0, received=1001.05, stamp=1000)
    est.observe_submit("new", sent=1003.0, received=1003.05, created=1003)
    forecast = est.next_refresh("new", 1003.05)
    assert 1014.0 < forecast.at < 1017.0  # the next pass, not one a period later
    assert forecast.ask_at < 1020.0


def test_a_task_submitted_after_the_newest_refresh_waits_for_the_next_pass() -> None:
    """Submitted well after the reference refreshed: the next pass, not the one already done."""
    est = RefreshEstimator(hint=15.0)
    est.observe_submit("old", sent=990.0, received=990.05, created=990)
    est.observe("old", sent=1001.0, received=1001.05, stamp=1000)
    est.observe_submit("new", sent=1008.0, received=1008.05, created=1008)
    forecast = est.next_refresh("new", 990.0)  # asked for anything after the submit
    assert 1014.0 < forecast.at < 1017.0


def test_forecast_asks_after_its_margin() -> None:
    """A forecast's ask time is its expected time plus its margin."""
    assert Forecast(at=10.0, margin=0.5).ask_at == 10.5


# -- the estimator against the loop model ----------------------------------------------------


def test_a_15s_loop_is_learned_with_small_margins() -> None:
    """Hint right: checks land well under a second after each refresh, few answers stale."""
    run = poll(Loop(sleep=constant(15.0)), hint=15.0)
    assert run.estimator.period == pytest.approx(15.0, abs=0.05)
    assert run.estimator.certified
    assert run.lag(0.5) <= 0.3  # 0.1.0: 1.6 s (a fixed 1.5 s margin after whole seconds)
    assert run.lag(0.9) <= 0.5
    assert run.wasted <= 0.05


def test_sparse_checks_at_multiples_of_the_period_do_not_inflate_it() -> None:
    """Checking every third refresh of a 15 s loop: the estimate never climbs to 45 s."""
    run = poll(Loop(sleep=constant(15.0)), hint=15.0, every=3)
    assert max(run.periods) <= 16.0  # 0.1.0 drifted to 45-225 s
    assert run.estimator.period == pytest.approx(15.0, abs=0.1)
    # And the checks land just after the refresh they are for (no early one that can only see
    # a refresh in between).
    assert run.lag(0.9) <= 1.0


def test_a_3s_loop_with_a_15s_hint_is_found() -> None:
    """The hint is not a floor: a 3 s loop is planned as 3 s after a few probes."""
    run = poll(Loop(sleep=constant(3.0)), hint=15.0, until=300.0)
    assert run.estimator.period == pytest.approx(3.0, abs=0.05)
    assert run.estimator.certified
    assert run.lag(0.5) <= 0.3


def test_a_45s_hint_on_a_15s_loop_is_corrected() -> None:
    """The hint is not a ceiling either: 45 s on a 15 s loop becomes 15 s."""
    run = poll(Loop(sleep=constant(15.0)), hint=45.0)
    assert run.estimator.period == pytest.approx(15.0, abs=0.05)
    assert run.lag(0.5) <= 0.3


def test_without_probes_a_shorter_loop_is_not_certified() -> None:
    """Checks every 15 s of a 3 s loop alone cannot tell: the estimate says it is unsure."""
    run = poll(Loop(sleep=constant(3.0)), hint=15.0, until=300.0, probes=False)
    assert not run.estimator.certified


@pytest.mark.parametrize("offset", [7.0, -7.0])
def test_a_clock_off_by_seconds_changes_nothing(offset: float) -> None:
    """A client clock 7 s ahead or behind: offset learned, checks as prompt as with none."""
    run = poll(Loop(sleep=constant(15.0)), hint=15.0, offset=offset)
    low, high = run.estimator.clock.bounds
    assert low < offset <= high
    assert run.estimator.offset == pytest.approx(offset, abs=0.5)
    assert run.lag(0.5) <= 0.3  # 0.1.0 with a clock 7 s ahead: 9.1 s


def test_the_sub_second_phase_is_learned() -> None:
    """Refreshes at .6 s past whole-second stamps: checks land within a few tenths of them."""
    run = poll(Loop(sleep=constant(15.0), start=1000.6), hint=15.0, tasks=20, until=900.0)
    late = run.lags[len(run.lags) // 2 :]  # once learned
    assert sorted(late)[len(late) // 2] <= 0.25  # whole seconds alone: 0.4 s and the margin
    assert run.wasted <= 0.05


def test_tasks_at_different_places_in_a_growing_pass() -> None:
    """A sequential pass grows from 0 to 25 s: the period goes 15 -> 40 s and is followed."""
    loop = Loop(
        sleep=constant(15.0), passes=ramp(0.0, 25.0, begin=1100.0, over=600.0), start=1000.6
    )
    run = poll(loop, hint=15.0, tasks=20, until=1500.0, positions=True)
    assert run.estimator.period == pytest.approx(40.0, abs=0.5)
    assert run.lag(0.5) <= 1.0
    assert run.lag(0.9) <= 3.0
    assert run.wasted <= 0.2


def test_tasks_at_different_places_in_a_shrinking_pass() -> None:
    """The pass shrinks from 25 s to 0: the period goes 40 -> 15 s, checks stay prompt."""
    loop = Loop(
        sleep=constant(15.0), passes=ramp(25.0, 0.0, begin=1100.0, over=600.0), start=1000.6
    )
    run = poll(loop, hint=15.0, tasks=20, until=1500.0, positions=True)
    assert run.estimator.period == pytest.approx(15.0, abs=0.5)
    assert run.lag(0.5) <= 0.5
    assert run.lag(0.9) <= 3.0
    assert run.wasted <= 0.1


def test_a_trend_is_followed_for_a_couple_of_periods_only() -> None:
    """A pass that grew for a while is not extrapolated to grow forever (it once read 78 s)."""
    loop = RefreshPeriod(15.0)
    at = 0.0
    for k in range(12):
        gap = 20.0 + k  # the pass grows by a second per refresh
        at += gap
        loop.observe_stale(at=at, lower=0.6 * gap)
        loop.observe_gap(at=at, low=gap - 0.5, high=gap + 0.5, lower=0.6 * gap)
    now = loop.expected(at)
    assert now > 28.0  # the trend is followed...
    assert loop.expected(at + 1000.0) <= now + 2 * now * 0.1 + 1.0  # ...but not for 1000 s
