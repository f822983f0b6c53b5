"""A task handle: one submitted task, its latest snapshot, and a way to await its end."""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ._clock import Clock
from ._config import check_seconds
from ._exceptions import DeadlineExceeded, WanError, reraise
from ._models import TaskSnapshot, TaskStatus, VideoRequest, VideoResult

if TYPE_CHECKING:
    from ._poller import Watch


class TaskHandle:
    """One task tracked by a client's shared poller.

    ``await handle`` (or :meth:`wait`) returns the :class:`VideoResult` once the task succeeds,
    or raises :class:`TaskFailed` (or :class:`TaskNotFound`, :class:`ClientClosedError`).
    Many callers may await the same handle; it resolves exactly once. Cancelling one wait
    leaves the task tracked and every other waiter waiting.
    """

    __slots__ = (
        "_clock",
        "_done",
        "_error",
        "_error_traceback",
        "_result",
        "_snapshot",
        "_watch",
        "request",
        "task_id",
    )

    def __init__(
        self,
        task_id: str,
        *,
        request: VideoRequest | None,
        clock: Clock,
        snapshot: TaskSnapshot | None = None,
    ) -> None:
        self.task_id = task_id
        #: The request it was submitted with (``None`` for an attached task).
        self.request = request
        self._clock = clock
        self._snapshot = snapshot
        self._done = anyio.Event()
        self._result: VideoResult | None = None
        self._error: BaseException | None = None
        self._error_traceback: TracebackType | None = None
        self._watch: Watch | None = None

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_id} {self.status.value}>"

    @property
    def snapshot(self) -> TaskSnapshot | None:
        """The latest answer about this task (``None`` until the first poll)."""
        return self._snapshot

    @property
    def status(self) -> TaskStatus:
        """The latest known status (``NOT_START`` until the first poll)."""
        return self._snapshot.status if self._snapshot is not None else TaskStatus.NOT_START

    def done(self) -> bool:
        """Whether the task has ended (or can no longer be tracked)."""
        return self._done.is_set()

    def result(self) -> VideoResult:
        """Return the result of a finished task without waiting.

        Raises:
            TaskFailed: and the other errors :meth:`wait` raises, once done.
            RuntimeError: the task has not finished yet.
        """
        if not self._done.is_set():
            msg = f"task {self.task_id} has not finished; await it first"
            raise RuntimeError(msg)
        if self._error is not None:
            reraise(self._error, self._error_traceback)
        assert self._result is not None
        return self._result

    def exception(self) -> BaseException | None:
        """The error the task ended with, ``None`` if it succeeded or is unfinished."""
        return self._error

    async def wait(self, timeout: float | None = None) -> VideoResult:
        """Wait for the task to end and return its result.

        Args:
            timeout: clock seconds to wait at most; the task stays tracked after a timeout.

        Raises:
            ValueError: ``timeout`` is NaN or negative.
            DeadlineExceeded: (also a ``TimeoutError``) the timeout passed first; it names the
                task and its last status, and the task stays tracked.
            TaskFailed: the task ended in FAILURE.
            TaskNotFound: the gateway knows no such task.
            ClientClosedError: the client closed before the task ended.
            WanError: the task's status could not be checked for good (see
                :class:`~wan_async.PollPolicy`): a rejected key, a refused query, a gateway
                that stayed unreachable.
        """
        timeout = check_seconds("timeout", timeout)
        if timeout is None:
            await self._done.wait()
        else:
            with anyio.move_on_after(timeout / self._clock.scale):
                await self._done.wait()
            if not self._done.is_set():
                raise self._timed_out(timeout)
        return self.result()

    def _timed_out(self, timeout: float) -> DeadlineExceeded:
        seen = self._snapshot.raw_status if self._snapshot is not None else None
        last = f"last seen {seen}" if seen else "not seen by a status check yet"
        msg = (
            f"task {self.task_id} did not end within {timeout:g} s ({last}); it goes on "
            "upstream and stays tracked: wait again, or attach to it later"
        )
        return DeadlineExceeded(msg, task_id=self.task_id, last_status=seen)

    def __await__(self) -> Generator[Any, None, VideoResult]:
        return self.wait().__await__()

    # -- for the poller -------------------------------------------------------------------

    def _update(self, snapshot: TaskSnapshot) -> None:
        self._snapshot = snapshot

    def _resolve(self, result: VideoResult | None, error: BaseException | None) -> bool:
        """Settle the handle; later calls are ignored. Returns whether this call settled it."""
        if self._done.is_set():
            return False
        self._result, self._error = result, error
        self._error_traceback = None if error is None else error.__traceback__
        self._done.set()
        return True

    def _fail(self, error: WanError) -> bool:
        return self._resolve(None, error)
