"""The gateway's refresh loop as one client sees it: clock offset, period, each task's phase.

The gateway does not ask upstream when a client GETs a task (SPEC §3.2): a background loop
sleeps, then refreshes every unfinished task one after another and stamps ``updated_at`` (whole
seconds, truncated). So each task is refreshed once per *period* at its own *phase* (its place
in the pass), and a GET between two refreshes returns the same data. Nothing about the loop is
modelled that the answers do not show, and what they show is exact:

* an answer sent at ``s`` that shows no newer stamp proves the task's next refresh comes after
  ``s``, so its period is longer than ``s`` minus its latest refresh;
* an answer received at ``v`` that shows a new stamp proves a refresh in ``(since, v]``, where
  ``since`` is when the latest answer without it was sent;
* the stamp ``u`` was written at a gateway time in ``[u, u + 1)``: with what is known of the
  clock offset (:class:`ClockOffset`), a second bracket of the same refresh;
* two refreshes of one task are ``m >= 1`` periods apart, and certainly one when a stale answer
  came more than half the gap after the first (:func:`single_period`).

:class:`PeriodEstimate` turns that into the period: the mean of recent one-period gaps, never
above the smallest recent gap between two refreshes of a task (a proven bound is a bound).
:class:`RefreshEstimator` keeps each task's latest refresh as an interval of the client's clock,
carries it forward by the period to forecast the next one, and says when to ask: at the end of
the forecast, or in its middle while it is too wide to keep the detection lag a small share of
the period (either answer halves it). Until the loop is seen at all, one task is
asked at widening intervals, from a few round trips on: a handful of GETs find it.

A pass reaches tasks in the order they were created, so the tasks before one in the pass tell
when a check of it is early (:meth:`RefreshEstimator.not_before`): while one of them is being
asked, or is seen stale, the pass has not reached this one either. Once one is seen refreshed,
this one's refresh comes a pass step later for each task between them
(:meth:`RefreshEstimator.followers`), and its check can go then. A pass that runs late then
costs one stale answer at its front, not one per task. A pass refreshes the tasks unfinished
when it began: a task not refreshed yet comes right after the task before it in the first pass
that began after it was created, and is asked then, not in the pass that was running.

Times are in the client's monotonic clock; stamps are gateway Unix seconds. Nothing here does I/O
or reads a clock: times are passed in.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable

import attrs

_INF = math.inf


@attrs.frozen(kw_only=True)
class Forecast:
    """Where a task's next refresh is expected: between :attr:`low` and :attr:`high`, and at
    :attr:`expected` at the latest if the period is what it is estimated to be."""

    low: float
    high: float
    expected: float

    @property
    def width(self) -> float:
        """How far apart the two ends are, in seconds."""
        return self.high - self.low

    @property
    def middle(self) -> float:
        """Halfway: an answer asked then halves the interval, whichever it shows."""
        return (self.low + self.high) / 2


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


def single_period(*, high: float, lower: float) -> bool:
    """Whether a gap of at most ``high`` seconds between two refreshes of one task spans a single
    period, given a proof that the period is longer than ``lower``: two take over ``2 * lower``."""
    return lower > 0 and high < 2 * lower


def _recent(bounds: Iterable[tuple[int, float]], since: int) -> list[float]:
    return [value for at, value in bounds if at >= since]


class PeriodEstimate:
    """The refresh period, from gaps between two refreshes of one task and from stale answers.

    Args:
        hint: a period to plan with before any gap is seen, or None to learn it from scratch.
        memory: how many recent pieces of evidence of each kind count. Evidence is counted in
            answers, never in seconds: a bound is as recent as the answers since it.

    The estimate is the mean of recent one-period gaps, kept within recent proven bounds: never
    above the smallest gap seen between two refreshes of one task (a gap spans at least one
    period), never below a proof from a stale answer. A gap is taken as one period when that is
    proven (:func:`single_period`), or when the estimate is *certified* (a recent proof that the
    period is more than half the estimate: it cannot be a multiple of the true one) and the gap is
    close to a whole number of estimates; otherwise it only bounds the period from above, so that
    gaps between sparse checks, which span several periods, never inflate the estimate.
    """

    def __init__(self, hint: float | None, *, memory: int = 16) -> None:
        self._hint = hint
        self._memory = memory
        self._events = 0
        self._gaps = 0
        #: The answer count of the latest proof that the estimate is not a multiple.
        self._proven = -_INF
        #: The recent one-period gaps, smoothed (None before any).
        self._level: float | None = None
        self._misses: deque[float] = deque(maxlen=memory)
        #: Only the latest few gaps bound the period: older ones say nothing of a period
        #: that grew since.
        self._uppers: deque[tuple[int, float]] = deque(maxlen=max(1, memory // 4))
        self._lowers: deque[tuple[int, float]] = deque(maxlen=memory)

    @property
    def known(self) -> bool:
        """Whether there is a period to plan with (a hint, or a gap seen)."""
        return self._hint is not None or self._gaps > 0

    @property
    def upper(self) -> float:
        """The smallest recent gap between two refreshes of one task (inf if none)."""
        return min(_recent(self._uppers, self._horizon()), default=_INF)

    @property
    def lower(self) -> float:
        """The largest recent proof that the period is longer (0 if none)."""
        return max(_recent(self._lowers, self._horizon()), default=0.0)

    @property
    def period(self) -> float:
        """The period to plan with, in seconds (a proven lower bound while not :attr:`known`)."""
        upper = self.upper
        if self._level is not None:
            base = self._level
        elif self._hint is not None:
            base = min(self._hint, upper)
        elif upper < _INF:
            base = upper
        else:
            return self.lower
        lower = self.lower
        if lower > upper:
            # Stale answers now prove it longer than gaps before: the period grew since.
            return max(base, lower)
        return min(max(base, lower), upper)

    @property
    def spread(self) -> float:
        """How far the period, or a forecast carried by one, may stray from the estimate: the
        recent misses of forecasts, wide while the estimate is not certified."""
        period = self.period
        missed = sum(self._misses) / len(self._misses) if self._misses else 0.0
        spread = max(_SPREAD_FLOOR * period, missed)
        return spread if self.certified else max(spread, period / 8)

    @property
    def certified(self) -> bool:
        """Whether a recent proof rules out that the estimate is a multiple of the period."""
        return self._events - self._proven <= _CERTIFIED_FOR * self._memory

    def _horizon(self) -> int:
        return self._events - 4 * self._memory

    def observe_stale(self, lower: float) -> None:
        """An answer proved a task's period longer than ``lower`` seconds."""
        self._events += 1
        if lower > 0:
            self._lowers.append((self._events, lower))
            if 2 * lower > self.period:
                self._proven = self._events

    def observe_gap(self, *, low: float, high: float, value: float, lower: float) -> int:
        """Two refreshes of one task were ``m >= 1`` periods apart, ``low`` to ``high`` seconds.

        Args:
            low, high: bounds on the gap.
            value: its best single estimate (a difference of whole-second stamps is unbiased
                where the middle of a one-sided interval is not); kept within the bounds.
            lower: a proof that this task's period is longer than this (its latest stale
                answer after the first refresh), or anything not positive.

        Returns:
            The number of periods ``m`` the gap is taken to span.
        """
        smallest = self.upper
        self._events += 1
        self._gaps += 1
        high = max(high, low)
        value = min(high, max(low, value))
        self._uppers.append((self._events, high))
        proven = single_period(high=high, lower=max(lower, 0.9 * self.lower))
        if proven and low > _JUMP * smallest:
            # Far above the smallest recent gap: two periods of a loop whose period moved
            # between them (a pass that shrank), however late the stale answer came. Taken as
            # one, it would prove the period longer than both and lock the estimate there.
            proven = False
        if proven:
            self._proven = self._events
            self._sample(value, high - low)
            if low > 0:
                self._lowers.append((self._events, low))
            return 1
        period = self.period
        if period <= 0:
            return 1
        m = max(1, round(value / period))
        # A stamp difference is within a second of the gap: within 1/m of m periods.
        if self.certified and abs(value / m - period) <= 2 * self.spread + 1.0 / m:
            self._sample(value / m, (high - low) / m)
        return m

    def _sample(self, value: float, width: float) -> None:
        """A one-period gap, known to within ``width`` seconds: the estimate moves up to a
        quarter of the way to it (recent gaps count most, so a drifting period is followed),
        less for a gap known only from whole-second stamps, whose second of noise is averaged
        out over many."""
        level = self._level
        if level is None:
            self._level = value
            return
        self._level = level + (value - level) * _GAIN / max(1.0, width)

    def missed(self, seconds: float) -> None:
        """A refresh came ``seconds`` outside the interval it was forecast in (0: within)."""
        self._misses.append(max(0.0, seconds))


