"""A batch journal: one JSON line per event, flushed and fsynced before the batch moves on.

Running the same batch again with the same journal resumes it (after a crash, ``kill -9``
included): finished items come back from the journal without a request, submitted ones are
re-attached by task id, and only items never submitted are submitted. An item whose submit
was under way when the previous run died, or whose submit outcome was unknown, is reported as
:class:`~wan_async.SubmitOutcomeUnknown` and never resubmitted: its task may exist.

Lines (``"i"`` is the item's index in the batch, ``"fp"`` its request's fingerprint)::

    {"event": "batch", "version": 1, "fingerprints": ["…", …]}
    {"event": "submitting", "i": 3, "fp": "…", "at": 1765328779.1}
    {"event": "submitted", "i": 3, "task_id": "task_…"}
    {"event": "unknown", "i": 4, "at": 1765328779.2, "error": "…"}
    {"event": "refused", "i": 6, "error": "…"}
    {"event": "finished", "i": 3, "task_id": "task_…", "status": "SUCCESS", "video_url": "…"}
    {"event": "finished", "i": 5, "task_id": "task_…", "status": "FAILURE", "code": "…", …}
    {"event": "retry", "i": 5, "attempt": 2, "after": "task_…", "code": "InternalError.Algo"}

A ``retry`` line starts a new attempt of an item whose task failed for upstream's own
reasons (``retry_failed=True``) or whose submit's outcome was unknown
(``resubmit_unknown=True``, ``after`` is then ``null``): the lines after it are that
attempt's, and a failed task stays named in it. Journals written before it existed are
read as they were.

``submitting`` is written just before the request goes out (after the item has waited for its
turn, the request budget and any retry back-off), so only a request that may really have been
sent reads as "unknown" after a crash; an attempt that certainly created nothing is followed by
``refused``.

The API key is never written. A last line cut off by a crash is dropped when the journal is
opened again. An open journal is locked (an exclusive advisory lock on the file): a second run
of the same batch, in this process or another, is refused with :class:`JournalError` while the
first holds it, instead of submitting the same items again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]
import attrs

from ._exceptions import JournalError, TaskFailed, TaskNotFound
from ._files import open_private_append
from ._models import VideoRequest, VideoResult
from ._serde import request_to_wire

JOURNAL_VERSION = 1


def fingerprint(request: VideoRequest) -> str:
    """A stable digest of what a request sends: same body, same fingerprint."""
    body = json.dumps(request_to_wire(request), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:32]


@attrs.define(kw_only=True)
class ItemState:
    """What the journal knows of one item."""

    fingerprint: str
    #: When a submit was started (``None`` if never).
    submitting_at: float | None = None
    task_id: str | None = None
    #: The submit's outcome is unknown: never resubmit.
    unknown: bool = False
    #: What the run that lost the answer recorded as the cause.
    unknown_reason: str | None = None
    #: The item's final line, once it ended for good.
    final: dict[str, Any] | None = None
    #: Which attempt the lines now describe (a ``retry`` line starts the next one).
    attempt: int = 1
    #: The task ids of earlier attempts that failed, oldest first.
    earlier_tasks: list[str] = attrs.Factory(list)

    def new_attempt(self) -> None:
        """Forget the failed attempt's progress (its task id is kept in ``earlier_tasks``)."""
        if self.task_id is not None:
            self.earlier_tasks.append(self.task_id)
        self.attempt += 1
        self.submitting_at = self.task_id = self.unknown_reason = self.final = None
        self.unknown = False

    @property
    def outcome_unknown(self) -> bool:
        """A submit was started and no task id was recorded: the task may exist."""
        return self.unknown or (self.submitting_at is not None and self.task_id is None)


