"""The gateway's refresh loop as one client sees it: clock offset, period, each task's phase.

The gateway does not ask upstream when a client GETs a task (SPEC §3.2): a background loop
sleeps, then refreshes every unfinished task one after another and stamps ``updated_at`` (whole
seconds, truncated). So each task is refreshed once per *period* (the sleep plus the length of
a pass, which drifts with load) at its own *phase* (its place in the pass), and a GET between
two refreshes returns the same data. Every answer is evidence, and all of it is exact
inequalities, never guesses:

* an answer sent at local time ``s`` that shows stamp ``u`` proves that the task's next refresh
  comes after ``s`` (whether ``u`` is new or not);
* an answer received at ``v`` that shows a new stamp ``u`` proves a refresh in ``(s0, v]``, where
  ``s0`` is when the last answer showing the previous stamp was sent;
* the gateway stamped ``u`` at a gateway time in ``[u, u + 1)``: with the previous two, that
  bounds the clock offset from both sides (:class:`ClockOffset`);
* the gap between two stamps of one task is ``m`` periods for an unknown ``m >= 1`` (sparse
  polls skip refreshes): an answer that showed no new stamp ``x`` seconds after a refresh proves
  the period is longer than ``x``, which rules out every ``m`` with ``gap / m <= x``
  (:class:`RefreshPeriod`). A period not proven so is *uncertified*, and the estimator asks for
  a probe: one GET a little more than half a period after a refresh settles it.

Each task's latest refresh is kept as an interval of the client's clock, carried forward by
the period (plus the task's own bias: its place in a pass that grows or shrinks) and narrowed
by every answer; where in its whole second a refresh lands is shared between tasks refreshed
in the same second of the pass (:class:`StampPosition`). :class:`RefreshEstimator` holds it
all and answers the poller's two questions: when will this task's next refresh be (a
:class:`Forecast`: a time and a margin), and is an early GET worth it (a probe).

Times are in the client's own clock (what ``Clock.time()`` returns), never converted: a
refresh bracket built from local send and receive times holds whatever the offset. Stamps are
gateway Unix seconds. Nothing here does I/O or reads a clock: times are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import attrs

#: SPEC §3.2: the loop sleeps between 1 s and 5 min (15 s by default, 3 s seen).
MIN_PERIOD = 1.0
MAX_PERIOD = 300.0
_INF = math.inf


@attrs.frozen(kw_only=True)
class Forecast:
    """When a task's next refresh is expected, in the client's clock.

    The refresh falls in ``[at - margin, at + margin]`` as far as the estimator knows; a GET sent
    at ``at + margin`` (:attr:`ask_at`) sees it.
    """

    at: float
    margin: float

    @property
    def ask_at(self) -> float:
        """When to send a GET that sees this refresh."""
        return self.at + self.margin


class ClockOffset:
    """How far the client's clock is ahead of the gateway's, in seconds (negative: behind).

    Learned from events the gateway stamped in whole seconds (``stamp <= g < stamp + 1`` in
    gateway time) and placed in the client's clock: a submit answer's ``created_at`` was stamped
    between sending and receiving it (:meth:`observe_window`); any ``updated_at`` was stamped
    before its answer was received (:meth:`observe_before`); a refresh first seen after a poll
    that did not see it was stamped after that poll was sent (:meth:`observe_after`). The offset
    is bracketed from both sides; older bounds relax by ``drift`` seconds per second, so that a
    slowly drifting clock is followed, and a contradiction (a clock step) is settled in favour
    of the newer evidence.
    """

    def __init__(self, *, drift: float = 1e-4) -> None:
        self._drift = drift
        self._low = -_INF
        self._low_at = 0.0
        self._high = _INF
        self._high_at = 0.0

    @property
    def bounds(self) -> tuple[float, float]:
        """The offset is known to lie in ``(low, high]`` (infinite until learned)."""
        return self._low, self._high

    @property
    def offset(self) -> float:
        """The offset to use: the middle of what is known (0 before anything is)."""
        low, high = self._low, self._high
        if low > -_INF and high < _INF:
            return (low + high) / 2
        if high < _INF:
            # One bound only: a stamp is on average half a second behind the event.
            return high - 0.5
        if low > -_INF:
            return low + 0.5
        return 0.0

    def observe_window(self, *, sent: float, received: float, stamp: float) -> None:
        """An event stamped ``stamp`` happened between ``sent`` and ``received`` (local)."""
        self.observe_after(sent=sent, stamp=stamp)
        self.observe_before(received=received, stamp=stamp)

    def observe_before(self, *, received: float, stamp: float) -> None:
        """An event stamped ``stamp`` happened before ``received`` (local)."""
        bound = received - stamp
        if self._high < _INF:
            self._high += self._drift * max(0.0, received - self._high_at)
        self._high_at = max(self._high_at, received)
        if bound < self._high:
            self._high = bound
            if self._low >= bound:
                self._low = -_INF  # a clock step: the older bound gives way

    def observe_after(self, *, sent: float, stamp: float) -> None:
        """An event stamped ``stamp`` happened after ``sent`` (local)."""
        bound = sent - stamp - 1.0
        if self._low > -_INF:
            self._low -= self._drift * max(0.0, sent - self._low_at)
        self._low_at = max(self._low_at, sent)
        if bound > self._low:
            self._low = bound
            if self._high <= bound:
                self._high = _INF


class RefreshPeriod:
    """The period between two refreshes of a task, learned from gaps that may span several.

    Args:
        hint: the period to assume until evidence says otherwise (``PollPolicy.refresh_period``):
            neither a floor nor a ceiling.

    Evidence comes in two forms. :meth:`observe_stale`: an answer proved the period longer than
    some ``lower`` (no new refresh that long after the last one). :meth:`observe_gap`: two
    refreshes of one task, ``m >= 1`` periods apart, ``m`` unknown. A gap always bounds the
    period from above; it is a *sample* of the period only once ``m`` is resolved: because lower
    bounds leave only ``m = 1`` (which also *certifies* the estimate), or, once the estimate is
    certified, because one ``m`` fits it. An uncertified estimate is never moved up by a gap, so
    multiples cannot inflate it. Samples move a level and a trend (the period drifts as the
    gateway's load changes), smoothed as TCP smooths round-trip times.
    """

    def __init__(self, hint: float) -> None:
        #: The period at time ``_level_at``, and how fast it changes (seconds per second).
        self._level = _clamp(hint)
        self._level_at = -_INF
        self._slope = 0.0
        #: The level some time ago, to measure the trend against.
        self._anchor = (-_INF, self._level)
        #: Mean deviation of samples from the estimate (how much the period moves).
        self._dev = 0.1 * self._level
        #: Largest recent proven lower bound, smallest recent gap (an upper bound), with when.
        self._lower = 0.0
        self._lower_at = -_INF
        self._upper = _INF
        self._upper_at = -_INF
        self._certified_at = -_INF
        self._now = -_INF
        #: Certified samples taken so far.
        self.samples = 0

    @property
    def period(self) -> float:
        """The period to plan with, in seconds: that of a gap starting at the latest evidence."""
        return self._at(self._now + self._level / 2)

    @property
    def spread(self) -> float:
        """How far one period may differ from :attr:`period` (grows while the period drifts)."""
        return max(0.02, 2 * self._dev)

    @property
    def certified(self) -> bool:
        """Whether recent evidence rules out that the true period is a fraction of the estimate."""
        return self._now - self._certified_at <= self._ttl()

    @property
    def floor(self) -> float:
        """A recent proven lower bound on the period (0 when none is recent)."""
        return self._lower if self._now - self._lower_at <= self._bound_ttl() else 0.0

    @property
    def ceiling(self) -> float:
        """The smallest recent gap between two refreshes of a task (inf when none is recent)."""
        return self._upper if self._now - self._upper_at <= self._bound_ttl() else _INF

    def _at(self, when: float) -> float:
        if self._level_at == -_INF:
            return self._level
        # A trend is followed for a couple of periods past the last sample, never further: a
        # pass that grew for a while does not grow forever (0.1 s/s over 500 s is 50 s more).
        reach = _TREND_REACH * self._level
        elapsed = min(reach, max(-reach, when - self._level_at))
        return _clamp(self._level + self._slope * elapsed)

    def _ttl(self) -> float:
        # Certification is renewed about every ten periods (one probe).
        return min(3000.0, max(120.0, 10 * self._level))

    def _bound_ttl(self) -> float:
        # Bounds this old say little about the period now.
        return min(900.0, max(30.0, 3 * self._level))

    def observe_stale(self, *, at: float, lower: float) -> None:
        """An answer at ``at`` proved the period (now) is longer than ``lower`` seconds."""
        self._now = max(self._now, at)
        if lower <= 0:
            return
        if lower >= self._lower or at - self._lower_at > self._bound_ttl():
            self._lower, self._lower_at = lower, at
        if self._upper < lower and self._upper_at <= at:
            self._upper = _INF  # the period grew past an older gap
        expected = self._at(at - lower / 2)
        if lower > expected:
            # Later than planned: the period grew (or was underestimated). Step past the bound,
            # and widen the spread, until a gap measures it.
            self._dev = max(self._dev, (lower - expected) / 2)
            self._slope = max(0.0, self._slope)
            self._set(lower + self._dev, at - lower / 2)
        if 2 * lower > min(self.ceiling, self.period + self.spread):
            self._certified_at = at

    def observe_gap(
        self,
        *,
        at: float,
        low: float,
        high: float,
        value: float | None = None,
        lower: float = -_INF,
        window: float = _INF,
    ) -> int:
        """Two refreshes of one task were ``m >= 1`` periods apart: between ``low`` and ``high``.

        Args:
            at: when this became known (the later refresh happened shortly before).
            low, high: bounds on the time between the two refreshes.
            value: the best single estimate of it (default: the middle). The difference of two
                whole-second stamps is unbiased where the middle of an interval narrowed on one
                side only is not.
            lower: a proven lower bound on this period for this task (from its own stale
                answers since the first refresh), or ``-inf``.
            window: all ``m`` refreshes after the first fell within a window this long, or inf.

        Returns:
            The number of periods ``m`` the gap is taken to span.
        """
        self._now = max(self._now, at)
        if high < low or high <= 0:
            return 1
        mid = (low + high) / 2 if value is None else min(high, max(low, value))
        floor = max(MIN_PERIOD, lower, 0.8 * self.floor)
        most = max(1, math.floor(high / floor + 1e-9))
        if window < _INF:
            most = min(most, 1 + max(0, math.floor(window / floor + 1e-9)))
        if high < self.ceiling or at - self._upper_at > self._bound_ttl():
            self._upper, self._upper_at = high, at
        if self._lower > high and self._lower_at <= at:
            self._lower = 0.0  # the period shrank below an older bound
        if most == 1:
            self._sample(mid, high - low, at)
            self._certified_at = at
            return 1
        expected = self._at(at - mid / 2)
        tolerance = 2 * self._dev + 0.5
        if high < expected - tolerance:
            # Shorter than the estimate whatever m is: the period is at most this gap. Take it
            # as one period until a probe says whether it is a multiple.
            self._dev = min(max(self._dev, (expected - mid) / 4), mid / 4)
            self._slope = min(0.0, self._slope)
            self._set(mid, at - mid / 2)
            return 1
        # Several m fit. Unless the estimate is certified (no shorter period is possible), the gap
        # only bounds the period from above and never moves the estimate: gaps between sparse
        # polls are multiples, which is how 0.1.0 drifted to 45-225 s on a 15 s gateway.
        m = min(most, max(1, round(mid / expected)))
        if self.certified and abs(mid / m - expected) <= tolerance:
            self._sample(mid / m, (high - low) / m, at - mid + mid / (2 * m))
        return m

    def expected(self, when: float) -> float:
        """The period (of a gap centred) at ``when``, as estimated."""
        return self._at(when)

    def _sample(self, value: float, width: float, at: float) -> None:
        """A certified measurement of one period (to within ``width``), ending at ``at``."""
        self.samples += 1
        when = at - value / 2  # what a gap measures is the period around its middle
        expected = self._at(when)
        error = value - expected
        if abs(error) > 4 * self._dev + 1.0:
            self._dev = min(max(self._dev, abs(error) / 4), value / 4)
            self._set(value, when)
            return
        # Jacobson's smoothing (as for TCP's round-trip time), with a trend: quick, robust and
        # O(1). A sample known to within a few tenths counts more than one from stamps alone.
        gain = min(0.5, 0.25 / max(0.5, width))
        # Stamps in whole seconds put up to a second of noise into a sample (a third on
        # average): that is not how far a period strays, and does not count.
        self._dev += (max(0.0, abs(error) - width / 6) - self._dev) * gain
        self._set(expected + gain * error, when)
        self._follow_trend(when)

    def _follow_trend(self, when: float) -> None:
        """Every couple of periods, measure how fast the level moved since the last time."""
        anchor_at, anchor = self._anchor
        if anchor_at == -_INF or when < anchor_at:
            self._anchor = (when, self._level)
            return
        elapsed = when - anchor_at
        if elapsed < max(2 * self._level, 30.0):
            return
        rate = (self._level - anchor) / elapsed
        self._slope += (rate - self._slope) / 2
        self._slope = min(_MAX_SLOPE, max(-_MAX_SLOPE, self._slope))
        self._anchor = (when, self._level)

    def _set(self, level: float, when: float) -> None:
        self._level = _clamp(level)
        self._level_at = max(self._level_at, when)


def _overlaps(state: _Task, window: tuple[float, float]) -> bool:
    """Whether the task's latest refresh is where the shared position says refreshes land."""
    assert state.stamp is not None
    return state.lo <= state.stamp + window[1] and state.hi >= state.stamp + window[0]


def _narrow(low: float, high: float, window: tuple[float, float]) -> tuple[float, float]:
    """The part of ``[low, high]`` within ``window`` of some whole second (unchanged if none)."""
    first, last = math.ceil(low - window[1]), math.floor(high - window[0])
    if last < first:
        return low, high
    return max(low, first + window[0]), min(high, last + window[1])


def _clamp(period: float) -> float:
    return min(MAX_PERIOD, max(MIN_PERIOD, period))


#: The period grows or shrinks by at most this many seconds per second (a pass that doubles
#: within ten periods).
_MAX_SLOPE = 0.1
#: How many periods past the last sample a trend is extrapolated.
_TREND_REACH = 2.0


class StampPosition:
    """Where refreshes land, in the client's clock, relative to their whole-second stamp.

    A stamp truncates the gateway's refresh time, so a refresh stamped ``u`` happened at
    ``u + offset + f`` (client clock) for some fraction ``f`` in ``[0, 1)``. Tasks the loop
    refreshes within the same second of its pass share ``f`` as long as the period is a whole
    number of seconds (otherwise ``f`` moves every pass, and each task's own stamps narrow it
    down instead). So what one task's answers narrowed down tells its neighbours where in the
    second to look. Per second of the pass (the stamp modulo the period), the estimate is the
    intersection of what refreshes have shown, widened a little with every observation (the
    phase may drift); it is offered only once refreshes have agreed on it, and forgotten at the
    first that does not.
    """

    def __init__(self, *, usable: float = 0.5, drift: float = 0.001) -> None:
        self._usable = usable
        self._drift = drift
        self._period = 0
        #: second of the pass -> (low, high, agreements, when last observed)
        self._slots: dict[int, tuple[float, float, int, float]] = {}

    def window(self, stamp: float, period: float) -> tuple[float, float] | None:
        """Where after ``stamp`` (seconds, client clock) a refresh of that second of the pass
        lands, if known; else None."""
        whole = round(period)
        if whole != self._period or abs(period - whole) > 0.05:
            return None
        slot = self._slots.get(int(stamp) % whole)
        if slot is None or slot[2] < 3 or slot[1] - slot[0] > self._usable:
            return None
        return slot[0], slot[1]

    def observe(self, *, lo: float, hi: float, stamp: float, period: float) -> None:
        """A refresh stamped ``stamp`` happened between ``lo`` and ``hi`` (client clock)."""
        whole = round(period)
        if whole != self._period:
            self._slots.clear()
            self._period = whole
        low, high = lo - stamp, hi - stamp
        if high - low > 1.0 or abs(period - whole) > 0.05:
            return  # says nothing a stamp does not, or the fraction moves every pass
        key = int(stamp) % whole
        known = self._slots.get(key)
        if known is None or low > known[1] or high < known[0]:
            self._slots[key] = (low, high, 1, lo)
            return
        widen = self._drift * max(0.0, lo - known[3])
        self._slots[key] = (
            max(known[0] - widen, low),
            min(known[1] + widen, high),
            known[2] + 1,
            max(lo, known[3]),
        )


class _Task:
    """What is known of one task's refreshes (a few floats: there may be 10,000 of these)."""

    __slots__ = ("bias", "hi", "lo", "order", "since", "stamp")

    def __init__(self, order: int) -> None:
        #: The latest refresh stamp seen (None: not refreshed yet, as far as seen).
        self.stamp: float | None = None
        #: That refresh happened in [lo, hi] (client clock).
        self.lo = -_INF
        self.hi = -_INF
        #: The latest send time of an answer: the next refresh comes after it.
        self.since = -_INF
        #: Submission order (tasks are refreshed in the order they were created).
        self.order = order
        #: How much longer this task's period is than the loop's (its place in a pass that
        #: grows or shrinks moves with it).
        self.bias: float | None = None


class RefreshEstimator:
    """Everything the poller plans with about the refresh loop, learned from every answer.

    Args:
        hint: the refresh period to assume at first (``PollPolicy.refresh_period``); corrected
            both ways by what is seen, within SPEC's 1 s to 5 min.
        probe_share: the most deliberate early GETs spent to narrow a task's refresh phase, as
            a share of all answers (a probe that finds fresh data is not wasted: it is the
            regular check, made earlier).
        resolution: how narrowly (seconds) a task's phase is worth knowing.

    The poller calls :meth:`observe_submit` when a submit answers, :meth:`observe` on every GET
    answer, :meth:`forget` when it stops tracking a task; it plans each check with
    :meth:`next_refresh` and, when :meth:`probe_at` returns a time, checks the task then
    instead if that is earlier.
    """

    def __init__(
        self, *, hint: float = 15.0, probe_share: float = 0.05, resolution: float = 0.15
    ) -> None:
        self.clock = ClockOffset()
        self.loop = RefreshPeriod(hint)
        self.position = StampPosition()
        self._tasks: dict[Hashable, _Task] = {}
        self._order = 0
        #: The first refresh of the most recently submitted task seen refreshed: where in the
        #: pass new tasks land. (order, lo, hi)
        self._newest: tuple[int, float, float] | None = None
        #: How much later than that reference a newer task's first refresh came (learned).
        self._newcomer = 0.5
        self._probe_share = probe_share
        self._tokens = 1.0
        self._resolution = resolution
        #: How far a task's period is from the loop's plus its own bias (mean deviation).
        self._task_dev = 0.25
        #: The task holding the period probe, and until when.
        self._lease: tuple[Hashable, float] | None = None

    # -- reading ------------------------------------------------------------------------

    @property
    def period(self) -> float:
        """The refresh period to plan with, in seconds."""
        return self.loop.period

    @property
    def offset(self) -> float:
        """The client's clock minus the gateway's, in seconds (positive: the client is ahead)."""
        return self.clock.offset

    @property
    def certified(self) -> bool:
        """Whether the period is proven not to be a multiple of the true one (see probe_at)."""
        return self.loop.certified

    def next_refresh(self, task: Hashable, after: float) -> Forecast:
        """The first refresh of ``task`` at or after ``after``, newer than any seen (local).

        A task never seen refreshed is placed where the newest of this client's tasks refreshed
        (the loop walks tasks in creation order), a little later.
        """
        state = self._tasks.get(task)
        period, spread = self.loop.period, self.loop.spread
        since = state.since if state is not None else -_INF
        if state is not None and state.stamp is not None:
            lo, hi, slack, first = state.lo, state.hi, 0.0, 1
            period, spread = self._period_of(state)
        elif self._newest is not None:
            # Not refreshed yet: perhaps in the very pass that refreshed the reference.
            _, lo, hi = self._newest
            slack, first = self._newcomer, 0
        else:
            start = max(after, since)
            return Forecast(at=start + period / 2, margin=period / 2)

        def bracket(n: int) -> tuple[float, float]:
            # The n-th refresh after the known one; not before `since` (an answer sent then
            # showed no newer refresh).
            high = hi + n * (period + spread) + slack
            return min(max(lo + n * (period - spread), since), high), high

        n = max(first, math.ceil((after - (lo + hi) / 2) / period - 1e-9))
        if n > first and sum(bracket(n - 1)) / 2 >= after:
            n -= 1  # a stale answer cut the previous refresh's interval: it is still to come
        low, high = bracket(n)
        while first == 0 and high <= since:  # a newcomer submitted after that pass: the next
            n += 1
            low, high = bracket(n)
        if state is not None and state.stamp is not None:
            window = self.position.window(state.stamp, self.loop.period)
            if window is not None and _overlaps(state, window):
                low, high = _narrow(low, high, window)
        if high <= since:
            # An answer sent after this refresh was due did not show it: it is late (the period
            # grew). Expect it soon, and allow as much again as it is late already.
            late = since - high
            low, high = since, since + max(0.25, spread, late)
        return Forecast(at=(low + high) / 2, margin=(high - low) / 2)

    def probe_at(self, task: Hashable, *, after: float, now: float) -> float | None:
        """When a deliberate early GET of ``task`` would teach something, or None.

        Two kinds of probe: while the period is uncertified, one task at a time is asked a
        little more than half a period after a refresh (a stale answer certifies the period, a
        fresh one shows a shorter one); and, within ``probe_share`` of all answers, a task whose
        next refresh is known only to within more than ``resolution`` is asked in the middle of
        that interval (either answer halves it).

        Args:
            task: the task being planned.
            after: the earliest time a check of this task is worth making (its earliest end).
            now: the current time.
        """
        state = self._tasks.get(task)
        if state is None or state.stamp is None:
            return None
        period, spread = self.loop.period, self.loop.spread
        if not self.loop.certified and (self._lease is None or self._lease[1] < now):
            # Just past half the shortest gap seen: a stale answer then proves the gap is one
            # period; a fresh one shows a shorter gap, and the next probe goes lower.
            ceiling = min(self.loop.ceiling, period + spread)
            when = state.hi + min(ceiling / 2 + 0.05 * period + 0.05, 0.9 * period)
            if when > now:
                self._lease = (task, when + period)
                return when
        forecast = self.next_refresh(task, after)
        if (
            forecast.margin > self._resolution
            and self._tokens >= 1.0
            # Only for the very next refresh: before a later one, the answer would show one in
            # between, and narrow nothing.
            and forecast.at - state.hi < 1.5 * period
        ):
            self._tokens -= 1.0
            return forecast.at
        return None

    # -- evidence -----------------------------------------------------------------------

    def observe_submit(
        self, task: Hashable, *, sent: float, received: float, created: float | None
    ) -> None:
        """A submit sent at ``sent`` answered at ``received``; ``created`` is its ``created_at``."""
        state = self._track(task)
        state.since = max(state.since, sent)
        if created is not None:
            self.clock.observe_window(sent=sent, received=received, stamp=created)

    def observe(self, task: Hashable, *, sent: float, received: float, stamp: float | None) -> None:
        """A GET of ``task`` sent at ``sent`` answered at ``received`` (client clock).

        Args:
            stamp: the answer's ``updated_at`` (gateway Unix seconds) if it is a refresh time;
                None while the task is ``NOT_START`` (``updated_at`` is then its insert time).
        """
        self._tokens = min(3.0, self._tokens + self._probe_share)
        if self._lease is not None and self._lease[0] == task:
            self._lease = None
        state = self._track(task)
        if stamp is None:
            state.since = max(state.since, sent)
            return
        self.clock.observe_before(received=received, stamp=stamp)
        previous = state.stamp
        if previous is not None and stamp < previous:
            return  # an older answer overtaken by a newer one
        if previous is not None and stamp == previous:
            state.since = max(state.since, sent)
            self.loop.observe_stale(at=received, lower=sent - state.hi)
            return
        if state.since > -_INF:
            self.clock.observe_after(sent=state.since, stamp=stamp)
        lo, hi = self._bracket(stamp, state.since, received)
        if previous is None:
            self._first_refresh(state, lo, hi)
        else:
            # A new refresh: m periods after the previous one.
            gap_low = max(lo - state.hi, stamp - previous - 1.0)
            gap_high = min(hi - state.lo, stamp - previous + 1.0)
            if gap_low > gap_high:
                gap_low, gap_high = stamp - previous - 1.0, stamp - previous + 1.0
            m = self.loop.observe_gap(
                at=received,
                low=gap_low,
                high=gap_high,
                value=stamp - previous,
                lower=state.since - state.hi,
                window=received - state.since,
            )
            if m == 1 and self.loop.certified:
                # What the loop's period does not explain of this task's: its place in a pass
                # that grows or shrinks.
                value = min(gap_high, max(gap_low, stamp - previous))
                residual = value - self.loop.expected(received - value / 2)
                bias = state.bias if state.bias is not None else 0.0
                noise = (gap_high - gap_low) / 6  # what whole-second stamps put in a gap
                self._task_dev += (max(0.0, abs(residual - bias) - noise) - self._task_dev) / 8
                state.bias = bias + (residual - bias) / 2
            # The phase: carry the old interval m periods forward and keep what both allow.
            period, spread = self._period_of(state)
            carried_lo = state.lo + m * (period - spread)
            carried_hi = state.hi + m * (period + spread)
            if max(lo, carried_lo) <= min(hi, carried_hi):
                lo, hi = max(lo, carried_lo), min(hi, carried_hi)
        state.stamp, state.lo, state.hi = stamp, lo, hi
        state.since = max(state.since, sent)
        self.position.observe(lo=lo, hi=hi, stamp=stamp, period=self.loop.period)
        newest = self._newest
        if newest is not None and state.order >= newest[0]:
            self._newest = (state.order, lo, hi)

    def forget(self, task: Hashable) -> None:
        """Stop tracking ``task`` (it ended, or the poller dropped it)."""
        self._tasks.pop(task, None)
        if self._lease is not None and self._lease[0] == task:
            self._lease = None

    # -- internals ----------------------------------------------------------------------

    def _period_of(self, state: _Task) -> tuple[float, float]:
        """The period of this task, and how far one of its periods may differ from it."""
        if state.bias is None:
            return self.loop.period, self.loop.spread
        return self.loop.period + state.bias, max(0.02, 2 * self._task_dev)

    def _track(self, task: Hashable) -> _Task:
        state = self._tasks.get(task)
        if state is None:
            self._order += 1
            state = self._tasks[task] = _Task(self._order)
        return state

    def _bracket(self, stamp: float, since: float, received: float) -> tuple[float, float]:
        """Where (client clock) the refresh stamped ``stamp`` happened, from all that is known."""
        low, high = self.clock.bounds
        if low == -_INF or high == _INF:
            # One side unknown yet: assume the offset is within a second of the best guess.
            guess = self.clock.offset
            low, high = max(low, guess - 1.0), min(high, guess + 1.0)
        lo = max(since, stamp + low)
        hi = min(received, stamp + 1.0 + high)
        if lo > hi:  # the offset is off (a clock step): trust the answers' own times
            lo, hi = max(since, received - 1.0), received
            lo = min(lo, hi)
        return lo, hi

    def _first_refresh(self, state: _Task, lo: float, hi: float) -> None:
        newest = self._newest
        if newest is not None:
            # How much later in the pass than the reference this newer task came.
            ref_order, ref_lo, ref_hi = newest
            period = self.loop.period
            behind = ((lo + hi) / 2 - (ref_lo + ref_hi) / 2) % period
            if state.order > ref_order and behind < period / 2:
                self._newcomer += (max(0.5, 2 * behind) - self._newcomer) / 4
        if newest is None or state.order >= newest[0] or newest[2] < lo - 3 * self.loop.period:
            self._newest = (state.order, lo, hi)
