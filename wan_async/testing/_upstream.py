"""The upstream model service (DashScope) as a small discrete-event simulation.

Upstream runs ``slots`` tasks at once for the account; the others wait ``PENDING``. The
simulation is advanced lazily to a given time: pending events (a task ending, a freed slot
coming back from other tenants) are processed in time order, so the result is the same
whether it is advanced every millisecond or once an hour.
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

_END = 0
_GRANT = 1


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
    """

    def __init__(
        self,
        *,
        slots: int,
        queue: QueuePolicy,
        shared_delay: tuple[float, float],
        rng: random.Random,
    ) -> None:
        self._queue_policy = queue
        self._shared_delay = shared_delay
        self._rng = rng
        self._free = slots
        self._waiting: deque[UpstreamTask] = deque()
        self._events: list[tuple[float, int, int, UpstreamTask | None]] = []
        self._seq = 0
        self._running = 0
        #: The most tasks ever running at once (never more than ``slots``).
        self.peak_running = 0

    @property
    def running(self) -> int:
        """How many tasks are running now (as of the last advance)."""
        return self._running

    @property
    def waiting(self) -> int:
        """How many tasks wait for a slot (as of the last advance)."""
        return len(self._waiting)

    def advance(self, now: float) -> None:
        """Process, in time order, every event due at or before ``now``."""
        while self._events and self._events[0][0] <= now:
            at, _, kind, task = heapq.heappop(self._events)
            if kind == _END:
                assert task is not None
                # A task ended early by finish_now() leaves a stale end event behind.
                if task.state == RUNNING:
                    self._end(task, at, success=task.failure is None)
                    self._release(at)
            else:
                self._grant(at)

    def submit(self, task: UpstreamTask, now: float) -> None:
        """Accept ``task`` at ``now``: run it if a slot is free, else queue it."""
        self.advance(now)
        if self._free > 0:
            self._free -= 1
            self._start(task, now)
        else:
            self._waiting.append(task)

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
            # It never held a slot: nothing to release.
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
        """Hand a slot that just became ours to a waiting task, or keep it idle."""
        if not self._waiting:
            self._free += 1
            return
        if self._queue_policy == "fifo":
            task = self._waiting.popleft()
        else:
            index = self._rng.randrange(len(self._waiting))
            task = self._waiting[index]
            del self._waiting[index]
        self._start(task, at)

    def _push(self, at: float, kind: int, task: UpstreamTask | None) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, task))
