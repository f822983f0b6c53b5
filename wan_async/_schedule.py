"""When to ask about a task again: spend a GET only where it can tell something new.

The gateway refreshes each unfinished task from upstream once per *refresh period* (15 s by
default, SPEC §3.2) and stamps ``updated_at``; a GET between two refreshes returns the same data.
Every check is placed just after a refresh of the task (where those fall is learned by
:class:`~wan_async._refresh.RefreshEstimator`), and
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

from collections.abc import Callable
from typing import Any

import attrs

from ._durations import DurationKey, duration_key
from ._models import TaskStatus

__all__ = [
    "DurationKey",
    "PollPolicy",
    "duration_key",
    "earliest_end",
    "next_check",
]


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        msg = f"{attribute.name} must be a positive number of seconds or None, got {value!r}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How the shared poller spends its requests.

    Every default is learned or stated in what the poller measures (refresh periods, task
    durations, its own requests), so that the client behaves the same against a gateway whose
    loop sleeps 15 s and tasks take minutes as against one ten times faster.

    Args:
        refresh_period: the gateway's refresh period in clock seconds, if known (operators use
            15 or 3): a first estimate the client corrects both ways from what the answers show.
            By default the client finds it from its first answers (a few GETs at widening
            intervals after the first submit).
        shortest_duration: clock seconds no task is expected to undercut before any has been
            seen to finish. By default nothing is assumed: until a task of a kind has ended
            (or one of another kind, scaled), its tasks are checked at every refresh.
        every_refresh_up_to: with this many outstanding tasks or fewer, each is checked at every
            refresh of the gateway from its submit on (status GETs are cheap then); with more,
            only at the refreshes where it may have ended.
        max_concurrent_polls: GETs in flight at once (a stalled answer holds one).
        error_backoff: first and longest wait after a failed GET, in clock seconds; by default
            an eighth of a refresh period, doubling up to sixteen periods.
        give_up_after: clock seconds a task's status checks may keep failing (connection
            errors, timeouts, 5xx, answers that do not parse) before its handle fails with
            :class:`~wan_async.StatusUnavailable`; 429s do not count, they only slow down.
            Errors that cannot go away by waiting (a rejected key, a refused query) fail
            handles at once.
    """

    refresh_period: float | None = attrs.field(default=None, validator=_positive_or_none)
    shortest_duration: float | None = attrs.field(default=None, validator=_positive_or_none)
    every_refresh_up_to: int = attrs.field(default=8, validator=attrs.validators.ge(0))
    max_concurrent_polls: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    error_backoff: tuple[float, float] | None = None
    give_up_after: float = attrs.field(default=600.0, validator=attrs.validators.gt(0))


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
    *, earliest: float | None, seen_at: float, next_refresh: Callable[[float], float]
) -> float:
    """When to ask about an unfinished task next: the first refresh at which it may have
    ended, and never before the answer that prompted the plan.

    Args:
        earliest: the earliest end (:func:`earliest_end`), in the clock ``next_refresh`` uses.
        seen_at: when the latest answer (or the submit) came back.
        next_refresh: when to ask to see the task's first refresh at or after a given time,
            newer than any refresh seen (its margin included), e.g.
            ``RefreshEstimator.next_refresh(task, t).ask_at``.
    """
    return next_refresh(seen_at if earliest is None else max(earliest, seen_at))
