"""How many tasks to keep in flight: enough to keep upstream as busy as submitting them all.

A task of ours waiting upstream (``QUEUED``) proves nothing about upstream's capacity: on a
shared account slots go to other tenants for a while, and some tasks wait before starting
whatever the load. What does tell is whether *more tasks in flight ran more tasks at once*.
So the window is set from how many of our tasks were seen running at the same time (the
*concurrency*), reconstructed from upstream's own start and end stamps (also for tasks that
ended before their first check), and kept a little ahead of it:

* ``limit = concurrency + headroom`` once upstream is known to be full, where the headroom
  covers the tasks expected to end within one refresh period (``concurrency * period /
  duration``, and one more): a slot freed upstream then finds a task of ours already queued,
  while the gateway has not shown the end yet. The headroom is stated in what the gateway
  does (its period, upstream's durations), never in how late this client noticed an end, so
  that a late check never grows the window that made it late;
* at first, and again whenever every task in flight is seen running (the window binds), the
  window grows by two for every task seen to start. A task runs for several refreshes, so the
  tasks that start in a round are only those the last round let in: one more per start would
  add the same number every round (8, 16, 24, 32: three refreshes to fill 30 slots, the last
  slots started periods late, a wall time a batch submitted at once never pays); two more
  triples the first round and grows each later one by more than half (8, 24, 56). Once any
  of ours is seen waiting, it never grows beyond the most known to run (the concurrency, or
  the tasks seen running and not yet ended where the reconstruction, which counts a task only
  up to its latest answer, lags) plus the headroom: it grows on as more are seen to run, and
  the tasks waiting upstream stay what a full upstream needs. It never grows beyond three
  times the tasks known to run. Upstream is taken to be full once the
  concurrency has not risen for a while although tasks of ours were waiting (for a period
  plus twice the usual wait between a submit and its start), or at once when a submit
  is refused because upstream is saturated (:meth:`WindowEstimator.saturated`). Meanwhile
  :attr:`WindowEstimator.eager` asks the poller to check new tasks right after their first
  refresh, so that it knows soon whether they started;
* ``concurrency`` is the most seen running at once over a recent horizon (eight task durations):
  when upstream's capacity drops, the window shrinks once the horizon has passed; when it
  returns, the tasks already waiting start at once, the concurrency rises, and the window grows
  back with it.

Times are whatever one clock the caller uses for all of them (the gateway's, converted); nothing
here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

#: Buckets per block: the concurrency is a maximum over blocks, kept up to date as it rises.
_BLOCK = 64
#: Tasks seen to start before the window may conclude that upstream is full.
_MIN_STARTS = 4
#: Buckets per refresh period in the concurrency reconstruction.
_BUCKETS_PER_PERIOD = 8
#: The concurrency is remembered over this many task durations.
_HORIZON_DURATIONS = 8


def _queued(state: _Task) -> bool:
    """Whether an answer showed the task waiting upstream (and none since showed it running)."""
    return state.seen and state.start is None


class _Task:
    __slots__ = ("covered", "seen", "start", "submitted")

    def __init__(self, submitted: float | None = None) -> None:
        self.submitted = submitted
        #: When it started running upstream, once known.
        self.start: float | None = None
        #: Its running interval has been counted up to here.
        self.covered = 0.0
        #: Whether any answer about it has come back since submit.
        self.seen = False


class WindowEstimator:
    """The in-flight limit that keeps upstream busy without queueing far beyond it.

    Args:
        initial: the limit before anything is known (and its lowest value).
        cap: a hard cap (``max_in_flight``), or None.
        period: the gateway's refresh period as now estimated (seconds; 0 while unknown).

    The poller calls :meth:`submitted` when a submit succeeds, :meth:`seen` on every answer
    about a task that has not ended (with upstream's start time once it runs), :meth:`ended`
    when it sees a task end, :meth:`saturated` when a submit is refused because upstream is
    full, and :meth:`forget` when it stops tracking a task for another reason; the batch reads
    :attr:`limit`.
    """

    def __init__(
        self,
        *,
        initial: int = 8,
        cap: int | None = None,
        period: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._initial = max(1, initial)
        self._cap = cap
        self._period = period
        self._tasks: dict[Hashable, _Task] = {}
        #: Seconds per bucket of the reconstruction: set from the period when first needed.
        self._step = 0.0
        #: bucket -> how many of ours ran at its midpoint (as far as known)
        self._buckets: dict[int, int] = {}
        #: block -> the largest bucket count in it
        self._blocks: dict[int, int] = {}
        self._now = -math.inf
        self._running = 0
        #: Tasks seen waiting upstream after their first refresh.
        self._queued = 0
        self._startup = True
        #: How long tasks run (a recency-weighted mean), once one was seen to end.
        self._duration: float | None = None
        self._limit = self._initial
        #: How long tasks wait between submit and start.
        self._wait = 0.0
        self._waits = 0
        #: Tasks seen to start since the window last began to grow fast (slow start).
        self._started = 0
        self._base = self._initial
        #: The highest bucket so far, and its time.
        self._top = 0
        self._top_at = -math.inf

    # -- reading ------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """How many tasks may be in flight (submitted and not seen ended) now."""
        return self._limit

    @property
    def concurrency(self) -> int:
        """The most of our tasks seen running at once over the recent horizon (until the
        period, the reconstruction's unit, is known: how many run now, exact before any end)."""
        if self._step <= 0:
            return self._running
        if not self._blocks:
            return 0
        horizon = self._horizon()
        if math.isinf(horizon):
            return max(self._blocks.values())
        oldest = math.floor((self._now - horizon) / self._step) // _BLOCK
        return max((v for k, v in self._blocks.items() if k >= oldest), default=0)

    @property
    def eager(self) -> bool:
        """Whether the window is still growing towards upstream's capacity: the poller should
        then check each new task right after its first refresh (whether it started tells how
        far to grow), not only once it may have ended."""
        return self._startup

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not seen ended (or forgotten)."""
        return len(self._tasks)

    @property
    def headroom(self) -> int:
        """Tasks kept in flight beyond the concurrency: those expected to end upstream within
        one refresh period (before the gateway shows it), and one more."""
        period = self._period()
        if self._duration is None or period <= 0:
            return 2
        return 1 + math.ceil(self.concurrency * period / self._duration)

    # -- events -------------------------------------------------------------------------

    def submitted(self, task: Hashable, *, at: float) -> None:
        """A task was submitted at ``at``."""
        if task not in self._tasks:
            self._tasks[task] = _Task(at)
        self._advance(at)
        self._update()

    def seen(self, task: Hashable, *, at: float, started: float | None) -> None:
        """An answer showed ``task`` not ended as of ``at``, running since ``started`` if it is.

        Args:
            at: the time the answer describes (its refresh time).
            started: when upstream started it (its own stamp, else the gateway's first
                refresh that saw it running), or None while it waits.
        """
        state = self._tasks.get(task)
        if state is None:
            state = self._tasks[task] = _Task()
        self._queued -= _queued(state)
        state.seen = True
        self._advance(at)
        if started is not None:
            if state.start is None:
                state.start = state.covered = started
                self._running += 1
                self._waited(state)
            self._cover(state, at)
        self._queued += _queued(state)
        self._update()

    def ended(self, task: Hashable, *, started: float | None, ended: float) -> None:
        """``task`` ended at ``ended`` (upstream's stamp), having run since ``started``.

        Args:
            started: when upstream started it, if known (a task that failed while waiting did
                not run).
            ended: when upstream ended it.
        """
        state = self._drop(task)
        if state is not None:
            if state.start is None and started is not None:
                state.start = state.covered = started
                self._waited(state)
            if state.start is not None:
                self._cover(state, ended)
        self._advance(ended)
        if started is not None and ended > started:
            took = ended - started
            self._duration = (
                took if self._duration is None else (self._duration + (took - self._duration) / 8)
            )
        self._update()

    def saturated(self) -> None:
        """A submit was refused because upstream is full (the gateway's own 429): stop growing."""
        if self._startup and self._waits > 0:
            self._startup = False
            self._update()

    def forget(self, task: Hashable) -> None:
        """Stop counting ``task`` (dropped for another reason than its end)."""
        self._drop(task)
        self._update()

    # -- internals ----------------------------------------------------------------------

    def _horizon(self) -> float:
        if self._duration is None:
            return math.inf
        return _HORIZON_DURATIONS * self._duration

    def _drop(self, task: Hashable) -> _Task | None:
        """Stop counting ``task`` as in flight (and as running); return what was known."""
        state = self._tasks.pop(task, None)
        if state is not None:
            self._queued -= _queued(state)
            if state.start is not None:
                self._running -= 1
        return state

    def _advance(self, at: float) -> None:
        if at <= self._now:
            return
        self._now = at
        horizon = self._horizon()
        if self._step > 0 and len(self._buckets) > 2 * horizon / self._step + _BLOCK:
            oldest = math.floor((at - horizon) / self._step)
            self._buckets = {k: v for k, v in self._buckets.items() if k >= oldest}
            self._blocks = {k: v for k, v in self._blocks.items() if k >= oldest // _BLOCK}

    def _waited(self, state: _Task) -> None:
        """Learn how long tasks wait between submit and start."""
        self._started += 1
        if state.submitted is not None and state.start is not None:
            wait = max(0.0, state.start - state.submitted)
            self._waits += 1
            # The first waits set the level (an average from zero would make a first
            # patience far too short while the first tasks are still being dispatched).
            self._wait += (wait - self._wait) / min(8, self._waits)

    def _cover(self, state: _Task, until: float) -> None:
        """Count the task as running from where it was counted up to ``until``."""
        if until <= state.covered:
            return
        if self._step <= 0:
            period = self._period()
            if period <= 0:
                return  # counted once the period (the reconstruction's unit) is known
            self._step = period / _BUCKETS_PER_PERIOD
        step = self._step
        first = math.ceil(state.covered / step - 0.5)
        last = math.ceil(until / step - 0.5)  # buckets whose midpoint is in [covered, until)
        buckets, blocks = self._buckets, self._blocks
        for b in range(first, last):
            count = buckets.get(b, 0) + 1
            buckets[b] = count
            block = b // _BLOCK
            if count > blocks.get(block, 0):
                blocks[block] = count
            if count > self._top:
                # When the concurrency first reached a new height, as reconstructed: a start
                # learned late raises it back then, not now.
                self._top, self._top_at = count, b * step
        state.covered = until

    def _patience(self) -> float:
        """How long the concurrency may stay flat, with tasks of ours waiting, before upstream
        is taken to be full: a period plus twice the usual wait before a start (dispatch).

        A wait that grew because our own tasks queue must not keep the window growing: past
        half a task's duration, waiting is queueing.
        """
        wait = self._wait if self._duration is None else min(self._wait, self._duration / 2)
        return self._period() + 2 * wait

    def _update(self) -> None:
        outstanding = len(self._tasks)
        concurrency = self.concurrency
        if not self._queued:
            # None of ours is seen waiting: a flat concurrency says nothing of upstream's
            # capacity (a task submitted and not yet refreshed proves nothing either).
            self._top_at = max(self._top_at, self._now)
        full = outstanding >= self._limit - 1
        if full and self._running >= 0.9 * outstanding and not self._startup:
            # Every task in flight runs: the window is what limits. Grow fast again.
            self._startup, self._started, self._base = True, 0, self._limit
        elif (
            self._startup
            # Nothing is known of upstream's capacity until some of ours were seen to start.
            and self._waits >= _MIN_STARTS
            and self._step > 0
            and self._now - self._top_at > self._patience()
        ):
            # Tasks of ours waited for a while, and no more ran at once since the concurrency
            # last rose: upstream is full (waiting alone proves nothing: tasks may wait
            # whatever the load).
            self._startup = False
        headroom = self.headroom
        if self._startup:
            # Never beyond three times what is known to run: answers within one refresh come
            # one by one, and the running ones first must not let in three times the tasks
            # its waiting ones are about to show.
            # Tasks seen running and not ended count although their intervals were not seen
            # to overlap yet (each is counted only up to its latest answer, and most are not
            # asked about between start and end).
            running = max(self._running, concurrency)
            grown = min(self._base + 2 * self._started, 3 * running)
            if self._queued:
                # Some of ours wait: upstream may be full. Grow only with what runs at once,
                # plus the headroom a full upstream needs.
                grown = min(grown, running + headroom)
        else:
            grown = concurrency + headroom
        limit = max(self._initial, grown)
        if self._cap is not None:
            limit = min(limit, self._cap)
        self._limit = limit