class Journal:
    """An open journal for one batch. Create it with :meth:`open`."""

    def __init__(self, path: Path, file: IO[bytes], states: list[ItemState]) -> None:
        self.path = path
        self._file = file
        self._states = states
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: str | os.PathLike[str], requests: Sequence[VideoRequest]) -> Journal:
        """Open (or create) the journal of a batch of ``requests``.

        Raises:
            JournalError: the journal cannot be read or written, is not a journal, or belongs
                to another batch (its fingerprints differ from these requests').
        """
        fingerprints = [fingerprint(r) for r in requests]
        return await anyio.to_thread.run_sync(cls._open_sync, Path(path), fingerprints)

    @classmethod
    def _open_sync(cls, path: Path, fingerprints: list[str]) -> Journal:
        states = [ItemState(fingerprint=fp) for fp in fingerprints]
        try:
            file = open_private_append(path)
        except OSError as exc:
            msg = (
                f"cannot open the journal {str(path)!r}: {exc.strerror or exc}; "
                "nothing was submitted"
            )
            raise JournalError(msg) from None
        try:
            # Locked before it is read: what another run is writing is never half-read.
            _lock_exclusively(file, path)
            file.seek(0)
            existing = file.read()
            # A crash mid-write leaves a last line without its newline: drop it.
            complete, _, _ = existing.rpartition(b"\n")
            lines = complete.decode("utf-8", "replace").splitlines() if complete else []
            if lines:
                _replay(path, lines, fingerprints, states)
            kept = len(complete) + (1 if complete else 0)
            if kept != len(existing):
                file.truncate(kept)
        except OSError as exc:
            file.close()
            msg = f"cannot use the journal {str(path)!r}: {exc.strerror or exc}"
            raise JournalError(msg) from None
        except BaseException:
            file.close()
            raise
        journal = cls(path, file, states)
        if not lines:
            journal._write_sync(
                {"event": "batch", "version": JOURNAL_VERSION, "fingerprints": fingerprints}
            )
        return journal

    def state(self, index: int) -> ItemState:
        """What the journal knows of item ``index``."""
        return self._states[index]

    def outcome(self, index: int) -> tuple[VideoResult | None, BaseException | None]:
        """The result or error a finished item ended with, rebuilt from its final line."""
        final = self._states[index].final
        assert final is not None
        task_id = str(final.get("task_id"))
        status = final.get("status")
        if status == "SUCCESS":
            return VideoResult(
                task_id=task_id,
                video_url=str(final.get("video_url")),
                orig_prompt=final.get("orig_prompt"),
                actual_prompt=final.get("actual_prompt"),
            ), None
        if status == "NOT_FOUND":
            error: BaseException = TaskNotFound(
                method="GET",
                path=f"/v1/video/generations/{task_id}",
                status=400,
                code="task_not_exist",
                message=final.get("message"),
            )
            return None, error
        failed = TaskFailed(task_id=task_id, code=final.get("code"), message=final.get("message"))
        return None, failed

    async def retry(self, index: int) -> None:
        """Record that item ``index`` is submitted again as a new attempt: its task failed,
        or its submit's outcome was unknown (``after`` is then ``None``)."""
        state = self._states[index]
        line = {
            "event": "retry",
            "i": index,
            "attempt": state.attempt + 1,
            "after": state.task_id,
            "code": None if state.final is None else state.final.get("code"),
        }
        await self._write(line)
        state.new_attempt()

    async def submitting(self, index: int, at: float) -> None:
        """Record, before the request is sent, that item ``index`` is being submitted."""
        self._states[index].submitting_at = at
        await self._write(
            {"event": "submitting", "i": index, "fp": self._states[index].fingerprint, "at": at}
        )

    async def submitted(self, index: int, task_id: str) -> None:
        """Record the task id of item ``index`` as soon as the submit returned it."""
        self._states[index].task_id = task_id
        await self._write({"event": "submitted", "i": index, "task_id": task_id})

    async def refused(self, index: int, reason: str) -> None:
        """Record that item ``index``'s submit certainly created nothing (it may be retried)."""
        self._states[index].submitting_at = None
        await self._write({"event": "refused", "i": index, "error": reason})

    async def unknown(self, index: int, at: float, error: BaseException) -> None:
        """Record that item ``index``'s submit outcome is unknown."""
        state = self._states[index]
        state.unknown = True
        state.unknown_reason = str(error)
        await self._write({"event": "unknown", "i": index, "at": at, "error": str(error)})

    async def finished(
        self,
        index: int,
        task_id: str,
        result: VideoResult | None,
        error: BaseException | None,
        *,
        at: float,
    ) -> None:
        """Record that item ``index`` ended: for good on success or failure; for a task id
        the gateway does not know (at ``at``, Unix seconds), only past the task's lifetime."""
        line: dict[str, Any] = {"event": "finished", "i": index, "task_id": task_id}
        if result is not None:
            line |= {
                "status": "SUCCESS",
                "video_url": result.video_url,
                "orig_prompt": result.orig_prompt,
                "actual_prompt": result.actual_prompt,
            }
        elif isinstance(error, TaskFailed):
            line |= {"status": "FAILURE", "code": error.code, "message": error.message}
        elif isinstance(error, TaskNotFound):
            # Also the answer for another account's task (a run with the wrong key): final
            # only once the task's lifetime is over, else the next run attaches again.
            line |= {"status": "NOT_FOUND", "message": error.message, "at": at}
            if not _expired(self._states[index], at):
                await self._write(line | {"event": "not_found"})
                return
        else:
            return
        self._states[index].final = line
        await self._write(line)

    async def aclose(self) -> None:
        """Close the file (every line is already on disk)."""
        async with self._lock:
            await anyio.to_thread.run_sync(self._close_sync)

    def _unwritable(self, exc: OSError) -> JournalError:
        return JournalError(f"cannot write the journal {str(self.path)!r}: {exc.strerror or exc}")

    def _close_sync(self) -> None:
        try:
            # Lines a failed write left buffered are flushed again here: a full disk fails
            # the close too.
            self._file.close()
        except OSError as exc:
            raise self._unwritable(exc) from None

    async def _write(self, line: dict[str, Any]) -> None:
        # One writer at a time keeps lines whole and in order; the thread keeps fsync off
        # the event loop.
        async with self._lock:
            await anyio.to_thread.run_sync(self._write_sync, line)

    def _write_sync(self, line: dict[str, Any]) -> None:
        try:
            self._file.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise self._unwritable(exc) from None


