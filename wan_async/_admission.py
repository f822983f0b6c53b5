"""When a batch item may be sent: a hard cap on the batch's items in flight, and a window.

The cap (``max_in_flight``) bounds the batch's own items that are submitted or being
submitted and not yet ended. The window, when the batch has one, bounds the client's tasks
in flight (:meth:`~wan_async._poller.Poller.in_flight`: outstanding, but for resumed tasks not
answered about yet and tasks likely ended whose check is overdue) plus the batch's submits
under way by a limit that adapts to what upstream is seen to do (see
:meth:`~wan_async._poller.Poller.window`).

Whatever frees room wakes the waiting feeder: an item that ends (including a submit that
failed, which never becomes an outstanding task), and any change the poller reports.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio


class Admission:
    """Lets a batch's items in, one at a time, while there is room.

    Args:
        cap: the batch's items in flight at most.
        limit: the adaptive window, or ``None`` for the cap alone.
        outstanding: the client's tasks in flight now (for the window).
    """

    def __init__(
        self,
        *,
        cap: int,
        limit: Callable[[], int] | None,
        outstanding: Callable[[], int],
    ) -> None:
        self._cap = cap
        self._limit = limit
        self._outstanding = outstanding
        self._in_flight = 0
        self._submitting = 0
        self._changed = anyio.Event()

    @property
    def in_flight(self) -> int:
        """The batch's items let in and not yet ended."""
        return self._in_flight

    def _has_room(self) -> bool:
        if self._in_flight >= self._cap:
            return False
        if self._limit is None:
            return True
        return self._outstanding() + self._submitting < self._limit()

    async def enter(self) -> None:
        """Wait for room, then count one more item in flight and being submitted."""
        while not self._has_room():
            self._changed = anyio.Event()
            await self._changed.wait()
        self._in_flight += 1
        self._submitting += 1

    def enter_submitted(self) -> None:
        """Count an item whose task exists already (a resumed batch) as in flight."""
        self._in_flight += 1

    def submitting_again(self) -> None:
        """An item let in submits once more (its claim elsewhere was freed)."""
        self._submitting += 1

    def submit_done(self) -> None:
        """The item's submit ended, with a task or without one."""
        self._submitting -= 1
        self.kick()

    def leave(self) -> None:
        """The item ended: its room is free."""
        self._in_flight -= 1
        self.kick()

    def kick(self) -> None:
        """Something changed that may have made room: let the feeder look again."""
        self._changed.set()
