"""Where a batch stands: counts from what the client knows, and an ETA from what it learned.

Each item of a batch is in one place at a time: waiting to be sent, its submit on the wire,
its task created and not checked since (*unchecked*: the client does not know whether upstream
queued it, runs it, or finished it), last seen queued or running upstream, its video being
saved, or ended (succeeded, failed, or its submit's answer lost). Nothing is guessed: a task
the poller has not checked yet is counted as unchecked, never as queued.

The ETA (clock seconds to the batch's last end) is a small simulation of what the client has
learned: each task upstream holds a slot until it is expected to end (its start, or its
submit, plus the learned median duration of its kind), the tasks seen queued and the items not
sent yet then take the slots as they free (the learned window: how many of this client's
tasks upstream runs at once), each for its kind's median. Before any task has been seen to end
there is nothing learned to go on, and the ETA is ``None``.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from ._clock import Clock
from ._config import awaited_only
from ._durations import DurationKey, duration_key
from ._handle import TaskHandle
from ._models import TaskSnapshot, TaskStatus, VideoRequest

logger = logging.getLogger("wan_async")

_QUEUED = frozenset({TaskStatus.NOT_START, TaskStatus.SUBMITTED, TaskStatus.QUEUED})


@attrs.frozen(kw_only=True)
class BatchProgress:
    """Where a batch stands: every item is counted in exactly one of the counts.

    Attributes:
        total: the batch's items.
        waiting: not sent yet (waiting for room in the window, the request budget, a retry).
        submitting: the submit's request is on the wire.
        unchecked: the task was created and not checked since: upstream may have queued it,
            be running it, or have finished it. Resumed tasks start here too.
        queued: last seen waiting upstream (``NOT_START``, ``SUBMITTED``, ``QUEUED``).
        running: last seen running upstream (``IN_PROGRESS``, or a status the gateway added
            later: neither waiting nor ended).
        saving: the task succeeded and its video is being saved (``download_dir``).
        succeeded: ended with a video (saved, if asked to).
        failed: ended without one: the task failed, the submit was refused, a timeout, the
            deadline, a stop.
        outcome_unknown: the submit's answer was lost (:class:`SubmitOutcomeUnknown`): a task
            may exist and be billed.
        elapsed: clock seconds since the batch started.
        eta: clock seconds until the last item is expected to end, from the learned durations
            and window; ``None`` before any task was seen to end (nothing learned yet), ``0``
            once every item has ended.
        window: how many of this client's tasks upstream is believed to run at once (the
            batch's ``max_in_flight`` when that is smaller).
    """

    total: int
    waiting: int
    submitting: int
    unchecked: int
    queued: int
    running: int
    saving: int
    succeeded: int
    failed: int
    outcome_unknown: int
    elapsed: float
    eta: float | None
    window: int

    @property
    def ended(self) -> int:
        """Items that ended, however they ended."""
        return self.succeeded + self.failed + self.outcome_unknown

    @property
    def in_flight(self) -> int:
        """Items sent and not ended: on the wire, unchecked, queued, running or saving."""
        return self.submitting + self.unchecked + self.queued + self.running + self.saving

    @property
    def fraction(self) -> float:
        """The share of items ended, 0 to 1 (1 for an empty batch)."""
        return self.ended / self.total if self.total else 1.0

    def __str__(self) -> str:
        parts = [
            f"{self.ended}/{self.total} ended",
            f"succeeded {self.succeeded}",
            f"failed {self.failed}",
        ]
        if self.outcome_unknown:
            parts.append(f"outcome unknown {self.outcome_unknown}")
        parts += [
            f"running {self.running}",
            f"queued {self.queued}",
            f"not yet checked {self.unchecked}",
            f"submitting {self.submitting}",
            f"waiting {self.waiting}",
        ]
        if self.saving:
            parts.append(f"saving {self.saving}")
        eta = "unknown" if self.eta is None else f"{self.eta:.0f} s"
        return ", ".join(parts) + f"; ETA {eta}"


#: Called with the batch's progress whenever an item moves (see ``on_progress=``).
ProgressCallback = Callable[[BatchProgress], None]


def check_progress_callback(callback: ProgressCallback | None) -> None:
    """Refuse an ``on_progress`` that would never run: a coroutine function.

    Raises:
        TypeError: ``callback`` is a coroutine function, or not callable.
    """
    if callback is None:
        return
    if not callable(callback):
        msg = f"on_progress takes a function of one BatchProgress, got {callback!r}"
        raise TypeError(msg)
    if awaited_only(callback):
        msg = (
            f"on_progress is called, not awaited; {callback!r} is a coroutine function. Pass "
            "a plain function (to do async work, hand the progress to a task of yours, e.g. "
            "on an anyio memory object stream)"
        )
        raise TypeError(msg)


class Outlook(Protocol):
    """What the poller has learned, as the ETA needs it."""

    def expected_end(self, handle: TaskHandle) -> float | None:
        """When (client monotonic clock) a tracked task is expected to end, if known."""

    def typical_duration(self, key: DurationKey | None) -> float | None:
        """The learned median duration of a kind, ``None`` before any task ended."""

    def window(self) -> int:
        """How many of this client's tasks upstream runs at once, as learned."""


