"""Batches: many requests through one client, with back-pressure, deadlines and outcomes.

A batch runs in the client's own task group, not in the caller's: the caller only reads
outcomes from a stream. So leaving an ``async for`` early, or cancelling the caller, stops the
batch cleanly (its scope is cancelled) without cancel scopes crossing generator frames.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

import anyio
import attrs

from ._clock import Clock
from ._exceptions import (
    AuthenticationError,
    BatchAborted,
    DeadlineExceeded,
    ModelNotFoundError,
    PermissionDeniedError,
    SubmitOutcomeUnknown,
    TaskFailed,
    TaskNotFound,
    WanError,
    reraise,
)
from ._handle import TaskHandle
from ._journal import Journal
from ._models import VideoRequest, VideoResult

#: Errors that will hit every item alike: one is enough to stop the batch.
_BATCH_FATAL = (AuthenticationError, PermissionDeniedError, ModelNotFoundError)


@attrs.frozen(kw_only=True)
class Outcome:
    """How one batch item ended: a result, or the error that ended it."""

    #: Position of the request in the batch's input.
    index: int
    request: VideoRequest
    #: Set once the task was created (also on most failures: the task exists upstream).
    task_id: str | None = None
    result: VideoResult | None = None
    #: Why the item did not end well. With ``result`` also set, the task succeeded but its
    #: download (``download_dir``) failed: the URL stays valid for 24 hours.
    error: BaseException | None = None
    #: Where the video was saved, when the batch was given a ``download_dir``.
    path: Path | None = None
    #: The error's traceback as it was stored: unwrap() raises with it every time.
    _error_traceback: TracebackType | None = attrs.field(
        init=False,
        repr=False,
        eq=False,
        default=attrs.Factory(
            lambda self: None if self.error is None else self.error.__traceback__, takes_self=True
        ),
    )

    @property
    def ok(self) -> bool:
        """Whether the item produced a video (and saved it, if asked to)."""
        return self.result is not None and self.error is None

    def unwrap(self) -> VideoResult:
        """Return the result, or raise the item's error."""
        if self.error is not None:
            reraise(self.error, self._error_traceback)
        assert self.result is not None
        return self.result


class Submit(Protocol):
    """How a batch submits: the client's submit, with a last check before sending."""

    def __call__(
        self, request: VideoRequest, *, before_send: Callable[[], None] | None = ...
    ) -> Awaitable[TaskHandle]: ...


Attach = Callable[[str], TaskHandle]
#: Saves a finished item's video; returns where.
Save = Callable[[int, VideoResult], Awaitable[Path]]


class Window:
    """An adaptive in-flight limit: how many more tasks may be submitted now."""

    def __init__(
        self,
        *,
        outstanding: Callable[[], int],
        limit: Callable[[], int],
        changed: Callable[[], Awaitable[None]],
    ) -> None:
        self._outstanding = outstanding
        self._limit = limit
        self._changed = changed

    async def wait_for_room(self, submitting: Callable[[], int]) -> None:
        """Wait until the client's outstanding tasks, plus those being submitted, fit."""
        while self._outstanding() + submitting() >= self._limit():
            await self._changed()