class _Task:
    """What is known of one task's refreshes (a few floats: there may be 10,000 of these)."""

    __slots__ = (
        "bias",
        "ehi",
        "elo",
        "fresh_at",
        "hi",
        "key",
        "lo",
        "order",
        "origin",
        "since",
        "stamp",
    )

    def __init__(self, key: Hashable, order: int) -> None:
        self.key = key
        #: The latest refresh stamp seen (None: not refreshed yet, as far as seen).
        self.stamp: float | None = None
        #: That refresh happened in [lo, hi] as forecast and seen; [elo, ehi] as seen alone.
        self.lo = self.hi = self.elo = self.ehi = -_INF
        #: The latest send time of an answer that showed no newer refresh.
        self.since = -_INF
        #: When the task was submitted (or first asked about).
        self.origin = -_INF
        #: Submission order (a pass refreshes tasks in the order they were created).
        self.order = order
        #: How much longer this task's period is than the loop's: its place in a pass that
        #: grows or shrinks moves with it.
        self.bias = 0.0
        #: From when its latest refresh was seen (the tasks after it in the same pass come
        #: right after it).
        self.fresh_at = -_INF


class RefreshEstimator:
    """Everything the poller plans with about the refresh loop, learned from every answer.

    Args:
        hint: the refresh period to plan with at first (``PollPolicy.refresh_period``), or None
            to find it from the first answers; corrected both ways by what is seen.
        resolution: the widest forecast, as a share of the period, that is asked at its end: a
            wider one is asked in its middle first. Detection lag stays within about this share
            of a period.

    The poller calls :meth:`observe_submit` when a submit answers, :meth:`observe` on every GET
    answer, :meth:`forget` when it stops tracking a task, and plans each check with
    :meth:`ask_at`; a plan of None means another task is finding the loop: plan again when
    :attr:`generation` moves.
    """

    def __init__(self, *, hint: float | None = None, resolution: float = 0.25) -> None:
        self.clock = ClockOffset()
        self.loop = PeriodEstimate(hint)
        self._resolution = resolution
        self._tasks: dict[Hashable, _Task] = {}
        self._order = 0
        #: The tracked tasks by order, ascending (for the pass neighbours).
        self._ordered: list[_Task] = []
        #: The latest refresh of the newest task seen refreshed: (order, lo, hi). A newer task
        #: is first refreshed in the same pass or a later one, a little after it.
        self._newest: tuple[int, float, float] | None = None
        #: How much later in a pass than that reference a newer task came (learned).
        self._newcomer = 0.0
        self._rtt = _INF
        #: The one task asked at widening intervals while the loop is unknown, and how long
        #: a first refresh was seen to take after a submit.
        self._sentinel: Hashable | None = None
        self._search_floor = 0.0
        #: The task holding the certification probe, and until when.
        self._lease: tuple[Hashable, float] | None = None
        #: Moves when plans that waited on the loop can be made (see ask_at).
        self.generation = 0
        #: The pass step (see spacing), and the tasks whose checks were moved by it.
        self._spacing = 0.0
        self._pulled: set[Hashable] = set()

    # -- reading ------------------------------------------------------------------------

    @property
    def period(self) -> float:
        """The refresh period to plan with, in seconds (0 until anything is known)."""
        return self.loop.period

    @property
    def known(self) -> bool:
        """Whether the period is known (told, or seen)."""
        return self.loop.known

    @property
    def certified(self) -> bool:
        """Whether the period is proven not to be a multiple of the true one."""
        return self.loop.certified

    @property
    def offset(self) -> float:
        """The client's clock minus the gateway's, in seconds."""
        return self.clock.offset

    @property
    def resolution(self) -> float:
        """The lag the forecasts allow, as a share of the period."""
        return self._resolution

    @property
    def round_trip(self) -> float:
        """The shortest round trip seen, in seconds (inf before any)."""
        return self._rtt

    def forecast(self, task: Hashable, after: float) -> Forecast | None:
        """The first refresh of ``task`` that can come at or after ``after``, newer than any seen;
        None while the loop is not known well enough to say."""
        state = self._tasks.get(task)
        since = state.since if state is not None else -_INF
        loop = self.loop
        bias = 0.0
        new = state is not None and state.stamp is None and loop.known
        ahead = self._ahead(state) if state is not None and new else None
        if state is not None and state.stamp is not None:
            lo, hi, slack, first, bias = state.lo, state.hi, 0.0, 1, state.bias
        elif ahead is not None and state is not None:
            # Right after the task before it in its first pass: the first pass that began
            # after it was created.
            other, steps, began = ahead
            lo, hi, bias = other.lo, other.hi, other.bias
            slack = steps * self._spacing
            # The refresh of that one in the first pass that began after this one was created.
            first = max(0, math.floor((state.origin - began) / (loop.period + bias)) + 1)
        elif self._newest is not None:
            _, lo, hi = self._newest
            slack, first = self._newcomer, 0
        else:
            return None
        target = max(after, since)
        if not loop.known:
            # Only the reference's own pass can be forecast without a period.
            if first == 0 and since <= hi and hi + slack >= target:
                low, high = max(lo, since), hi + slack
                return Forecast(low=low, high=high, expected=high)
            return None
        period, spread = loop.period + bias, loop.spread
        if first == 0 and since >= hi + slack + (0.0 if ahead is None else self._budget()):
            first = 1  # submitted (or asked about) after the reference's pass
        # The next refresh not seen yet: after the last answer that did not show it.
        low = max(lo + first * (period - spread), since)
        expected = hi + first * period + slack
        high = expected + first * spread
        if expected <= since:
            # Later than expected: soon, then allowed as much again as it is late already.
            expected = since + max(2 * spread, 4 * self._rtt, since - expected)
            high = max(high, expected)
        # Then as many periods on as it takes to reach the target (none when nothing bounds
        # it: a task attached by id and never asked about).
        n = max(0, math.ceil((target - high) / (period + spread))) if target > -_INF else 0
        return Forecast(
            low=min(low + n * (period - spread), expected + n * period),
            high=high + n * (period + spread),
            expected=expected + n * period,
        )

    def ask_at(self, task: Hashable, *, after: float, now: float) -> float | None:
        """When to ask about ``task`` to see its first refresh at or after ``after``.

        None while another task is finding the loop: plan again when :attr:`generation` moves.
        """
        forecast = self.forecast(task, after)
        if forecast is None:
            return self._search(task, now)
        when = self._aim(forecast)
        probe = self._certify(task, now)
        if probe is not None and probe < when:
            when = probe
        return max(when, now)

    def _aim(self, forecast: Forecast) -> float:
        """When to send a check of ``forecast``: at its end, or in its middle while it is too
        wide; to be answered then, not a one-way trip later."""
        when = forecast.high
        if forecast.width > self._resolution * self.loop.period:
            when = forecast.middle
        return when - self._half_trip()

    def not_before(
        self, task: Hashable, *, now: float, next_check: Callable[[Hashable], float]
    ) -> float:
        """When a check of ``task`` due now is early, because of what the tasks before it in
        the pass showed (-inf when nothing says so).

        A pass refreshes tasks one after another, in the order they were created (SPEC §3.2),
        so a task created before this one (of those tracked) is refreshed before it in every
        pass, and a pass that runs late runs late for both. The nearest one (within a few
        dozen) that tells anything of the pass after this one's latest refresh counts:

        * while it is being asked (``next_check`` says when: now while a check is under way,
          or due), or was seen stale in that pass and is asked again soon, its refresh in that
          pass is still to come: ask this one once that check has answered;
        * once it was seen refreshed in that pass, this one's comes a pass step later for
          each tracked task between them (:meth:`followers` names the checks that may then go
          at once): nothing defers it but that.

        A task not refreshed yet waits likewise on the one before it in its first pass (a new
        one created before it, or the nearest seen refreshed). Never later than this task's
        own forecast plus the lag the forecasts allow (``resolution`` periods), so a pass in
        another order costs no more than that.
        """
        state = self._tasks.get(task)
        loop = self.loop
        if state is None or not loop.known or self._rtt == _INF:
            return -_INF
        period = loop.period
        budget = self._budget()
        if state.stamp is not None:
            own = state.hi + period + state.bias + loop.spread - self._half_trip()
            found = self._informed(state, now=now, until=own + budget, next_check=next_check)
            if found is None:
                return -_INF
            before, steps, seen = found
        else:
            # Not refreshed yet: the tasks before it in its first pass tell the same. One not
            # refreshed yet either is refreshed first (in that pass or an earlier one).
            ahead = self._ahead(state)
            forecast = self.forecast(task, state.since)
            if ahead is None or forecast is None:
                return -_INF
            before, steps, began = ahead
            if steps > 1:
                i = bisect.bisect_left(self._ordered, state.order, key=_order_of)
                before, seen = self._ordered[i - 1], False
            else:
                seen = began > state.origin
            own = forecast.high - self._half_trip()
        if seen:
            when = before.ehi + steps * self._spacing
        else:
            ahead_at = next_check(before.key)
            if ahead_at > own + budget:
                return -_INF  # not asked again in time: it cannot tell
            # Under way or waiting its turn (due): look again a little later, a bounded
            # number of times within the budget, not every round trip.
            step = self._rtt if ahead_at > now else max(self._rtt, budget / _LOOKS)
            when = max(ahead_at, now) + step
        return min(when, own + budget)

    def _informed(
        self,
        state: _Task,
        *,
        now: float,
        until: float,
        next_check: Callable[[Hashable], float],
    ) -> tuple[_Task, int, bool] | None:
        """The nearest tracked task before ``state`` in the pass (within a few dozen) that
        tells about the pass after ``state``'s latest refresh, how many tasks before it is,
        and whether it was seen refreshed in that pass (else it is being asked now, or was
        seen stale in it and is asked again by ``until``)."""
        ordered = self._ordered
        i = bisect.bisect_left(ordered, state.order, key=_order_of)
        half = self.loop.period / 2
        for j in range(i - 1, max(-1, i - 1 - _REACH), -1):
            other = ordered[j]
            if other.stamp is None:
                continue
            if other.fresh_at > state.hi:
                return other, i - j, True
            ahead_at = next_check(other.key)
            if ahead_at <= now:
                return other, i - j, False
            stale = other.since > state.hi and state.hi - other.hi < half
            if stale and ahead_at <= until:
                return other, i - j, False
        return None

    def followers(self, task: Hashable) -> list[tuple[Hashable, float, float]]:
        """The tasks after ``task`` in the pass, just seen refreshed in a new pass, that this
        pass has not been seen to reach yet, each with when its refresh should have come
        (right after this one's, SPEC §3.2) and the latest a check aimed at this pass is
        planned for: a check of theirs planned for this pass may go then. Tell
        :meth:`pulled` which checks were moved.

        The nearest few tracked tasks created after it that this pass refreshes: those seen
        refreshed in an earlier pass, and those not refreshed yet that were created before the
        pass began. The k-th of them comes k pass steps (:attr:`spacing`) after this one.
        """
        state = self._tasks.get(task)
        loop = self.loop
        if state is None or state.stamp is None or not loop.known:
            return []
        # Refreshed in an earlier pass than this one, as far as seen.
        reached = state.elo - loop.period / 2
        ordered = self._ordered
        i = bisect.bisect_right(ordered, state.order, key=_order_of)
        began = self._began(state, i - 1)
        period, spread = loop.period, loop.spread
        budget = self._budget()
        found: list[tuple[Hashable, float, float]] = []
        k = 0
        for other in ordered[i : i + _NEIGHBOURS]:
            if other.stamp is not None:
                k += 1
                if other.hi < reached:
                    aimed = other.hi + period + other.bias + spread + budget
                    found.append((other.key, state.ehi + k * self._spacing, aimed))
            elif other.origin < began:
                k += 1
                forecast = self.forecast(other.key, other.since)
                if forecast is not None:
                    found.append((other.key, state.ehi + k * self._spacing, forecast.high + budget))
        return found

    def pulled(self, task: Hashable) -> None:
        """A check of ``task`` was moved to when :meth:`followers` said: its answer, fresh or
        stale, tells whether the pass steps were taken long enough."""
        if task in self._tasks:
            self._pulled.add(task)

    @property
    def spacing(self) -> float:
        """How long a pass takes from one task to the next, as learned from checks moved to
        right after the task before (a stale one lengthens it, a fresh one shortens it a
        little: about one in twenty comes too early)."""
        return self._spacing

    def _ahead(self, state: _Task) -> tuple[_Task, int, float] | None:
        """For a task not seen refreshed yet: the nearest tracked task created before it that
        was (within a few dozen), how many pass steps after that one it comes, and when the
        pass of that one's latest refresh began (:meth:`_began`)."""
        ordered = self._ordered
        i = bisect.bisect_left(ordered, state.order, key=_order_of)
        for j in range(i - 1, max(-1, i - 1 - _REACH), -1):
            other = ordered[j]
            if other.stamp is not None:
                return other, i - j, self._began(other, j)
        return None

    def _began(self, state: _Task, j: int) -> float:
        """When the pass of the latest refresh of ``state`` (the ``j``-th tracked task) began,
        as well as can be told: a pass step before it for each tracked task before it, and no
        later than the oldest tracked task's refresh in that pass (each taken in the middle of
        what is known of it). A task created after then is not in that pass: a pass refreshes
        the tasks unfinished when it begins."""
        at = _middle(state.lo, state.hi)
        began = at - j * self._spacing
        head = self._ordered[0]
        if head is not state and head.stamp is not None:
            first = _middle(head.lo, head.hi)
            if first <= at and at - first < self.loop.period / 2:
                began = min(began, first)
        return began

    def _search(self, task: Hashable, now: float) -> float | None:
        """Nothing to forecast with: one task asks at widening intervals, the others wait."""
        sentinel = self._sentinel
        if sentinel is not None and sentinel != task and sentinel in self._tasks:
            return None
        self._sentinel = task
        state = self._tasks.get(task)
        if state is None or state.since == -_INF:
            return now
        first = 4 * self._rtt if self._rtt < _INF else 0.0
        if state.stamp is None:
            anchor = state.origin
        else:
            # No refresh comes sooner than a proven period after the latest one.
            lower = max(self.loop.lower, self._search_floor)
            anchor, first = state.lo + lower, max(first, lower / 8)
        since = state.since
        if since < anchor:
            return max(now, anchor + first)
        return max(now, since + max(first, _WIDEN * (since - anchor)))

    def _certify(self, task: Hashable, now: float) -> float | None:
        """A probe that proves the period is not a multiple of the estimate, when one is due:
        a stale answer just past half a period after a refresh (a fresh one shows a shorter
        period). One task at a time."""
        loop = self.loop
        if loop.certified or not loop.known:
            return None
        lease = self._lease
        if lease is not None and lease[0] != task and lease[1] > now and lease[0] in self._tasks:
            return None
        state = self._tasks.get(task)
        if state is None or state.stamp is None:
            return None
        period = min(loop.period, loop.upper)
        when = state.ehi + 0.55 * period
        if when <= now:
            return None
        self._lease = (task, when + period)
        return when

    # -- evidence -----------------------------------------------------------------------

    def observe_submit(
        self, task: Hashable, *, sent: float, received: float, created: float | None
    ) -> None:
        """A submit sent at ``sent`` answered at ``received``; ``created`` is its ``created_at``."""
        state = self._track(task)
        state.origin = sent
        state.since = max(state.since, sent)
        self._rtt = min(self._rtt, received - sent)
        if created is not None:
            self.clock.observe_window(sent=sent, received=received, stamp=created)

    def observe(self, task: Hashable, *, sent: float, received: float, stamp: float | None) -> None:
        """A GET of ``task`` sent at ``sent`` answered at ``received`` (client clock).

        Args:
            stamp: the answer's ``updated_at`` (gateway Unix seconds) if it is a refresh time;
                None while the task is ``NOT_START`` (``updated_at`` is then its insert time).
        """
        self._rtt = min(self._rtt, received - sent)
        state = self._track(task)
        if state.origin == -_INF:
            state.origin = sent
        if self._lease is not None and self._lease[0] == task:
            self._lease = None
        if task in self._pulled and state.stamp is None:
            # Not refreshed before: a stale answer may only say that it was created after
            # the pass began, not that the step was short.
            self._pulled.discard(task)
        elif task in self._pulled:
            self._pulled.discard(task)
            fresh = stamp is not None and state.stamp is not None and stamp > state.stamp
            if fresh:
                self._spacing *= 1 - _SHORTEN
            else:
                # Never past a share of the lag budget: the steps of a few tasks fit in it.
                cap = self._resolution * self.loop.period / _NEIGHBOURS
                self._spacing = min(max(_LENGTHEN * self._spacing, self._rtt), cap)
        if stamp is None:
            state.since = max(state.since, sent)
            return
        self.clock.observe_before(received=received, stamp=stamp)
        previous = state.stamp
        if previous is not None and stamp < previous:
            return  # an older answer overtaken by a newer one
        if previous is not None and stamp == previous:
            state.since = max(state.since, sent)
            self.loop.observe_stale(sent - state.ehi)
            return
        if state.since > -_INF:
            self.clock.observe_after(sent=state.since, stamp=stamp)
        elo, ehi = self._bracket(stamp, state.since, received)
        if previous is None:
            lo, hi = self._first_refresh(state, elo, ehi)
        else:
            lo, hi = self._next_refresh(state, stamp - previous, elo, ehi)
        state.stamp, state.lo, state.hi, state.elo, state.ehi = stamp, lo, hi, elo, ehi
        state.since = max(state.since, sent)
        newest = self._newest
        if newest is None or state.order >= newest[0]:
            self._newest = (state.order, lo, hi)
            if newest is None:
                self.generation += 1

    def forget(self, task: Hashable) -> None:
        """Stop tracking ``task`` (it ended, or the poller dropped it)."""
        state = self._tasks.pop(task, None)
        self._pulled.discard(task)
        if state is not None:
            del self._ordered[bisect.bisect_left(self._ordered, state.order, key=_order_of)]
        if self._lease is not None and self._lease[0] == task:
            self._lease = None
        if self._sentinel == task:
            self._sentinel = None
            self.generation += 1

    # -- internals ----------------------------------------------------------------------

    def _track(self, task: Hashable) -> _Task:
        state = self._tasks.get(task)
        if state is None:
            self._order += 1
            state = self._tasks[task] = _Task(task, self._order)
            self._ordered.append(state)  # orders only grow: the list stays sorted
        return state

    def _budget(self) -> float:
        """The detection lag the forecasts allow, in seconds."""
        return self._resolution * self.loop.period

    def _half_trip(self) -> float:
        """Half the shortest round trip: how long after sending a request is answered, and
        before receiving the answer it was written (0 before any is measured)."""
        return self._rtt / 2 if self._rtt < _INF else 0.0

    def _bracket(self, stamp: float, since: float, received: float) -> tuple[float, float]:
        """Where (client clock) the refresh stamped ``stamp`` happened, from what is known."""
        received -= self._half_trip()
        low, high = self.clock.bounds
        lo = since if low == -_INF else max(since, stamp + low)
        hi = received if high == _INF else min(received, stamp + 1.0 + high)
        if lo > hi:  # the offset is off (a clock step): trust the answers' own times
            lo, hi = since, received
        return lo, hi

    def _first_refresh(self, state: _Task, elo: float, ehi: float) -> tuple[float, float]:
        loop = self.loop
        if state.origin > -_INF and state.since > state.origin:
            # The first pass after the task was created came after this answer: when passes
            # take no time, the period is longer than the wait. Only the search for the loop
            # leans on that (a long pass reaches a new task later than a period).
            self._search_floor = max(self._search_floor, state.since - state.origin)
        newest = self._newest
        if newest is None or not loop.known:
            return elo, ehi
        order, ref_lo, ref_hi = newest
        period, spread = loop.period, loop.spread
        # The reference's pass nearest this refresh (a bracket open below, as for a task
        # attached by id, is placed by its upper end).
        gap = _middle(elo, ehi) - _middle(ref_lo, ref_hi)
        n = max(0, round(gap / period)) if period > 0 else 0
        carried_lo = ref_lo + n * (period - spread)
        carried_hi = ref_hi + n * (period + spread) + self._newcomer
        if state.order > order:
            behind = max(0.0, elo - (ref_hi + n * period))
            self._newcomer += (behind - self._newcomer) / 4
        return _keep(carried_lo, carried_hi, elo, ehi, loop)

    def _next_refresh(
        self, state: _Task, stamps: float, elo: float, ehi: float
    ) -> tuple[float, float]:
        loop = self.loop
        known = loop.known
        low = max(elo - state.ehi, stamps - 1.0)
        high = min(ehi - state.elo, stamps + 1.0)
        if low > high:
            low, high = stamps - 1.0, stamps + 1.0
        before = (loop.period, loop.spread) if known else None
        m = loop.observe_gap(low=low, high=high, value=stamps, lower=state.since - state.ehi)
        if before is None:
            self.generation += 1
        else:
            # How far the refresh fell outside the forecast made before this answer.
            period, spread = before
            period += state.bias
            forecast_lo = state.lo + m * (period - spread)
            forecast_hi = state.hi + m * (period + spread)
            loop.missed(max(elo - forecast_hi, forecast_lo - ehi, 0.0))
            state.fresh_at = elo
            if m == 1:
                # This task's own period, against the loop's: a gap known to within a second
                # counts fully, one from whole-second stamps alone a quarter.
                residual = min(high, max(low, stamps)) - before[0]
                state.bias += (residual - state.bias) / (2 * max(1.0, high - low))
        period, spread = loop.period + state.bias, loop.spread
        return _keep(
            state.lo + m * (period - spread), state.hi + m * (period + spread), elo, ehi, None
        )


