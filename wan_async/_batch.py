"""Batches: many requests through one client, with back-pressure, deadlines and outcomes.

A batch runs in the client's own task group, not in the caller's: the caller only reads
outcomes from a stream. So leaving an ``async for`` early, or cancelling the caller, stops the
batch cleanly (its scope is cancelled) without cancel scopes crossing generator frames, and
nothing that goes wrong inside a batch (a journal that cannot be written, a bug) reaches the
caller's ``async with`` body or the client's other tasks: it ends the batch and is raised to
the batch's reader.

When an item may be sent is :mod:`wan_async._admission`'s business; what was recorded about
it, :mod:`wan_async._journal`'s. This module keeps each item's story straight:

* every item yields exactly one :class:`Outcome`, and every item whose task was created
  carries its ``task_id``, however it ended (a deadline, a stop, a crash of the batch);
* a submit whose request is on the wire is never cut off: a deadline, a stop or closing the
  client waits for its answer (bounded by the client's ``Timeouts``), so its task id is known
  and recorded, or its outcome is reported unknown;
* a submit's journal lines are written just around the request itself (see
  :class:`_ItemHooks`).
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

import anyio
import attrs

from ._admission import Admission
from ._clock import Clock
from ._exceptions import (
    AuthenticationError,
    BatchAborted,
    DeadlineExceeded,
    JournalError,
    PermissionDeniedError,
    SubmitOutcomeUnknown,
    TaskFailed,
    TaskNotFound,
    UnexpectedRedirect,
    WanError,
    reraise,
)
from ._handle import TaskHandle
from ._journal import Journal
from ._models import VideoRequest, VideoResult
from ._progress import BatchProgress, Outlook, ProgressCallback, ProgressTracker
from ._shared_journal import ClaimedElsewhere

#: Errors every further submit would meet too (the key or the base URL is refused): one stops
#: the batch from submitting more. Tasks already submitted are still waited for.
_BATCH_FATAL = (AuthenticationError, PermissionDeniedError, UnexpectedRedirect)


@attrs.frozen(kw_only=True)
class Outcome:
    """How one batch item ended: a result, or the error that ended it.

    Attributes:
        index: the request's position in the batch's input.
        request: the :class:`VideoRequest` itself.
        task_id: the task's id once it was created, however the item ended: that task exists
            upstream (and is billed); ``client.attach(task_id)`` collects it. ``None``: no
            task was ever created for the item (or, with :class:`SubmitOutcomeUnknown`, its
            answer was lost).
        result: the :class:`VideoResult` when the task succeeded.
        error: why the item did not end well. With ``result`` also set, the task succeeded
            but saving its video (``download_dir``) failed: the URL stays valid for 24 hours.
        path: where the video was saved, when the batch was given a ``download_dir``.
        ok: whether the item produced a video (and saved it, if asked to).
    """

    #: Position of the request in the batch's input.
    index: int
    request: VideoRequest
    #: Set once the task was created, however the item ended: that task exists upstream (and
    #: is billed); attach to it to collect it.
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


class SubmitHooks(Protocol):
    """What a submit tells its batch around each attempt (see ``WanClient._submit``)."""

    def may_send(self) -> None:
        """Raise to send nothing (the batch stopped); called just before each attempt."""

    async def sending(self, at: float) -> None:
        """The request is about to go out (shielded from cancellation from here on)."""

    async def settled(self, at: float, task_id: str | None, error: WanError | None) -> None:
        """The attempt's answer, still shielded: a task id, or the error (which says
        whether a task may exist anyway)."""


class Submit(Protocol):
    """How a batch submits: the client's submit, reporting to the item's hooks."""

    def __call__(
        self, request: VideoRequest, *, hooks: SubmitHooks | None = ...
    ) -> Awaitable[TaskHandle]: ...


Attach = Callable[[str], TaskHandle]
#: Saves a finished item's video; returns where.
Save = Callable[[int, VideoResult], Awaitable[Path]]


class _Stopped(Exception):
    """The batch stopped before this item's request was sent."""


class _Claimed(enum.Enum):
    """An item another host of a shared journal claimed first."""

    CLAIMED = "claimed"


