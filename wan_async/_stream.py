"""What :meth:`WanClient.as_completed` returns: a batch's outcomes as they end.

Leaving the loop stops the batch, however the caller holds the stream. A plain async
generator cannot promise that: ``break`` out of ``async for o in agen`` with ``agen`` kept in
a variable leaves the generator suspended and open (PEP 525), and the batch would go on
submitting, and billing, every item. So each ``async for`` gets an iterator of its own, which
only that loop holds: once the loop is left (``break``, ``return``, an exception) before the
last outcome, the iterator is released and the batch is stopped at once. The deterministic
way, on any Python implementation, is ``async with client.as_completed(...) as outcomes:``
(or :meth:`OutcomeStream.aclose`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType

from ._batch import Outcome
from ._progress import BatchProgress


class Controls:
    """How to stop a running batch without awaiting: set by the batch once it runs.

    Shared by the stream and the generator that feeds it, so that the generator never holds
    the stream: no reference cycle keeps a dropped stream (and the batch's open stream of
    outcomes) alive until the garbage collector happens to run.
    """

    def __init__(self) -> None:
        self.stop: Callable[[], None] | None = None
        self.discard: Callable[[], None] | None = None
        self.progress: Callable[[], BatchProgress] | None = None

    def bind(
        self,
        stop: Callable[[], None],
        discard: Callable[[], None],
        progress: Callable[[], BatchProgress],
    ) -> None:
        """How to stop the batch, how to drop the outcomes no one will read, and how to
        read where it stands."""
        self.stop, self.discard, self.progress = stop, discard, progress


class OutcomeStream:
    """The outcomes of a batch, each yielded as its item ends (see ``as_completed``).

    Iterate it with ``async for``, best inside ``async with``. The batch starts with the first
    iteration. Leaving a loop over it before the last outcome, leaving ``async with``, or
    :meth:`aclose` stops the batch: items not ended yet are reported cut short (a task already
    created keeps its id in the outcome), and no further item is submitted.
    """

    def __init__(self, outcomes: AsyncGenerator[Outcome, None], controls: Controls) -> None:
        self._outcomes = outcomes
        self._controls = controls
        self._exhausted = False

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return _Loop(self)

    async def __anext__(self) -> Outcome:
        try:
            return await self._outcomes.__anext__()
        except StopAsyncIteration:
            self._exhausted = True
            raise

    def progress(self) -> BatchProgress | None:
        """Where the batch stands now (see :class:`BatchProgress`); ``None`` before the
        first iteration starts it."""
        progress = self._controls.progress
        return None if progress is None else progress()

    async def aclose(self) -> None:
        """Stop the batch (if it still runs) and wait until the stream is closed."""
        await self._outcomes.aclose()

    async def __aenter__(self) -> OutcomeStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped unread (no aclose): stop the batch and free what holds its outcomes.
        discard = self._controls.discard
        if not self._exhausted and discard is not None:
            discard()

    def _abandoned(self) -> None:
        """A loop over the stream was left before the end: stop the batch."""
        stop = self._controls.stop
        if not self._exhausted and stop is not None:
            stop()


class _Loop:
    """The iterator of one ``async for`` over an :class:`OutcomeStream`; only that loop holds
    it, so it is released as soon as the loop is left."""

    def __init__(self, stream: OutcomeStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Loop:
        return self

    async def __anext__(self) -> Outcome:
        return await self._stream.__anext__()

    def __del__(self) -> None:
        self._stream._abandoned()
