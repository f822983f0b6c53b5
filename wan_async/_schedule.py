"""When to ask about a task again: spend a GET only where it can tell something new.

The gateway refreshes each unfinished task from upstream once per *refresh period* (15 s by
default, SPEC §3.2) and stamps ``updated_at``; a GET between two refreshes returns the same data.
Every check is placed just after a refresh of the task (where those fall is learned by
:class:`~wan_async._refresh.RefreshEstimator`; :func:`on_grid` is 0.1.0's single grid), and
only at refreshes where the task may have ended: a task cannot end before

* ``start + shortest`` once it has been seen running, where ``start`` is upstream's own start
  time (``output.scheduled_time``, to the millisecond) or, failing that, a period before the
  gateway's ``start_time`` stamp;
* ``q + shortest`` if it was still queued at the refresh ``q``;
* ``submit + shortest`` before the gateway has refreshed it at all, however often a
  ``NOT_START`` answer says so;

and from then on it is checked once per refresh until it ends. ``shortest`` is a low quantile
of how long upstream works on tasks of the same model, size and duration
(:class:`~wan_async._durations.DurationModel`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable

import attrs

from ._durations import DurationKey, duration_key, prior_median
from ._models import TaskStatus

__all__ = [
    "DurationKey",
    "DurationModel",
    "PollPolicy",
    "RefreshEstimate",
    "duration_key",
    "earliest_end",
    "next_check",
    "on_grid",
]


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How the shared poller spends its requests.

    Args:
        refresh_period: the gateway's refresh tick in clock seconds (operators use 15 or 3);
            learned upward from ``updated_at`` when the gateway refreshes less often.
        margin: clock seconds to wait after an expected refresh before asking (covers
            ``updated_at``'s whole-second resolution and a refresh pass that takes a while).
        shortest_duration: clock seconds no task is expected to undercut before any has been
            seen to finish; default: half the prior for its model, size and duration.
        max_concurrent_polls: GETs in flight at once.
        error_backoff: first and longest wait after a failed GET, in clock seconds.
        give_up_after: clock seconds a task's status checks may keep failing (connection
            errors, timeouts, 5xx, answers that do not parse) before its handle fails with
            :class:`~wan_async.StatusUnavailable`; 429s do not count, they only slow down.
            Errors that cannot go away by waiting (a rejected key, a refused query) fail
            handles at once.
    """

    refresh_period: float = attrs.field(default=15.0, validator=attrs.validators.gt(0))
    margin: float = attrs.field(default=1.5, validator=attrs.validators.ge(0))
    shortest_duration: float | None = None
    max_concurrent_polls: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    error_backoff: tuple[float, float] = (2.0, 120.0)
    give_up_after: float = attrs.field(default=600.0, validator=attrs.validators.gt(0))


#: Before any task of a kind has been seen to finish, assume it may take as little as this
#: fraction of the prior median, and never less than SPEC §6's "1 minute" halved.
_PRIOR_SPREAD = 0.5
_PRIOR_FLOOR = 30.0
_MIN_OBSERVED = 3


class DurationModel:
    """How long upstream works on a task, per kind: a prior, refined by observed tasks.

    0.1.0's model, which the poller still uses: a kind's own ends count only from the third,
    and then their minimum is taken as its shortest.
    :class:`wan_async._durations.DurationModel` replaces it.
    """

    def __init__(self, policy: PollPolicy, *, window: int = 100) -> None:
        self._policy = policy
        self._window = window
        self._seen: dict[DurationKey, deque[float]] = {}
        self._ratios: deque[float] = deque(maxlen=window)

    def observe(self, key: DurationKey | None, seconds: float) -> None:
        """Record that upstream worked ``seconds`` on a task of this kind."""
        if seconds <= 0:
            return
        self._ratios.append(seconds / prior_median(key))
        if key is not None:
            self._seen.setdefault(key, deque(maxlen=self._window)).append(seconds)

    def shortest(self, key: DurationKey | None) -> float:
        """Seconds of work a task of this kind is unlikely to undercut."""
        seen = self._seen.get(key, ()) if key is not None else ()
        if len(seen) >= _MIN_OBSERVED:
            return _low(seen)
        if len(self._ratios) >= _MIN_OBSERVED:
            return prior_median(key) * _low(self._ratios)
        if self._policy.shortest_duration is not None:
            return self._policy.shortest_duration
        return max(_PRIOR_FLOOR, prior_median(key) * _PRIOR_SPREAD)


