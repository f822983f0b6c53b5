"""The upstream model service (DashScope) as a small discrete-event simulation.

Upstream runs ``slots`` tasks at once for the account; the others wait ``PENDING``. The
simulation is advanced lazily to a given time: pending events (a task ending, a freed slot
coming back from other tenants, a task becoming ready after its start delay, a scheduled
change of capacity) are processed in time order, so the result is the same whether it is
advanced every millisecond or once an hour.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

QueuePolicy = Literal["fifo", "shared"]
#: How long upstream works on a task, given the submitted JSON body and a seeded RNG.
ProcessingTime = Callable[[Mapping[str, Any], random.Random], float]

PENDING = "PENDING"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"

INTERNAL_ERROR = ("InternalError", "An internal error has occured, please try again later")
MODERATION_ERROR = ("DataInspectionFailed", "Input data may contain inappropriate content.")
#: Any prompt containing this text ends FAILED with :data:`MODERATION_ERROR`.
FAIL_MARKER = "[fail]"

_MEDIAN_1080P_5S = 150.0
_SIGMA = 0.3
_MIN_SECONDS = 30.0
_MAX_SECONDS = 900.0
# Pixel counts separating the tiers of SPEC §5 (largest 480P: 832*480; largest 720P: 1280*720).
_MAX_480P_PIXELS = 832 * 480
_MAX_720P_PIXELS = 1280 * 720

# Event kinds (events due at the same instant are handled in the order they were pushed).
_END = 0
_GRANT = 1
_SLOTS = 2
_READY = 3


def default_processing_time(
    body: Mapping[str, Any], rng: random.Random, *, sigma: float = _SIGMA
) -> float:
    """Draw upstream's working time for one task, in seconds.

    Lognormal with a median of 150 s for a 1080P-tier, 5 s video (the documented example took
    153 s), scaled linearly with duration, times 0.6 for the 720P tier and 0.4 for the 480P tier
    (by pixel count); lognormal ``sigma`` (default 0.3); clipped to 30-900 s.
    """
    size, duration = _size_and_duration(body)
    width, height = (int(part) for part in size.split("*"))
    pixels = width * height
    tier = 0.4 if pixels <= _MAX_480P_PIXELS else 0.6 if pixels <= _MAX_720P_PIXELS else 1.0
    median = _MEDIAN_1080P_5S * (duration / 5.0) * tier
    seconds = rng.lognormvariate(math.log(median), sigma)
    return min(_MAX_SECONDS, max(_MIN_SECONDS, seconds))


def _size_and_duration(body: Mapping[str, Any]) -> tuple[str, int]:
    metadata = body.get("metadata")
    parameters = metadata.get("parameters") if isinstance(metadata, Mapping) else None
    params: Mapping[str, Any] = parameters if isinstance(parameters, Mapping) else {}
    size = params.get("size")
    duration = params.get("duration")
    return (
        size if isinstance(size, str) else "1920*1080",
        duration if isinstance(duration, int) and duration > 0 else 5,
    )


@attrs.define(kw_only=True, eq=False)
class UpstreamTask:
    """One task as upstream knows it."""

    task_id: str
    submit_time: float
    processing_time: float
    #: ``(code, message)`` if the task is bound to fail, else ``None``.
    failure: tuple[str, str] | None
    state: str = PENDING
    start_time: float | None = None
    end_time: float | None = None

    @property
    def finished(self) -> bool:
        """Whether upstream has ended the task."""
        return self.state in (SUCCEEDED, FAILED)

    def seen_at(self, moment: float) -> UpstreamTask:
        """The task as a status query at ``moment`` sees it.

        The simulation may have run past ``moment`` (a refresh stamped earlier than the
        gateway got round to it): what happened after it is hidden.
        """
        if self.end_time is not None and self.end_time <= moment:
            return self
        if self.start_time is not None and self.start_time <= moment:
            return attrs.evolve(self, state=RUNNING, end_time=None)
        return attrs.evolve(self, state=PENDING, start_time=None, end_time=None)


class Upstream:
    """The account's slots, queue and running tasks.

    Args:
        slots: tasks upstream runs at once for this account.
        queue: ``"fifo"``: a freed slot goes at once to the oldest waiting task. ``"shared"``:
            the account competes with other tenants, so a freed slot comes back after a random
            delay drawn from ``shared_delay`` and goes to a random waiting task.
        shared_delay: ``(low, high)`` seconds, for ``"shared"``.
        rng: random source of the ``"shared"`` draws (kept apart from processing times, so
            those do not depend on when the simulation is advanced).
        start_delay: ``(low, high)`` seconds a submitted task waits ``PENDING`` before it may
            take a slot, even a free one (upstream's own dispatch latency).
        delay_rng: random source of the ``start_delay`` draws (default: a fixed seed).
    """

    def __init__(
        self,
        *,
        slots: int,
        queue: QueuePolicy,
        shared_delay: tuple[float, float],
        rng: random.Random,
        start_delay: tuple[float, float] = (0.0, 0.0),
        delay_rng: random.Random | None = None,
    ) -> None:
        self._queue_policy = queue
        self._shared_delay = shared_delay
        self._rng = rng
        self._start_delay = start_delay
        self._delay_rng = delay_rng or random.Random("start-delay")
        self._slots = slots
        self._free = slots
        self._waiting: deque[UpstreamTask] = deque()
        self._events: list[tuple[float, int, int, UpstreamTask | None, int]] = []
        self._seq = 0
        self._running = 0
        #: The most tasks ever running at once (never more than ``slots``).
        self.peak_running = 0

    @property
    def running(self) -> int:
        """How many tasks are running now (as of the last advance)."""
        return self._running

    @property
    def slots(self) -> int:
        """The account's capacity now (as of the last advance)."""
        return self._slots

    @property
    def waiting(self) -> int:
        """How many tasks wait for a slot (as of the last advance)."""
        return len(self._waiting)

    def advance(self, now: float) -> None:
        """Process, in time order, every event due at or before ``now``."""
        while self._events and self._events[0][0] <= now:
            at, _, kind, task, value = heapq.heappop(self._events)
            if kind == _END:
                assert task is not None
                # A task ended early by finish_now() leaves a stale end event behind.
                if task.state == RUNNING:
                    self._end(task, at, success=task.failure is None)
                    self._release(at)
            elif kind == _GRANT:
                self._grant(at)
            elif kind == _SLOTS:
                self._resize(value, at)
            else:
                assert task is not None
                # finish_now() may have ended it while it waited for its start delay.
                if not task.finished:
                    self._admit(task, at)

    def submit(self, task: UpstreamTask, now: float) -> None:
        """Accept ``task`` at ``now``: after its start delay, run it if a slot is free, else
        queue it."""
        self.advance(now)
        low, high = self._start_delay
        if high > 0:
            self._push(now + self._delay_rng.uniform(low, high), _READY, task)
        else:
            self._admit(task, now)

    def set_slots(self, slots: int, now: float) -> None:
        """Change the capacity to ``slots`` at ``now``.

        More slots start waiting tasks at once; fewer let running tasks finish, and retire
        the slots they free until the account is within its new capacity.
        """
        self.advance(now)
        self._resize(slots, now)

    def schedule_slots(self, slots: int, at: float) -> None:
        """Change the capacity to ``slots`` at time ``at`` (processed in time order)."""
        self._push(at, _SLOTS, None, slots)

    def _admit(self, task: UpstreamTask, at: float) -> None:
        """Run ``task`` if a slot is free, else queue it."""
        if self._free > 0:
            self._free -= 1
            self._start(task, at)
        else:
            self._waiting.append(task)

    def _resize(self, slots: int, at: float) -> None:
        # _free goes negative when the cut is deeper than the idle slots: that many slots
        # are retired as running tasks free them (see _grant).
        self._free += slots - self._slots
        self._slots = slots
        while self._free > 0 and self._waiting:
            self._free -= 1
            self._start(self._pop_waiting(), at)

    def finish_now(
        self, task: UpstreamTask, now: float, *, failure: tuple[str, str] | None
    ) -> None:
        """End ``task`` at ``now``, successfully unless ``failure`` is given.

        Raises:
            ValueError: the task has already ended.
        """
        self.advance(now)
        if task.finished:
            msg = f"upstream task {task.task_id} already ended ({task.state})"
            raise ValueError(msg)
        task.failure = failure
        if task.state == PENDING:
            # It never held a slot: nothing to release. (A task still in its start delay is
            # not queued yet; its ready event finds it ended.)
            if task in self._waiting:
                self._waiting.remove(task)
            task.start_time = now
            self._end(task, now, success=failure is None)
        else:
            self._end(task, now, success=failure is None)
            self._release(now)

    def _start(self, task: UpstreamTask, at: float) -> None:
        task.state = RUNNING
        task.start_time = at
        self._running += 1
        self.peak_running = max(self.peak_running, self._running)
        self._push(at + task.processing_time, _END, task)

    def _end(self, task: UpstreamTask, at: float, *, success: bool) -> None:
        if task.state == RUNNING:
            self._running -= 1
        task.state = SUCCEEDED if success else FAILED
        task.end_time = at

    def _release(self, at: float) -> None:
        if self._queue_policy == "fifo":
            self._grant(at)
        else:
            low, high = self._shared_delay
            self._push(at + self._rng.uniform(low, high), _GRANT, None)

    def _grant(self, at: float) -> None:
        """Hand a slot that just became ours to a waiting task, keep it idle, or retire it."""
        if self._free < 0 or not self._waiting:
            # _free < 0: capacity was cut, and this slot is one too many.
            self._free += 1
            return
        self._start(self._pop_waiting(), at)

    def _pop_waiting(self) -> UpstreamTask:
        if self._queue_policy == "fifo":
            return self._waiting.popleft()
        index = self._rng.randrange(len(self._waiting))
        task = self._waiting[index]
        del self._waiting[index]
        return task

    def _push(self, at: float, kind: int, task: UpstreamTask | None, value: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, task, value))