class _Place(enum.Enum):
    WAITING = "waiting"
    SUBMITTING = "submitting"
    TRACKED = "tracked"  # unchecked, queued or running: read from the handle
    SAVING = "saving"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    OUTCOME_UNKNOWN = "outcome_unknown"


class ProgressTracker:
    """Keeps where each item of one batch is, and tells ``on_progress`` of every move.

    Args:
        requests: the batch's items.
        clock: the client's clock (elapsed time and ETA are in its seconds).
        outlook: what the poller learned (durations, window, when tasks should end).
        cap: the batch's own limit on items in flight.
        on_progress: called with a fresh :class:`BatchProgress` after every move.
        failed: called with the exception ``on_progress`` raised (it is not called again).
    """

    def __init__(
        self,
        requests: Sequence[VideoRequest],
        *,
        clock: Clock,
        outlook: Outlook,
        cap: int,
        on_progress: ProgressCallback | None,
        failed: Callable[[BaseException], None],
    ) -> None:
        self._clock = clock
        self._outlook = outlook
        self._cap = cap
        self._on_progress = on_progress
        self._failed = failed
        self._started = clock.monotonic()
        self._keys = [duration_key(r.model, r.size, r.duration) for r in requests]
        self._places = [_Place.WAITING] * len(requests)
        self._counts: Counter[_Place] = Counter({_Place.WAITING: len(requests)})
        #: Kinds of the items not sent yet or on the wire, for the ETA.
        self._unsent_keys: Counter[DurationKey] = Counter(self._keys)
        #: Tracked tasks by id, and the item of each; and the task of each tracked item.
        self._handles: dict[str, tuple[int, TaskHandle]] = {}
        self._task_of: dict[int, str] = {}

    # -- moves, told by the batch ---------------------------------------------------------

    def submitting(self, index: int) -> None:
        """The item's submit request is going out."""
        self._move(index, _Place.SUBMITTING)

    def waiting(self, index: int) -> None:
        """The item's submit was refused (nothing created): it waits for a retry, or ends."""
        self._move(index, _Place.WAITING)

    def tracking(self, index: int, handle: TaskHandle) -> None:
        """The item's task exists (just created, or resumed from a journal)."""
        self._handles[handle.task_id] = (index, handle)
        self._task_of[index] = handle.task_id
        self._move(index, _Place.TRACKED)

    def saving(self, index: int) -> None:
        """The item's task succeeded; its video is being saved."""
        self._move(index, _Place.SAVING)

    def ended(self, index: int, *, ok: bool, outcome_unknown: bool) -> None:
        """The item ended (reported as its outcome)."""
        if ok:
            place = _Place.SUCCEEDED
        else:
            place = _Place.OUTCOME_UNKNOWN if outcome_unknown else _Place.FAILED
        self._move(index, place)

    def status_changed(self, handle: TaskHandle, snapshot: TaskSnapshot) -> None:
        """A poller listener: a task's status changed (only this batch's tasks count)."""
        if handle.task_id in self._handles and not snapshot.is_terminal:
            self._emit()

    def _move(self, index: int, place: _Place) -> None:
        before = self._places[index]
        if before is place:
            return
        unsent = (_Place.WAITING, _Place.SUBMITTING)
        if before in unsent and place not in unsent:
            self._unsent_keys[self._keys[index]] -= 1
        if before is _Place.TRACKED and place is not _Place.TRACKED:
            task_id = self._task_of.pop(index, None)
            if task_id is not None:
                self._handles.pop(task_id, None)
        self._places[index] = place
        self._counts[before] -= 1
        self._counts[place] += 1
        self._emit()

    def _emit(self) -> None:
        callback = self._on_progress
        if callback is None:
            return
        try:
            callback(self.progress())
        except Exception as exc:
            # Not called again: the batch stops and raises this to its reader.
            self._on_progress = None
            logger.error("on_progress callback %r failed; the batch stops", callback)
            self._failed(exc)

    # -- reading ----------------------------------------------------------------------------

    def progress(self) -> BatchProgress:
        """Where the batch stands now."""
        now = self._clock.monotonic()
        tracked = list(self._handles.values())
        unchecked = queued = running = 0
        for _, handle in tracked:
            snapshot = handle.snapshot
            if snapshot is None:
                unchecked += 1
            elif snapshot.status in _QUEUED:
                queued += 1
            else:
                running += 1
        counts = self._counts
        remaining = len(self._places) - (
            counts[_Place.SUCCEEDED] + counts[_Place.FAILED] + counts[_Place.OUTCOME_UNKNOWN]
        )
        window = max(1, min(self._cap, self._outlook.window()))
        return BatchProgress(
            total=len(self._places),
            waiting=counts[_Place.WAITING],
            submitting=counts[_Place.SUBMITTING],
            unchecked=unchecked,
            queued=queued,
            running=running,
            saving=counts[_Place.SAVING],
            succeeded=counts[_Place.SUCCEEDED],
            failed=counts[_Place.FAILED],
            outcome_unknown=counts[_Place.OUTCOME_UNKNOWN],
            elapsed=now - self._started,
            eta=0.0 if remaining == 0 else self._eta(now, tracked, window),
            window=window,
        )

    def _eta(self, now: float, tracked: list[tuple[int, TaskHandle]], window: int) -> float | None:
        outlook = self._outlook
        if outlook.typical_duration(None) is None:
            return None  # nothing learned yet
        # Slots held now: each until its task is expected to end.
        held: list[float] = []
        # Work still to start: the tasks seen queued, the items not sent or on the wire.
        pending = 0
        pending_work = 0.0
        for index, handle in tracked:
            snapshot = handle.snapshot
            key = self._keys[index]
            if snapshot is not None and snapshot.status in _QUEUED:
                pending += 1
                pending_work += self._typical(key)
                continue
            if handle.done():
                held.append(0.0)  # ended upstream, its outcome on its way to the reader
                continue
            end = outlook.expected_end(handle)
            held.append(max(0.0, (end if end is not None else now + self._typical(key)) - now))
        for key, count in self._unsent_keys.items():
            if count:
                pending += count
                pending_work += count * self._typical(key)
        slots = max(window, len(held))
        held.sort()
        free = [0.0] * (slots - len(held)) + held  # ascending: free slots first
        eta = free[-1]
        if pending:
            # The pending items fill the slots as they free, each for the mean pending work:
            # every slot takes `rounds` of them, the earliest-free `extra` one more.
            mean = pending_work / pending
            rounds, extra = divmod(pending, slots)
            if rounds:
                eta = max(eta, free[-1] + rounds * mean)
            if extra:
                eta = max(eta, free[extra - 1] + (rounds + 1) * mean)
        return eta

    def _typical(self, key: DurationKey) -> float:
        seconds = self._outlook.typical_duration(key)
        return seconds if seconds is not None and math.isfinite(seconds) else 0.0