def _order_of(state: _Task) -> int:
    return state.order


def _middle(lo: float, hi: float) -> float:
    """The middle of a bracket, or its upper end when nothing bounds it from below."""
    return hi if lo == -_INF else (lo + hi) / 2


def _keep(
    carried_lo: float, carried_hi: float, elo: float, ehi: float, loop: PeriodEstimate | None
) -> tuple[float, float]:
    """What both the forecast carried forward and the answers allow; the answers alone when
    they contradict it (and, given ``loop``, how far the forecast missed is remembered)."""
    lo, hi = max(carried_lo, elo), min(carried_hi, ehi)
    if loop is not None:
        loop.missed(max(elo - carried_hi, carried_lo - ehi, 0.0))
    if lo > hi:
        return elo, ehi
    return lo, hi


#: A proof that the estimate is no multiple of the period holds for this many memories of
#: answers (the period would have to halve meanwhile).
_CERTIFIED_FOR = 10
#: How far each one-period gap moves the estimate.
_GAIN = 0.25
#: A gap this many times the smallest recent one is never proven a single period: a period
#: that moves from pass to pass (by a fifth on the yardstick's sequential gateway) makes a
#: stale answer past half of two periods no proof.
_JUMP = 1.5
#: The least spread of a period, as a share of it.
_SPREAD_FLOOR = 0.003
#: How many times at most a check waiting on a check under way looks again within the budget.
_LOOKS = 16
#: A check moved to a pass step after the task before that came back stale lengthens the
#: step this many times; a fresh one shortens it by this share (the stale ones settle near
#: one in twenty: 0.02 / (ln 1.5 + 0.02)).
_LENGTHEN = 1.5
_SHORTEN = 0.02
#: How many tasks after one seen refreshed are looked at for checks to move.
_NEIGHBOURS = 4
#: How many tasks before a task are looked at for one that tells of its pass.
_REACH = 64
#: While the loop is unknown, each search probe waits this share of the search so far.
_WIDEN = 0.3