def _lock_exclusively(file: IO[bytes], path: Path) -> None:
    """Take the journal's lock, or refuse at once: another run is using it.

    Raises:
        JournalError: another run (in this process or another) holds the lock.
    """
    try:
        if fcntl is not None:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:  # pragma: no cover - Windows
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
    except BlockingIOError:
        msg = (
            f"the journal {str(path)!r} is in use by another run of this batch; nothing was "
            "submitted. Wait for that run to end (or stop it), then run again to resume"
        )
        raise JournalError(msg) from None
    except PermissionError:  # pragma: no cover - msvcrt's way of saying "locked"
        msg = f"the journal {str(path)!r} is in use by another run; nothing was submitted"
        raise JournalError(msg) from None


def _replay(path: Path, lines: list[str], fingerprints: list[str], states: list[ItemState]) -> None:
    """Rebuild item states from a journal's lines, refusing one of another batch."""
    where = repr(str(path))
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("event") != "batch":
        msg = f"{where} is not a wan_async journal (its first line is not a batch header)"
        raise JournalError(msg)
    if header.get("fingerprints") != fingerprints:
        old = header.get("fingerprints") or []
        diff = next(
            (i for i, (a, b) in enumerate(zip(old, fingerprints, strict=False)) if a != b),
            min(len(old), len(fingerprints)),
        )
        msg = (
            f"the journal {where} belongs to another batch: it has {len(old)} items, this batch "
            f"{len(fingerprints)}, and they first differ at item {diff}; use a new journal "
            "path, or run the batch the journal was written for"
        )
        raise JournalError(msg)
    for number, text in enumerate(lines[1:], start=2):
        try:
            line = json.loads(text)
            state = states[int(line["i"])]
            event = line["event"]
        except (ValueError, KeyError, IndexError, TypeError):
            msg = f"the journal {where} is damaged at line {number}; it cannot be resumed"
            raise JournalError(msg) from None
        if event == "submitting":
            state.submitting_at = float(line.get("at") or 0.0)
        elif event == "submitted":
            state.task_id = str(line["task_id"])
        elif event == "refused":
            state.submitting_at = None
        elif event == "unknown":
            state.unknown = True
            state.unknown_reason = str(line.get("error") or "") or None
            state.submitting_at = float(line.get("at") or state.submitting_at or 0.0)
        elif event == "retry":
            state.new_attempt()
        elif event == "finished":
            state.task_id = str(line.get("task_id") or state.task_id)
            if line.get("status") != "NOT_FOUND" or _expired(state, line.get("at")):
                state.final = line  # older journals' not-found lines are attached again


#: How long the gateway keeps a task (SPEC: task ids expire after 24 hours).
TASK_LIFETIME = 24 * 3600.0


def _expired(state: ItemState, at: object) -> bool:
    """Whether a not-found answer at ``at`` (Unix seconds) comes after the task's lifetime."""
    if not isinstance(at, int | float) or state.submitting_at is None:
        return False
    return at - state.submitting_at >= TASK_LIFETIME


def recorded_submits(path: str | os.PathLike[str]) -> dict[int, str | None]:
    """What a journal file says was sent, read-only: item index -> task id.

    The id is ``None`` for an item whose submit was started and never answered (nor refused):
    its task may exist. Items never sent, or certainly refused, are absent. A missing file,
    and lines that cannot be read, record nothing: this is for reporting, not for resuming.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    sent: dict[int, str | None] = {}
    for raw in text.splitlines()[1:]:
        try:
            line = json.loads(raw)
            index, event = int(line["i"]), line["event"]
        except (ValueError, KeyError, TypeError):
            continue
        task_id = line.get("task_id")
        if event == "refused":
            sent.pop(index, None)
        elif isinstance(task_id, str) and task_id:
            sent[index] = task_id
        elif event in ("submitting", "unknown"):
            sent.setdefault(index, None)
    return sent
