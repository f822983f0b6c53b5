"""When the gateway's refresh loop stores each task, in the sequential model of SPEC §3.2.

The loop sleeps, then walks the unfinished tasks of *all* the gateway's tenants one after
another: one upstream GET per task, taking ``cost`` seconds, after which it stores the task
with ``updated_at`` = now. Then it sleeps again. So each task has its own phase (its place in
the pass), and the period between two refreshes of one task is the sleep plus the length of
the pass, which grows with the number of unfinished tasks.

:class:`SequentialPasses` is the bookkeeping only: it knows when each refresh is due and, given
the current time, hands every refresh due by then to a callback with its exact time. The
gateway calls it from its background loop and before answering any request, so what a client
sees depends on the clock's readings, never on when the event loop got round to it.
:class:`StepSchedule` holds a count that changes over time: the other tenants' tasks a pass
walks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import attrs

from ._stats import RefreshPass

T = TypeVar("T")


@attrs.define(kw_only=True)
class _Pass(Generic[T]):
    start: float
    #: Other tenants' tasks, walked first (their rows are older than ours).
    foreign: int
    ours: list[T]
    #: How many of ``ours`` are stored so far.
    done: int = 0


class SequentialPasses(Generic[T]):
    """The schedule of a loop that sleeps ``sleep``, then refreshes tasks ``cost`` apart.

    Args:
        sleep: seconds the loop sleeps between the end of a pass and the start of the next.
        cost: seconds one task's refresh takes (its upstream query); 0 refreshes a whole
            pass at one instant.
    """

    def __init__(self, *, sleep: float, cost: float) -> None:
        self._sleep = sleep
        self._cost = cost
        self._next_start = math.inf
        self._current: _Pass[T] | None = None

    def restart(self, first_start: float) -> None:
        """Forget any pass in progress; the next pass starts at ``first_start``."""
        self._current = None
        self._next_start = first_start

    @property
    def next_due(self) -> float:
        """When the next thing happens: a pass starts, a task is stored, or a pass ends."""
        current = self._current
        if current is None:
            return self._next_start
        return self._stamp(current, min(current.done, len(current.ours) - 1))

    def run_until(
        self,
        now: float,
        *,
        plan: Callable[[float], tuple[int, Sequence[T]]],
        refresh: Callable[[T, float], None],
        ended: Callable[[RefreshPass], None],
    ) -> None:
        """Do, in order, everything due by ``now``.

        Args:
            now: the current time.
            plan: given a pass's start time, the number of other tenants' tasks it walks
                and our tasks in the order it walks them.
            refresh: stores one of our tasks at the given time.
            ended: told about each pass once it has ended.
        """
        while True:
            if self._current is None:
                if self._next_start > now:
                    return
                foreign, ours = plan(self._next_start)
                self._current = _Pass(start=self._next_start, foreign=foreign, ours=list(ours))
            current = self._current
            while current.done < len(current.ours):
                at = self._stamp(current, current.done)
                if at > now:
                    return
                task = current.ours[current.done]
                current.done += 1
                refresh(task, at)
            end = current.start + (current.foreign + len(current.ours)) * self._cost
            if end > now:
                return
            ended(
                RefreshPass(
                    start=current.start,
                    end=end,
                    refreshed=len(current.ours),
                    foreign=current.foreign,
                )
            )
            self._current = None
            self._next_start = end + self._sleep

    def _stamp(self, current: _Pass[T], index: int) -> float:
        """When ``current`` stores our task number ``index`` (or ends, if it has none)."""
        return current.start + (current.foreign + index + 1) * self._cost


class StepSchedule:
    """A count that changes at given times (other tenants' unfinished tasks).

    Args:
        initial: the count before any change.
    """

    def __init__(self, initial: int) -> None:
        self._initial = initial
        self._times: list[float] = []
        self._values: list[int] = []

    def change(self, moment: float, value: int) -> None:
        """From ``moment`` on, the count is ``value`` (until a later change)."""
        # After any change at the same moment: the last one made wins.
        index = bisect.bisect_right(self._times, moment)
        self._times.insert(index, moment)
        self._values.insert(index, value)

    def at(self, moment: float) -> int:
        """The count at ``moment``."""
        index = bisect.bisect_right(self._times, moment)
        return self._initial if index == 0 else self._values[index - 1]
