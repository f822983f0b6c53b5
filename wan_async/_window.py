"""How many tasks to keep in flight: enough to keep upstream as busy as submitting them all.

A task of ours waiting upstream (``QUEUED``) proves nothing about upstream's capacity: on a
shared account slots go to other tenants for a while, and some tasks wait before starting
whatever the load. What does tell is whether *more tasks in flight ran more tasks at once*.
So the window is set from how many of our tasks were seen running at the same time, as
reconstructed from upstream's own start and end stamps (also for tasks that ended before
their first check), and kept ahead of it:

* ``limit = gain * concurrency + headroom``, with ``gain`` 1.5: a window that binds (every
  task in flight runs) grows by half each time the tasks it let in start, and one that does
  not (extra tasks only wait) settles where the extra ones only wait;
* at first, and again whenever every task in flight is seen running, the window grows as
  TCP's slow start does: two more for every task seen to start (at most three times as many
  as ran at once), until for a while (twice the usual wait before a start, plus the detection
  delay) no more of ours ran at once: only then is upstream taken to be full. Meanwhile
  :attr:`WindowEstimator.eager` asks the poller to check new tasks right after their first
  refresh, so that it knows soon whether they started;
* ``headroom`` covers the tasks that ended upstream while the poller has not noticed yet
  (``concurrency / duration`` end per second, each unnoticed for the detection delay), so
  that a slot freed upstream finds a task of ours already waiting;
* ``concurrency`` is the most seen running at once over a recent horizon: when upstream's
  capacity drops, the window shrinks once the horizon has passed; when it returns, the tasks
  already waiting start at once, the concurrency rises, and the window grows back with it.

Times are whatever one clock the caller uses for all of them (the gateway's, converted);
nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

#: Buckets per block: the concurrency is a maximum over blocks, kept up to date as it rises.
_BLOCK = 64
#: Tasks seen to start before the window may conclude that upstream is full.
_MIN_STARTS = 4


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
    """The in-flight limit that keeps upstream busy without flooding it.

    Args:
        initial: the limit before anything is known (and its lowest value).
        cap: a hard cap (``max_in_flight``), or None.
        gain: how many tasks to keep in flight per task seen running at once.
        horizon: seconds over which the most tasks seen running at once is remembered.
        resolution: seconds per bucket of the concurrency reconstruction.
        detection: how long (seconds) the end of a task is assumed to go unnoticed before any
            is measured.

    The poller calls :meth:`submitted` when a submit succeeds, :meth:`seen` on every answer
    about a task that has not ended (with upstream's start time once it runs), :meth:`ended`
    when it sees a task end, and :meth:`forget` when it stops tracking a task for another
    reason; the batch reads :attr:`limit`.
    """

    def __init__(
        self,
        *,
        initial: int = 8,
        cap: int | None = None,
        gain: float = 1.5,
        horizon: float = 600.0,
        resolution: float = 1.0,
        detection: float = 20.0,
    ) -> None:
        self._initial = max(1, initial)
        self._cap = cap
        self._gain = gain
        self._horizon = horizon
        self._step = resolution
        self._tasks: dict[Hashable, _Task] = {}
        #: bucket -> how many of ours ran at its midpoint (as far as known)
        self._buckets: dict[int, int] = {}
        #: block -> the largest bucket count in it
        self._blocks: dict[int, int] = {}
        self._now = -math.inf
        self._running = 0
        self._unseen = 0
        self._startup = True
        #: How long an end goes unnoticed, and how long tasks run (recency-weighted means).
        self._delay = detection
        self._duration: float | None = None
        self._limit = self._initial
        #: How long tasks wait between submit and start, and when the concurrency last rose.
        self._wait = 0.0
        self._waits = 0
        #: Tasks seen to start since the window last began to grow fast (slow start).
        self._started = 0
        self._base = self._initial
        self._peak = 0
        self._rose_at = -math.inf

    # -- reading ------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """How many tasks may be in flight (submitted and not seen ended) now."""
        return self._limit

    @property
    def concurrency(self) -> int:
        """The most of our tasks seen running at once over the recent horizon."""
        if not self._blocks:
            return 0
        oldest = math.floor((self._now - self._horizon) / self._step) // _BLOCK
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
        """Tasks kept in flight beyond the gain: those that ended upstream and are not noticed
        yet (at full speed, ``concurrency / duration`` end per second, each unnoticed for the
        detection delay), and one more."""
        if self._duration is None:
            return 2
        return 1 + math.ceil(1.5 * self.concurrency * self._delay / self._duration)

    # -- events -------------------------------------------------------------------------

    def submitted(self, task: Hashable, *, at: float) -> None:
        """A task was submitted at ``at``."""
        if task not in self._tasks:
            self._tasks[task] = _Task(at)
            self._unseen += 1
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
        elif not state.seen:
            self._unseen -= 1
        state.seen = True
        self._advance(at)
        if started is not None:
            if state.start is None:
                state.start = state.covered = started
                self._running += 1
                self._waited(state)
            self._cover(state, at)
        self._update()

    def ended(
        self, task: Hashable, *, started: float | None, ended: float, seen: float | None = None
    ) -> None:
        """``task`` ended at ``ended`` (upstream's stamp), having run since ``started``.

        Args:
            started: when upstream started it, if known (a task that failed while waiting did
                not run).
            ended: when upstream ended it.
            seen: when the poller noticed (to learn how long ends go unnoticed).
        """
        state = self._drop(task)
        if state is not None:
            if state.start is None and started is not None:
                state.start = state.covered = started
                self._waited(state)
            if state.start is not None:
                self._cover(state, ended)
        self._advance(ended if seen is None else seen)
        if seen is not None and seen >= ended:
            self._delay += (seen - ended - self._delay) / 8
        if started is not None and ended > started:
            took = ended - started
            self._duration = (
                took if self._duration is None else (self._duration + (took - self._duration) / 8)
            )
        self._update()

    def forget(self, task: Hashable) -> None:
        """Stop counting ``task`` (dropped for another reason than its end)."""
        self._drop(task)
        self._update()

    # -- internals ----------------------------------------------------------------------

    def _drop(self, task: Hashable) -> _Task | None:
        """Stop counting ``task`` as in flight (and as running); return what was known."""
        state = self._tasks.pop(task, None)
        if state is not None:
            if not state.seen:
                self._unseen -= 1
            if state.start is not None:
                self._running -= 1
        return state

    def _advance(self, at: float) -> None:
        if at <= self._now:
            return
        self._now = at
        horizon = at - self._horizon
        if len(self._buckets) > 2 * self._horizon / self._step + _BLOCK:
            oldest = math.floor(horizon / self._step)
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
        state.covered = until

    def _patience(self) -> float:
        """How long the concurrency may stay flat before the growth is over.

        Tasks wait before they start (upstream's dispatch), so a rise shows only that much
        later; but a wait that grew because our own tasks queue must not keep the window
        growing: past half a task's duration, waiting is queueing.
        """
        wait = self._wait if self._duration is None else min(self._wait, self._duration / 2)
        return max(30.0, 2 * wait + self._delay)

    def _update(self) -> None:
        outstanding = len(self._tasks)
        full = outstanding >= self._limit - 1
        concurrency = self.concurrency
        if concurrency > self._peak or not full:
            self._rose_at = self._now
        self._peak = concurrency
        if full and self._running >= 0.9 * outstanding and not self._startup:
            # Every task in flight runs: the window is what limits. Grow fast again.
            self._startup, self._started, self._base = True, 0, self._limit
        elif (
            self._startup
            # Nothing is known of upstream's capacity until some of ours were seen to start.
            and self._waits >= _MIN_STARTS
            and self._now - self._rose_at > self._patience()
        ):
            # More in flight for a while, and no more ran at once: the extra ones only wait
            # (waiting alone proves nothing: tasks may wait whatever the load).
            self._startup = False
        if self._startup:
            # As TCP's slow start: two more for every task seen to start, though never more
            # than three times as many as ran at once.
            quick = min(self._base + 2 * self._started, 3 * concurrency + self.headroom)
            grown = max(quick, 2 * concurrency + self.headroom)
        else:
            grown = math.ceil(self._gain * concurrency) + self.headroom
        limit = max(self._initial, grown)
        if self._cap is not None:
            limit = min(limit, self._cap)
        self._limit = limit
