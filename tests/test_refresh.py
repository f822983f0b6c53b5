"""The refresh estimator: clock offset, period and per-task phase, learned from answers alone.

The learning rules are checked one by one on hand-made samples (among them the sequences a
review replayed from an independent gateway), then together against a small deterministic
model of the gateway's refresh loop (a sleep, then a sequential pass over the tasks) polled by a
toy planner that asks when the estimator says. Times are model seconds.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Callable

import attrs
import pytest

from wan_async._refresh import (
    ClockOffset,
    Forecast,
    PeriodEstimate,
    RefreshEstimator,
    single_period,
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
    #: For each poll that saw a new refresh: how long after that refresh it was sent.
    lags: list[float] = attrs.Factory(list)
    #: The period estimate after each answer (None while unknown).
    periods: list[float | None] = attrs.Factory(list)

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
    hint: float | None,
    tasks: int = 10,
    until: float = 1000.0,
    offset: float = 0.0,
    every: int = 1,
    positions: bool = False,
    latency: float = 0.02,
    seed: int = 0,
) -> Run:
    """Submit ``tasks``, then check each at (nearly) every ``every``-th refresh, when the
    estimator says (plans of None wait until its generation moves, as the poller's do).

    Args:
        offset: the client's clock minus the gateway's.
        positions: spread the tasks through the pass (else all at its start).
    """
    rng = random.Random(seed)
    run = Run(RefreshEstimator(hint=hint))
    est = run.estimator
    born: dict[int, tuple[float, float]] = {}
    heap: list[tuple[float, int]] = []
    parked: set[int] = set()
    generation = est.generation
    for i in range(tasks):
        created = 1000.0 + 0.37 * i  # gateway time
        born[i] = (rng.random() if positions else 0.0, created)
        sent = created + offset - latency
        received = sent + 2 * latency
        est.observe_submit(i, sent=sent, received=received, created=math.floor(created))
        when = est.ask_at(i, after=received, now=received)
        if when is None:
            parked.add(i)
        else:
            heapq.heappush(heap, (when, i))
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
        if refresh is None or (stamp is not None and stamp == previous):
            run.stale += 1
        elif refresh is not None and previous is not None:
            run.lags.append(served - refresh)
        received = sent + 2 * latency
        est.observe(i, sent=sent, received=received, stamp=stamp)
        run.periods.append(est.period if est.known else None)
        planned = [i]
        if est.generation != generation:
            generation = est.generation
            planned += sorted(parked)
            parked.clear()
        for task in planned:
            after = received + (every - 1) * est.period if task == i else received
            when = est.ask_at(task, after=after, now=received)
            if when is None:
                parked.add(task)
            else:
                heapq.heappush(heap, (when, task))
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


def test_one_period_is_proven_by_a_stale_answer_past_half_the_gap() -> None:
    """Stale 9 s after a refresh, the next 15 s later: two periods would take over 18 s."""
    assert single_period(high=15.5, lower=9.0)
    assert not single_period(high=18.5, lower=9.0)
    assert not single_period(high=5.0, lower=0.0)


def test_gaps_between_sparse_polls_never_inflate_the_period() -> None:
    """Gaps of 45, 60 and 75 s on a 15 s loop are multiples: the estimate stays at 15 s."""
    period = PeriodEstimate(15.0)
    for gap in (45, 60, 75, 45, 60, 75, 45, 90):
        period.observe_gap(low=gap - 1, high=gap + 1, value=gap, lower=0.0)
        assert period.period <= 15.0  # 0.1.0 planned with the smallest gap: 45 s
    assert not period.certified  # and it knows it does not know: it wants a probe


def test_the_period_is_never_above_the_smallest_gap_seen() -> None:
    """The sequence replayed from the independent gateway (a 3 s loop): a 15 s guess, a first
    6 s gap, a 4 s gap, then one-period gaps. The old estimator sat at 5.1-5.8 s for half a
    minute although it had itself seen a 4 s gap; a proven bound is a bound."""
    period = PeriodEstimate(15.0)
    period.observe_gap(low=5.0, high=7.0, value=6.0, lower=0.0)
    assert period.period <= 7.0
    period.observe_gap(low=3.0, high=5.0, value=4.0, lower=0.0)
    assert period.period <= 5.0
    period.observe_stale(2.0)  # a stale answer 2 s after a refresh: certified from here
    for _ in range(12):
        period.observe_gap(low=2.6, high=3.4, value=3.0, lower=1.8)
        assert period.period <= 5.0
    assert period.period == pytest.approx(3.0, abs=0.05)


def test_a_stale_answer_certifies_a_gap_as_one_period() -> None:
    """A poll 9 s after a refresh that saw nothing new leaves only m = 1 for a 15 s gap."""
    period = PeriodEstimate(40.0)
    period.observe_stale(9.0)
    assert period.observe_gap(low=14.0, high=16.0, value=15.0, lower=9.0) == 1
    assert period.certified
    assert period.period == pytest.approx(15.0, abs=0.01)


def test_a_hint_too_long_is_corrected_by_the_first_shorter_gap() -> None:
    """A 45 s hint on a 15 s loop: one 15 s gap is enough to plan with 15 s."""
    period = PeriodEstimate(45.0)
    period.observe_gap(low=14.0, high=16.0, value=15.0, lower=0.0)
    assert period.period <= 16.0
    assert not period.certified  # 15 s might still be 5 x 3 s: a probe will tell


def test_a_hint_too_short_is_corrected_by_stale_answers() -> None:
    """A 3 s hint on a 15 s loop: answers that see nothing new for longer raise the period."""
    period = PeriodEstimate(3.0)
    period.observe_stale(5.0)
    period.observe_stale(11.0)
    assert period.period >= 11.0
    assert period.certified  # nothing shorter than 11 s is left: no multiple of a shorter one


def test_the_number_of_periods_in_a_gap_is_resolved_by_a_lower_bound() -> None:
    """Once the period is proven longer than 10 s, a 31 s gap is 2 periods, not 1 or 3."""
    period = PeriodEstimate(15.0)
    period.observe_stale(10.0)
    period.observe_gap(low=14.5, high=15.5, value=15.0, lower=10.0)
    assert period.observe_gap(low=30.0, high=32.0, value=31.0, lower=10.0) == 2


def test_the_period_follows_a_drift() -> None:
    """One-period samples growing from 15 to 40 s are followed within a few samples."""
    period = PeriodEstimate(15.0)
    value = 15.0
    while value < 40.0:
        period.observe_stale(0.6 * value)
        period.observe_gap(low=value - 0.2, high=value + 0.2, value=value, lower=0.6 * value)
        value += 0.5
    assert period.period == pytest.approx(40.0, abs=4.0)


def test_nothing_known_without_a_hint_until_a_gap() -> None:
    """Without a hint the period is unknown (a proven lower bound) until a gap is seen."""
    period = PeriodEstimate(None)
    assert not period.known
    period.observe_stale(4.0)
    assert not period.known
    assert period.period == 4.0
    period.observe_gap(low=5.0, high=6.0, value=5.0, lower=4.0)
    assert period.known
    assert period.period == pytest.approx(5.0)


# -- the estimator, answer by answer ---------------------------------------------------------


def test_a_not_start_answer_is_no_refresh() -> None:
    """NOT_START carries the insert time: the estimator learns only that no refresh came yet."""
    est = RefreshEstimator(hint=15.0)
    est.observe_submit("t", sent=1000.0, received=1000.1, created=1000)
    est.observe("t", sent=1010.0, received=1010.1, stamp=None)
    assert est.loop._gaps == 0
    assert est._tasks["t"].stamp is None


def _known_loop(est: RefreshEstimator) -> None:
    """Submits at varied fractions of a second pin the clock offset down (to zero)."""
    for i in range(5):
        created = 990.0 + 1.37 * i
        est.observe_submit(i, sent=created - 0.02, received=created + 0.02, created=int(created))


def test_after_a_stale_answer_the_late_refresh_is_expected_soon() -> None:
    """A check that came just before a late refresh is followed up within a second; the
    refresh it waits for is never skipped for the one a period later (which cost a period of
    lag on the sequential gateway)."""
    est = RefreshEstimator(hint=15.0)
    _known_loop(est)
    for k in range(8):  # a 15 s loop refreshing at .6 past whole seconds, checked at .8
        est.observe("t", sent=1000.8 + 15 * k, received=1000.85 + 15 * k, stamp=1000 + 15 * k)
        est.observe("t", sent=1010.0 + 15 * k, received=1010.05 + 15 * k, stamp=1000 + 15 * k)
    forecast = est.forecast("t", 1110.0)
    assert forecast is not None
    assert forecast.high < 1121.8
    est.observe("t", sent=1121.0, received=1121.05, stamp=1105)  # the refresh is late
    late = est.forecast("t", 1121.05)
    assert late is not None
    assert 1121.0 < late.high < 1122.5


def test_a_task_attached_by_id_is_placed_by_its_first_answer() -> None:
    """A task never submitted by this client (resumed from a journal) has no lower bound on
    its first refresh: it is placed on the loop by the answer alone (it crashed the check on
    a NaN before), and then forecast a period on. Nothing was submitted: the clock offset is
    unknown too."""
    est = RefreshEstimator(hint=15.0)
    est.observe("first", sent=1000.8, received=1000.85, stamp=1000)
    est.observe("attached", sent=1001.0, received=1001.05, stamp=1000)
    forecast = est.forecast("attached", 1001.05)
    assert forecast is not None
    assert 1014.0 < forecast.expected < 1017.0


def test_a_new_task_is_expected_where_the_newest_task_refreshes() -> None:
    """A task not refreshed yet is forecast at the refresh of the newest task before it."""
    est = RefreshEstimator(hint=15.0)
    est.observe_submit("old", sent=990.0, received=990.05, created=990)
    est.observe("old", sent=1001.0, received=1001.05, stamp=1000)
    est.observe_submit("new", sent=1003.0, received=1003.05, created=1003)
    forecast = est.forecast("new", 1003.05)
    assert forecast is not None
    assert 1013.0 < forecast.middle < 1018.0  # the next pass, not one a period later
    assert forecast.high < 1020.0


def test_a_task_submitted_before_the_newest_refresh_may_be_in_its_pass() -> None:
    """Submitted before the reference refreshed: the reference's own pass may have it."""
    est = RefreshEstimator(hint=15.0)
    est.observe_submit("new", sent=995.0, received=995.05, created=995)
    est.observe_submit("old", sent=990.0, received=990.05, created=990)
    est.observe("old", sent=1001.0, received=1001.05, stamp=1000)
    forecast = est.forecast("new", 995.05)
    assert forecast is not None
    assert forecast.high <= 1001.05


def test_the_loop_is_searched_by_one_task_while_the_others_wait() -> None:
    """Told nothing: one task asks at widening intervals, the others wait for what it finds."""
    est = RefreshEstimator()
    est.observe_submit("a", sent=1000.0, received=1000.01, created=1000)
    est.observe_submit("b", sent=1000.0, received=1000.01, created=1000)
    first = est.ask_at("a", after=1000.01, now=1000.01)
    assert first is not None
    assert first - 1000.0 < 0.1  # a few round trips, not a guess of 15 s
    assert est.ask_at("b", after=1000.01, now=1000.01) is None
    asks, now = [], 1000.01
    for _ in range(6):
        when = est.ask_at("a", after=now, now=now)
        assert when is not None
        est.observe("a", sent=when, received=when + 0.01, stamp=None)
        asks.append(when - 1000.0)
        now = when + 0.01
    gaps = [b - a for a, b in itertools.pairwise(asks)]
    assert gaps[-1] > gaps[0]  # widening


def test_forecast_width_and_middle() -> None:
    """A forecast's width and middle."""
    forecast = Forecast(low=10.0, high=11.0, expected=10.9)
    assert forecast.width == 1.0
    assert forecast.middle == 10.5


# -- the estimator against the loop model ----------------------------------------------------


def test_a_15s_loop_is_learned_with_small_lags() -> None:
    """Hint right: checks land well under a second after each refresh, few answers stale."""
    run = poll(Loop(sleep=constant(15.0)), hint=15.0)
    assert run.estimator.period == pytest.approx(15.0, abs=0.05)
    # Fresh answers only bound a refresh from above, so checks drift late within the stamp's
    # second until a stale answer bounds it from below: about half a second (P / 30).
    assert run.lag(0.5) <= 15.0 / 25  # 0.1.0: 1.6 s (a fixed 1.5 s margin after whole seconds)
    assert run.lag(0.95) <= 15.0 / 4
    assert run.wasted <= 0.1


@pytest.mark.parametrize("tick", [1.0, 2.0, 3.0, 15.0, 40.0])
def test_a_loop_is_found_from_scratch(tick: float) -> None:
    """Told nothing, loops of 1 to 40 s are found within a few periods and a few dozen GETs,
    and checks then land within a fifth of a period of each refresh."""
    run = poll(Loop(sleep=constant(tick)), hint=None, until=30 * tick)
    assert run.estimator.known
    assert run.estimator.period == pytest.approx(tick, rel=0.02)
    learned = run.lags[len(run.lags) // 3 :]
    assert sorted(learned)[int(0.95 * len(learned))] <= tick / 4
    assert run.wasted <= 0.5


def test_sparse_checks_at_multiples_of_the_period_do_not_inflate_it() -> None:
    """Checking every third refresh of a 15 s loop: the estimate never climbs to 45 s."""
    run = poll(Loop(sleep=constant(15.0)), hint=15.0, every=3)
    assert max(p for p in run.periods if p is not None) <= 16.0  # 0.1.0 drifted to 45-225 s
    assert run.estimator.period == pytest.approx(15.0, abs=0.1)
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
    assert run.lag(0.5) <= 15.0 / 20
    assert run.lag(0.95) <= 15.0 / 6


@pytest.mark.parametrize("offset", [7.0, -7.0])
def test_a_clock_off_by_seconds_changes_nothing(offset: float) -> None:
    """A client clock 7 s ahead or behind: offset learned, checks as prompt as with none."""
    run = poll(Loop(sleep=constant(15.0)), hint=None, offset=offset)
    low, high = run.estimator.clock.bounds
    assert low < offset <= high
    assert run.estimator.offset == pytest.approx(offset, abs=0.5)
    assert run.lag(0.5) <= 15.0 / 25  # 0.1.0 with a clock 7 s ahead: 9.1 s


def test_tasks_at_different_places_in_a_growing_pass() -> None:
    """A sequential pass grows from 0 to 25 s: the period goes 15 -> 40 s and is followed.
    Every refresh comes later than the last one did, so about one check in two is early."""
    loop = Loop(
        sleep=constant(15.0), passes=ramp(0.0, 25.0, begin=1100.0, over=600.0), start=1000.6
    )
    run = poll(loop, hint=15.0, tasks=20, until=1500.0, positions=True)
    assert run.estimator.period == pytest.approx(40.0, abs=1.0)
    assert run.lag(0.5) <= 1.0
    assert run.lag(0.9) <= 15.0 / 3
    assert run.wasted <= 1.0


def test_tasks_at_different_places_in_a_shrinking_pass() -> None:
    """The pass shrinks from 25 s to 0: the period goes 40 -> 15 s, checks stay prompt."""
    loop = Loop(
        sleep=constant(15.0), passes=ramp(25.0, 0.0, begin=1100.0, over=600.0), start=1000.6
    )
    run = poll(loop, hint=15.0, tasks=20, until=1500.0, positions=True)
    assert run.estimator.period == pytest.approx(15.0, abs=0.5)
    assert run.lag(0.5) <= 15.0 / 10
    assert run.lag(0.9) <= 15.0 / 3
    assert run.wasted <= 0.5


def test_two_periods_of_a_moving_period_are_not_taken_for_one() -> None:
    """Replayed from the yardstick's sequential gateway (seed 7): one-period gaps of 4.2-5.3 s
    (the pass grows and shrinks), then a task stale 5.22 s after a refresh, just before its
    next one, and seen refreshed again 8.9-9.9 s after the first: two periods (5.2 and 4.6
    s). "Stale past half the gap" took it for one, proved the period longer than 8.9 s and
    held the estimate at 8-9 s for 20 s: every task checked at every other refresh, a lag
    p95 of 5 s."""
    period = PeriodEstimate(None)
    period.observe_stale(4.19)
    for low, high, value, lower in [
        (4.19, 4.54, 5.0, 4.19),
        (5.34, 5.56, 5.0, 5.34),
        (4.29, 5.2, 5.0, 0.0),
        (3.92, 4.65, 4.0, 0.0),
    ]:
        assert period.observe_gap(low=low, high=high, value=value, lower=lower) == 1
    assert period.observe_gap(low=8.87, high=9.92, value=9.0, lower=5.22) == 2
    assert period.period < 5.6


def test_a_task_never_seen_is_forecast_from_now_not_from_minus_infinity() -> None:
    """A task attached by id and not asked about yet has no time after which to look:
    planning it again (when the learned durations moved) asked for the refresh after -inf,
    and ``ceil(-inf)`` failed the attached task with an OverflowError (seen on a fleet
    adopting a stopped client's tasks while its own ended). It is forecast at the next
    refresh of the loop, as any task with nothing before it."""
    est = RefreshEstimator(hint=15.0)
    _known_loop(est)
    for k in range(4):
        est.observe("t", sent=1000.8 + 15 * k, received=1000.85 + 15 * k, stamp=1000 + 15 * k)
    assert est.known
    forecast = est.forecast("attached", -math.inf)
    assert forecast is not None
    assert math.isfinite(forecast.expected)
    assert est.ask_at("attached", after=-math.inf, now=1050.0) is not None