_CLAIMED = _Claimed.CLAIMED


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
        admission: Admission,
        item_timeout: float | None,
        deadline: float | None,
        fail_fast: bool,
        retry_failed: bool = False,
        resubmit_unknown: bool = False,
        outlook: Outlook,
        cap: int,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self._requests = requests
        self._retry_failed = retry_failed
        self._resubmit_unknown = resubmit_unknown
        self._submit = submit
        self._attach = attach
        self._clock = clock
        self._journal = journal
        self._save = save
        self._admission = admission
        #: Cancelled to stop feeding new items; and the scopes of the waits under way.
        self._feed = anyio.CancelScope()
        self._waits: set[anyio.CancelScope] = set()
        self._waits_cancelled = False
        self._item_timeout = item_timeout
        self._fail_fast = fail_fast
        now = anyio.current_time()
        real_deadline = math.inf if deadline is None else now + deadline / clock.scale
        self._scope = anyio.CancelScope(deadline=real_deadline)
        self._task_ids: dict[int, str] = {}
        self._reported: set[int] = set()
        self._stop_cause: BaseException | None = None
        #: What ended the batch from inside (a journal that cannot be written, a bug).
        self._crash: BaseException | None = None
        self._send, self._receive = anyio.create_memory_object_stream[Outcome](len(requests))
        self._progress = ProgressTracker(
            requests,
            clock=clock,
            outlook=outlook,
            cap=cap,
            on_progress=on_progress,
            failed=self._crashed,
        )

    def progress(self) -> BatchProgress:
        """Where the batch stands now (see :class:`BatchProgress`)."""
        return self._progress.progress()

    @property
    def tracker(self) -> ProgressTracker:
        """What follows the batch's items, for the poller to tell of status changes."""
        return self._progress

    def stop(self, cause: BaseException | None = None) -> None:
        """Stop the batch now: unfinished items are reported cut short, with their task ids.

        Submits on the wire still run to their answer first.
        """
        if cause is not None and self._stop_cause is None:
            self._stop_cause = cause
        self._scope.cancel()

    def discard(self) -> None:
        """Stop the batch; nobody will read its outcomes (their stream is closed)."""
        self.stop()
        self._receive.close()

    async def run(self) -> None:
        """Run every item to its outcome; never raises (see :meth:`outcomes`)."""
        try:
            with self._scope:
                await self._run()
        except Exception as exc:
            self._crashed(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._close_journal()
            self._report_the_rest()
            self._send.close()

    async def outcomes(self) -> AsyncGenerator[Outcome, None]:
        """Yield each item's outcome as it ends; stops the batch if the reader leaves early.

        Raises:
            JournalError: the journal could not be written: the batch stopped (every item
                still yielded its outcome first).
            Exception: whatever else ended the batch from inside, the same way.
        """
        try:
            async with self._receive:
                async for outcome in self._receive:
                    yield outcome
        finally:
            self.stop()
        if self._crash is not None:
            raise self._crash

    async def _run(self) -> None:
        async with anyio.create_task_group() as tg:
            with self._feed:
                for index, request in enumerate(self._requests):
                    resumed = self._resume(index, request)
                    if self._worth_retrying(resumed):
                        assert self._journal is not None
                        await self._journal.retry(index)
                        resumed = None
                    if isinstance(resumed, Outcome):
                        if resumed.ok and self._save is not None:
                            # Finished in an earlier run, maybe never saved (no download
                            # folder then, or killed mid-download): save it now.
                            tg.start_soon(self._save_resumed, resumed)
                        else:
                            self._report(resumed)
                        continue
                    if isinstance(resumed, TaskHandle):
                        self._task_ids[index] = resumed.task_id
                        self._progress.tracking(index, resumed)
                        self._admission.enter_submitted()
                    else:
                        await self._admission.enter()
                    tg.start_soon(self._item, index, request, resumed)

    def _worth_retrying(self, resumed: TaskHandle | Outcome | None) -> bool:
        """Whether this item is submitted again: with ``retry_failed``, its task failed in an
        earlier run for upstream's own reasons (``TaskFailed.retryable``); with
        ``resubmit_unknown``, an earlier run lost its submit's answer (a task may exist)."""
        if not isinstance(resumed, Outcome):
            return False
        error = resumed.error
        if isinstance(error, SubmitOutcomeUnknown):
            return self._resubmit_unknown
        return self._retry_failed and isinstance(error, TaskFailed) and error.retryable

    def _crashed(self, error: BaseException) -> None:
        if self._crash is None:
            self._crash = error
        self._halt(error, waits=True)

    async def _close_journal(self) -> None:
        if self._journal is None:
            return
        try:
            await self._journal.aclose()
        except JournalError as exc:
            self._crashed(exc)

    def _report_the_rest(self) -> None:
        for index, request in enumerate(self._requests):
            if index not in self._reported:
                task_id = self._task_ids.get(index)
                error = self._cut_short_error(task_id)
                self._report(Outcome(index=index, request=request, task_id=task_id, error=error))

    def _cut_short_error(self, task_id: str | None) -> BaseException:
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

    def _halt(self, cause: BaseException, *, waits: bool) -> None:
        """Stop submitting (and with ``waits``, stop waiting) after ``cause``, gracefully.

        A submit already on the wire runs to its answer: cutting it off would turn a known
        outcome into an unknown one.
        """
        if self._stop_cause is None:
            self._stop_cause = cause
        self._feed.cancel()
        if waits:
            self._waits_cancelled = True
            for scope in self._waits:
                scope.cancel()

    def _report(self, outcome: Outcome) -> None:
        if outcome.index in self._reported:
            return
        self._reported.add(outcome.index)
        self._progress.ended(
            outcome.index,
            ok=outcome.ok,
            outcome_unknown=isinstance(outcome.error, SubmitOutcomeUnknown),
        )
        # The reader may have left (and closed its end): then nobody wants the outcome.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._send.send_nowait(outcome)

    async def _item(self, index: int, request: VideoRequest, handle: TaskHandle | None) -> None:
        try:
            outcome = await self._run_item(index, request, handle)
        except JournalError as exc:
            # What happens can no longer be recorded: a resumed run could pay twice.
            self._crashed(exc)
            outcome = Outcome(
                index=index, request=request, task_id=self._task_ids.get(index), error=exc
            )
        except Exception as exc:  # every other failure is this item's outcome
            outcome = Outcome(
                index=index, request=request, task_id=self._task_ids.get(index), error=exc
            )
        finally:
            self._admission.leave()
        self._report(outcome)
        error = outcome.error
        if error is not None and outcome.result is None:
            if self._fail_fast:
                self._halt(error, waits=True)
            elif _stops_submitting(error):
                self._halt(error, waits=False)

    async def _run_item(
        self, index: int, request: VideoRequest, handle: TaskHandle | None
    ) -> Outcome:
        while handle is None:
            started: TaskHandle | Outcome | _Claimed | None
            started = await self._submit_item(index, request)
            if started is _CLAIMED:
                # Another host of a shared journal is submitting it: follow that one.
                started = await self._follow_item(index, request)
                if started is None:
                    # Its submit created nothing and freed the claim: ours to try now.
                    self._admission.submitting_again()
                    continue
            if isinstance(started, Outcome):
                return started
            assert isinstance(started, TaskHandle)
            handle = started
            self._progress.tracking(index, handle)
        return await self._finish(await self._wait_item(index, request, handle))

    async def _follow_item(self, index: int, request: VideoRequest) -> TaskHandle | Outcome | None:
        """Wait for the client that claimed item ``index`` (in a shared journal) to record
        its task id (then attach to it), or the item's end; ``None`` if its submit created
        nothing (the claim is free again)."""
        journal = self._journal
        assert journal is not None
        while True:
            await journal.refresh()
            state = journal.state(index)
            if state.final is not None:
                result, error = journal.outcome(index)
                return Outcome(
                    index=index, request=request, task_id=state.task_id, result=result, error=error
                )
            if state.task_id is not None:
                self._task_ids[index] = state.task_id
                return self._attach(state.task_id)
            if state.submitting_at is None:
                return None
            if not journal.claimed_elsewhere(index):
                # Its claimer stopped with the answer unknown: the task may exist.
                unknown = SubmitOutcomeUnknown(
                    request=request,
                    submitted_at=state.submitting_at,
                    cause=None,
                    reason=state.unknown_reason
                    or "the client that claimed it stopped before recording its answer",
                )
                return Outcome(index=index, request=request, error=unknown)
            await anyio.sleep(journal.follow_every)

    async def _save_resumed(self, outcome: Outcome) -> None:
        """Report an item the journal holds as succeeded, once its video is on disk (or
        with the error that kept it from being saved: an expired URL, a full disk)."""
        self._report(await self._finish(outcome))

    async def _finish(self, outcome: Outcome) -> Outcome:
        """Save a successful item's video, when the batch downloads as it goes."""
        if self._save is None or outcome.result is None or outcome.error is not None:
            return outcome
        self._progress.saving(outcome.index)
        try:
            path = await self._save(outcome.index, outcome.result)
        except Exception as exc:  # the task succeeded: keep its result beside the error
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
        if self._journal.claimed_elsewhere(index):
            return None  # another host is submitting it: its claim will say so, then follow
        if state.outcome_unknown:
            unknown = SubmitOutcomeUnknown(
                request=request,
                submitted_at=state.submitting_at or 0.0,
                cause=None,
                reason=state.unknown_reason,
            )
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
                if self._waits_cancelled:
                    wait.cancel()
                try:
                    result = await handle.wait(self._item_timeout)
                finally:
                    self._waits.discard(wait)
            if wait.cancelled_caught:
                stopped = self._aborted(task_id)
                return Outcome(index=index, request=request, task_id=task_id, error=stopped)
        except (TaskFailed, TaskNotFound) as exc:
            if self._journal is not None:
                await self._journal.finished(index, task_id, None, exc, at=self._clock.time())
            return Outcome(index=index, request=request, task_id=task_id, error=exc)
        except WanError as exc:  # a timeout, a rejected key...: the task may go on upstream
            return Outcome(index=index, request=request, task_id=task_id, error=exc)
        if self._journal is not None:
            await self._journal.finished(index, task_id, result, None, at=self._clock.time())
        return Outcome(index=index, request=request, task_id=task_id, result=result)

    async def _submit_item(
        self, index: int, request: VideoRequest
    ) -> TaskHandle | Outcome | _Claimed:
        try:
            return await self._submit(request, hooks=_ItemHooks(self, index))
        except ClaimedElsewhere:
            return _CLAIMED
        except _Stopped:
            return Outcome(index=index, request=request, error=self._aborted(None))
        except JournalError:
            raise
        except WanError as exc:  # refused (nothing created) or SubmitOutcomeUnknown
            return Outcome(index=index, request=request, error=exc)
        finally:
            self._admission.submit_done()


class _ItemHooks:
    """One item's submit, as its batch sees it: stop before sending, record around it.

    ``submitting`` is journaled just before the request goes out, after the item has waited
    for a submit slot, the request budget and any retry back-off: a crash while it waits
    leaves nothing that reads as "unknown". The answer is recorded before anything can cancel
    the item: ``submitted`` with the task id, ``refused`` when the attempt certainly created
    nothing (a retry may follow), ``unknown`` otherwise.
    """

    def __init__(self, batch: Batch, index: int) -> None:
        self._batch = batch
        self._index = index

    def may_send(self) -> None:
        if self._batch._stop_cause is not None or self._batch._feed.cancel_called:
            raise _Stopped

    async def sending(self, at: float) -> None:
        if self._batch._journal is not None:
            await self._batch._journal.submitting(self._index, at)
        self._batch._progress.submitting(self._index)

    async def settled(self, at: float, task_id: str | None, error: WanError | None) -> None:
        batch, journal = self._batch, self._batch._journal
        if task_id is not None:
            batch._task_ids[self._index] = task_id
            if journal is not None:
                await journal.submitted(self._index, task_id)
            return
        if error is None:
            return
        if not error.task_may_exist:
            batch._progress.waiting(self._index)  # refused: a retry may follow
        if journal is not None:
            if error.task_may_exist:
                await journal.unknown(self._index, at, error)
            else:
                await journal.refused(self._index, str(error))


def _stops_submitting(error: BaseException) -> bool:
    """Whether every further submit would meet ``error`` too (as itself, or as the cause of
    an unknown outcome: a redirect)."""
    if isinstance(error, SubmitOutcomeUnknown):
        return isinstance(error.cause, _BATCH_FATAL)
    return isinstance(error, _BATCH_FATAL)


def _where(task_id: str | None) -> str:
    """What became of an item cut short: its task goes on, or it was never sent."""
    if task_id is None:
        return "it was never submitted"
    return f"task {task_id} goes on upstream; attach to it to collect it"