class Batch:
    """Runs one batch: submits under an in-flight limit, waits, reports each outcome once."""

    def __init__(
        self,
        requests: Sequence[VideoRequest],
        *,
        submit: Submit,
        attach: Attach,
        clock: Clock,
        journal: Journal | None,
        save: Save | None = None,
        max_in_flight: int,
        window: Window | None,
        item_timeout: float | None,
        deadline: float | None,
        fail_fast: bool,
    ) -> None:
        self._requests = requests
        self._submit = submit
        self._attach = attach
        self._clock = clock
        self._journal = journal
        self._save = save
        self._slots = anyio.Semaphore(max_in_flight)
        self._window = window
        self._submitting = 0
        #: Cancelled to stop feeding new items; and the scopes of the waits under way.
        self._feed = anyio.CancelScope()
        self._waits: set[anyio.CancelScope] = set()
        self._item_timeout = item_timeout
        self._fail_fast = fail_fast
        now = anyio.current_time()
        real_deadline = math.inf if deadline is None else now + deadline / clock.scale
        self._scope = anyio.CancelScope(deadline=real_deadline)
        self._task_ids: dict[int, str] = {}
        self._reported: set[int] = set()
        self._stop_cause: BaseException | None = None
        self._send, self._receive = anyio.create_memory_object_stream[Outcome](len(requests))

    def stop(self) -> None:
        """Stop the batch: unfinished items are reported as aborted."""
        self._scope.cancel()

    async def run(self) -> None:
        """Submit and wait for every item, then report the ones the batch cut short."""
        try:
            await self._run()
        finally:
            if self._journal is not None:
                with anyio.CancelScope(shield=True):
                    await self._journal.aclose()

    async def _run(self) -> None:
        async with self._send:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    with self._feed:
                        for index, request in enumerate(self._requests):
                            await self._slots.acquire()
                            if self._window is not None:
                                await self._window.wait_for_room(lambda: self._submitting)
                            self._submitting += 1
                            tg.start_soon(self._item, index, request)
            for index, request in enumerate(self._requests):
                if index not in self._reported:
                    error = self._cut_short_error(index)
                    task_id = self._task_ids.get(index)
                    self._report(
                        Outcome(index=index, request=request, task_id=task_id, error=error)
                    )

    async def outcomes(self) -> AsyncGenerator[Outcome, None]:
        """Yield each item's outcome as it ends; stops the batch if the reader leaves early."""
        try:
            async with self._receive:
                async for outcome in self._receive:
                    yield outcome
        finally:
            self.stop()

    def _cut_short_error(self, index: int) -> BaseException:
        task_id = self._task_ids.get(index)
        if self._stop_cause is None and anyio.current_time() >= self._scope.deadline:
            return DeadlineExceeded(
                f"the batch deadline passed; {_where(task_id)}", task_id=task_id
            )
        return self._aborted(task_id)

    def _aborted(self, task_id: str | None) -> BatchAborted:
        """The error of an item the batch stopped before it ended."""
        cause = self._stop_cause
        why = f"the batch stopped after {type(cause).__name__}" if cause else "the batch stopped"
        return BatchAborted(f"{why}; {_where(task_id)}", task_id=task_id, cause=cause)

    def _halt(self, cause: BaseException) -> None:
        """Stop the batch after ``cause``, gracefully.

        No new item is submitted and waits end, but a submit already on the wire runs to its
        answer: cutting it off would turn a known outcome into an unknown one.
        """
        if self._stop_cause is not None:
            return
        self._stop_cause = cause
        self._feed.cancel()
        for scope in self._waits:
            scope.cancel()

    def _check_running(self) -> None:
        if self._stop_cause is not None:
            raise self._aborted(None)

    def _report(self, outcome: Outcome) -> None:
        self._reported.add(outcome.index)
        # The reader may have left (and closed its end): then nobody wants the outcome.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._send.send_nowait(outcome)

    async def _item(self, index: int, request: VideoRequest) -> None:
        try:
            outcome = await self._run_item(index, request)
            self._report(outcome)
            if outcome.error is not None and (
                self._fail_fast or isinstance(outcome.error, _BATCH_FATAL)
            ):
                self._halt(outcome.error)
        finally:
            self._slots.release()

    async def _run_item(self, index: int, request: VideoRequest) -> Outcome:
        start = self._resume(index, request)
        if start is None:
            start = await self._submit_item(index, request)
        else:
            self._submitting -= 1
        if isinstance(start, Outcome):
            return await self._finish(start)
        return await self._finish(await self._wait_item(index, request, start))

    async def _finish(self, outcome: Outcome) -> Outcome:
        """Save a successful item's video, when the batch downloads as it goes."""
        if self._save is None or outcome.result is None or outcome.error is not None:
            return outcome
        try:
            path = await self._save(outcome.index, outcome.result)
        except (WanError, OSError) as exc:
            return attrs.evolve(outcome, error=exc)
        return attrs.evolve(outcome, path=path)

    def _resume(self, index: int, request: VideoRequest) -> TaskHandle | Outcome | None:
        """Pick an item up where the journal left it; ``None`` if it is still to submit."""
        if self._journal is None:
            return None
        state = self._journal.state(index)
        if state.final is not None:
            result, error = self._journal.outcome(index)
            return Outcome(
                index=index, request=request, task_id=state.task_id, result=result, error=error
            )
        if state.outcome_unknown:
            at = state.submitting_at or 0.0
            unknown = SubmitOutcomeUnknown(request=request, submitted_at=at, cause=None)
            return Outcome(index=index, request=request, error=unknown)
        if state.task_id is not None:
            return self._attach(state.task_id)
        return None

    async def _wait_item(self, index: int, request: VideoRequest, handle: TaskHandle) -> Outcome:
        task_id = handle.task_id
        self._task_ids[index] = task_id
        try:
            with anyio.CancelScope() as wait:
                self._waits.add(wait)
                if self._stop_cause is not None:
                    wait.cancel()
                try:
                    result = await handle.wait(self._item_timeout)
                finally:
                    self._waits.discard(wait)
            if wait.cancelled_caught:
                stopped = self._aborted(task_id)
                return Outcome(index=index, request=request, task_id=task_id, error=stopped)
        except TimeoutError:
            late = DeadlineExceeded(
                f"task {task_id} did not end within {self._item_timeout:g}s; it goes on "
                "upstream, attach to it to collect it",
                task_id=task_id,
            )
            return Outcome(index=index, request=request, task_id=task_id, error=late)
        except (TaskFailed, TaskNotFound) as exc:
            if self._journal is not None:
                await self._journal.finished(index, task_id, None, exc)
            return Outcome(index=index, request=request, task_id=task_id, error=exc)
        except Exception as exc:  # every failure becomes this item's outcome
            return Outcome(index=index, request=request, task_id=task_id, error=exc)
        if self._journal is not None:
            await self._journal.finished(index, task_id, result, None)
        return Outcome(index=index, request=request, task_id=task_id, result=result)

    async def _submit_item(self, index: int, request: VideoRequest) -> TaskHandle | Outcome:
        journal = self._journal
        sending = False

        def before_send() -> None:
            nonlocal sending
            self._check_running()
            sending = True

        try:
            try:
                if journal is not None:
                    # On disk before the request leaves: a crash after it reads as "unknown".
                    await journal.submitting(index, self._clock.time())
                handle = await self._submit(request, before_send=before_send)
            except SubmitOutcomeUnknown as exc:
                if journal is not None:
                    await journal.unknown(index, exc.submitted_at, exc)
                return Outcome(index=index, request=request, error=exc)
            except Exception as exc:  # every failure becomes this item's outcome
                if journal is not None:
                    # Certainly nothing created (refused, or stopped before sending): a later
                    # run may submit it again, so it must not read as "unknown".
                    await journal.refused(index, str(exc))
                return Outcome(index=index, request=request, error=exc)
            except BaseException:
                if journal is not None and not sending:
                    # Cancelled while waiting for a submit slot: nothing was sent.
                    with anyio.CancelScope(shield=True):
                        await journal.refused(index, "stopped before it was sent")
                raise
            if journal is not None:
                await journal.submitted(index, handle.task_id)
            return handle
        finally:
            self._submitting -= 1


def _where(task_id: str | None) -> str:
    """What became of an item cut short: its task goes on, or it was never sent."""
    if task_id is None:
        return "it was never submitted"
    return f"task {task_id} goes on upstream; attach to it to collect it"