def _low(values: Iterable[float]) -> float:
    """A low quantile: the minimum of a few values, the 3rd percentile of many."""
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.03)]


class RefreshEstimate:
    """The gateway's refresh period: configured, raised when refreshes come less often.

    0.1.0's estimate, learned only upward from the smallest gap (which sparse checks make a
    multiple of the period); :class:`~wan_async._refresh.RefreshEstimator` replaces it.
    """

    def __init__(self, configured: float, *, window: int = 32) -> None:
        self._configured = configured
        self._gaps: deque[float] = deque(maxlen=window)

    @property
    def period(self) -> float:
        """The period to plan with, in clock seconds."""
        if len(self._gaps) >= 5:
            return max(self._configured, min(self._gaps))
        return self._configured

    def observe(self, previous_update: float | None, update: float | None) -> None:
        """Record the gap between two ``updated_at`` stamps of one task."""
        if previous_update is not None and update is not None and update > previous_update:
            self._gaps.append(update - previous_update)


def earliest_end(
    *,
    status: TaskStatus,
    submitted_at: float | None,
    refreshed_at: float | None,
    started_at: float | None,
    shortest: float,
    period: float,
) -> float | None:
    """The earliest a task can have ended, or None if nothing bounds it.

    Args:
        status: the latest status (``NOT_START`` right after submit).
        submitted_at: when the task was submitted (or created, for one attached by id).
        refreshed_at: the refresh time of the latest answer (its ``updated_at``), if any; never
            the insert time a ``NOT_START`` answer carries.
        started_at: the earliest the task can have started, once it has been seen running.
        shortest: the least work to expect.
        period: the refresh period.
    """
    if started_at is not None:
        # Also after a step back to QUEUED (SPEC §3.1): upstream may well still be working.
        return started_at + shortest
    if refreshed_at is None or status is TaskStatus.NOT_START:
        # Not refreshed yet: it can have been working since the submit, and no longer. An
        # answer saying so is no news: the poll time is no start (0.1.0 planned from it).
        return None if submitted_at is None else submitted_at + shortest
    if status in (TaskStatus.IN_PROGRESS, TaskStatus.UNKNOWN):
        # Running (or unclear) with no start time: it started within the last period.
        return refreshed_at - period + shortest
    return refreshed_at + shortest


def next_check(
    *,
    status: TaskStatus,
    submitted_at: float | None,
    refreshed_at: float | None,
    started_at: float | None,
    seen_at: float,
    shortest: float,
    period: float,
    next_refresh: Callable[[float], float],
) -> float:
    """When to ask about an unfinished task next.

    The first refresh at which it may have ended, and never one already seen: all times in
    one clock, the one ``next_refresh`` works in.

    Args:
        status, submitted_at, refreshed_at, started_at, shortest, period: as for
            :func:`earliest_end`.
        seen_at: when the latest answer (or the submit) came back.
        next_refresh: when to ask to see the task's first refresh at or after a given time,
            newer than any refresh seen (its margin included), e.g.
            ``RefreshEstimator.next_refresh(task, t).ask_at``.
    """
    earliest = earliest_end(
        status=status,
        submitted_at=submitted_at,
        refreshed_at=refreshed_at,
        started_at=started_at,
        shortest=shortest,
        period=period,
    )
    return next_refresh(seen_at if earliest is None else max(earliest, seen_at))


def on_grid(
    *, grid: float | None, period: float, margin: float, after_seen: bool
) -> Callable[[float], float]:
    """0.1.0's placement as a ``next_refresh`` for :func:`next_check`: refreshes on one grid.

    Args:
        grid: any refresh time of the loop (None while unknown: then ``margin`` after the
            target).
        period: the refresh period.
        margin: slack after a refresh.
        after_seen: ``grid`` is the refresh already seen: never plan that one again.
    """

    def ask(target: float) -> float:
        if grid is None:
            return target + margin
        steps = math.ceil((target - grid) / period - 1e-9)
        if after_seen:
            steps = max(steps, 1)
        return grid + steps * period + margin

    return ask
