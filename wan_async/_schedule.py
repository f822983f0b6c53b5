"""When to ask about a task again: spend a GET only where it can tell something new.

The gateway refreshes each unfinished task from upstream once per *refresh period* (15 s by
default, SPEC §3.2) and stamps ``updated_at``; a GET between two refreshes returns the same data.
The refresh loop serves all tasks together, so refreshes fall on one grid of times. Every check
is placed just after a refresh, and only at refreshes where the task may have ended: a task
cannot end before

* ``start + shortest`` once it has been seen running, where ``start`` is upstream's own start
  time (``output.scheduled_time``, to the millisecond) or, failing that, a period before the
  gateway's ``start_time`` stamp;
* ``q + shortest`` if it was still queued at the refresh ``q``;
* ``submit + shortest`` before the gateway has refreshed it at all;

and from then on it is checked once per refresh until it ends. ``shortest`` is a low quantile
of how long upstream works on tasks of the same model, size and duration: a prior at first,
then what this client has seen (per kind, and pooled over kinds as a ratio to their priors, so
a few finished tasks of any kind already inform the others).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import attrs

from ._models import TaskStatus

#: (model, size, duration) — what decides how long generation takes.
DurationKey = tuple[str, str, int]

_DEFAULT_SIZE = "1920*1080"
_DEFAULT_DURATION = 5
#: SPEC §6: 153 s of work for a 1080p 5 s video; 1-5 minutes overall.
_PRIOR_1080P_5S = 150.0
#: Before any task of a kind has been seen to finish, assume it may take as little as this
#: fraction of the prior median, and never less than SPEC §6's "1 minute" halved.
_PRIOR_SPREAD = 0.5
_PRIOR_FLOOR = 30.0
_MIN_OBSERVED = 3


def _key_factor(size: str) -> float:
    w, _, h = size.partition("*")
    try:
        pixels = int(w) * int(h)
    except ValueError:
        return 1.0
    return 0.4 if pixels <= 420_000 else 0.6 if pixels <= 1_000_000 else 1.0


def duration_key(model: str, size: str | None, duration: int | None) -> DurationKey:
    """The key under which tasks of this kind share what is learned about their durations."""
    return (model, size or _DEFAULT_SIZE, duration or _DEFAULT_DURATION)


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


class DurationModel:
    """How long upstream works on a task, per kind: a prior, refined by observed tasks."""

    def __init__(self, policy: PollPolicy, *, window: int = 100) -> None:
        self._policy = policy
        self._window = window
        self._seen: dict[DurationKey, deque[float]] = {}
        self._ratios: deque[float] = deque(maxlen=window)

    def observe(self, key: DurationKey | None, seconds: float) -> None:
        """Record that upstream worked ``seconds`` on a task of this kind."""
        if seconds <= 0:
            return
        self._ratios.append(seconds / _prior_median(key))
        if key is not None:
            self._seen.setdefault(key, deque(maxlen=self._window)).append(seconds)

    def shortest(self, key: DurationKey | None) -> float:
        """Seconds of work a task of this kind is unlikely to undercut."""
        seen = self._seen.get(key, ()) if key is not None else ()
        if len(seen) >= _MIN_OBSERVED:
            return _low(seen)
        if len(self._ratios) >= _MIN_OBSERVED:
            return _prior_median(key) * _low(self._ratios)
        if self._policy.shortest_duration is not None:
            return self._policy.shortest_duration
        return max(_PRIOR_FLOOR, _prior_median(key) * _PRIOR_SPREAD)


def _prior_median(key: DurationKey | None) -> float:
    if key is None:
        return _PRIOR_1080P_5S
    _, size, duration = key
    return _PRIOR_1080P_5S * _key_factor(size) * duration / 5


def _low(values: Iterable[float]) -> float:
    """A low quantile: the minimum of a few values, the 3rd percentile of many."""
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.03)]


class RefreshEstimate:
    """The gateway's refresh period: configured, raised when refreshes come less often."""

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


def next_check(
    *,
    status: TaskStatus,
    refreshed_at: float | None,
    started_at: float | None,
    seen_at: float,
    phase: float | None,
    shortest: float,
    period: float,
    margin: float,
) -> float:
    """When to ask about an unfinished task next, in gateway time (Unix seconds).

    Args:
        status: the latest status (``NOT_START`` right after submit).
        refreshed_at: the refresh time of the latest answer (its ``updated_at``), if any.
        started_at: the earliest the task can have started, once it has been seen running.
        seen_at: when the latest answer (or the submit) came back.
        phase: any refresh time of the gateway's loop, for tasks not yet refreshed.
        shortest: the least work to expect.
        period: the refresh period.
        margin: slack after a refresh.
    """
    if started_at is not None:
        # Also after a step back to QUEUED (SPEC §3.1): upstream may well still be working.
        earliest = started_at + shortest
    elif refreshed_at is None:
        earliest = seen_at + shortest
    elif status in (TaskStatus.IN_PROGRESS, TaskStatus.UNKNOWN):
        # Running (or unclear) with no start time: it started within the last period.
        earliest = refreshed_at - period + shortest
    else:
        earliest = refreshed_at + shortest
    target = max(earliest, seen_at)
    grid = refreshed_at if refreshed_at is not None else phase
    if grid is None:
        return target + margin
    # The first refresh at or after the target, and never the refresh already seen.
    steps = math.ceil((target - grid) / period - 1e-9)
    if refreshed_at is not None:
        steps = max(steps, 1)
    return grid + steps * period + margin
