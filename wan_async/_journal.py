"""A batch journal: one JSON line per event, flushed and fsynced before the batch moves on.

Running the same batch again with the same journal resumes it (after a crash, ``kill -9``
included): finished items come back from the journal without a request, submitted ones are
re-attached by task id, and only items never submitted are submitted. Items are known by
their request's fingerprint, not their position: a rerun of an edited batch (items added,
changed, reordered or removed) submits only the requests the journal has never seen, and an
item removed from the batch is left alone (its lines stay; its task is not forgotten).
An item whose submit was under way when the previous run died, or whose submit outcome was
unknown, is reported as :class:`~wan_async.SubmitOutcomeUnknown` and never resubmitted
(unless asked: ``resubmit_unknown``): its task may exist.

Lines (``"k"`` is the item's key: its request's fingerprint, with ``#2``, ``#3``... for
the second, third... identical request of one batch; ``"i"`` its index in the run that
wrote the line, for people reading the file)::

    {"event": "batch", "version": 2}
    {"event": "submitting", "k": "…", "i": 3, "at": 1765328779.1}
    {"event": "submitted", "k": "…", "i": 3, "task_id": "task_…"}
    {"event": "unknown", "k": "…", "i": 4, "at": 1765328779.2, "error": "…"}
    {"event": "refused", "k": "…", "i": 6, "error": "…"}
    {"event": "finished", "k": "…", "i": 3, "task_id": "task_…", "status": "SUCCESS", …}
    {"event": "finished", "k": "…", "i": 5, "task_id": "task_…", "status": "FAILURE", …}
    {"event": "retry", "k": "…", "i": 5, "attempt": 2, "after": "task_…", "code": "…"}

Version 1 journals (a header with every item's fingerprint, lines with ``"i"`` only) are
read as they are: a line without ``"k"`` names the item at that index of its header, and
lines written by this version are appended to them.

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
import logging
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

logger = logging.getLogger("wan_async")

JOURNAL_VERSION = 2


def item_keys(fingerprints: Sequence[str]) -> list[str]:
    """Each item's key: its fingerprint, ``#n`` added for the n-th identical request."""
    seen: dict[str, int] = {}
    keys = []
    for fp in fingerprints:
        seen[fp] = seen.get(fp, 0) + 1
        keys.append(fp if seen[fp] == 1 else f"{fp}#{seen[fp]}")
    return keys


@attrs.frozen(kw_only=True)
class Changes:
    """How a batch compares with what its journal already holds."""

    #: Items of the batch the journal has lines for (done, running or unknown).
    before: int
    #: Items of the batch the journal has never seen: they will be submitted.
    new: int
    #: Items the journal holds that are no longer in the batch: not touched.
    removed: int

    def describe(self) -> str:
        """E.g. ``"298 recorded before, 2 new, 1 removed (not touched)"``."""
        return (
            f"{self.before} recorded before, {self.new} new, {self.removed} removed (not touched)"
        )


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
    #: Which client started it, in a journal several hosts share (``None`` in a file's).
    submitting_by: str | None = None
    task_id: str | None = None
    #: The submit's outcome is unknown: never resubmit.
    unknown: bool = False
    #: What the run that lost the answer recorded as the cause.
    unknown_reason: str | None = None
    #: The item's final line, once it ended for good.
    final: dict[str, Any] | None = None
    #: Whether the journal has any line for the item.
    recorded: bool = False
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

    #: Seconds between two reads of the other clients' lines while an item another client
    #: claimed has no task id yet (a journal several hosts share; unused for a file's).
    follow_every: float = 1.0

    def __init__(
        self,
        path: Path,
        file: IO[bytes],
        keys: list[str],
        by_key: dict[str, ItemState],
    ) -> None:
        self.path = path
        self._file = file
        self._keys = keys
        #: The states of this batch's items, by index (shared with ``by_key``).
        self._states = [by_key[k] for k in keys]
        self.changes = _changes(keys, by_key)
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: str | os.PathLike[str], requests: Sequence[VideoRequest]) -> Journal:
        """Open (or create) the journal of a batch of ``requests``.

        Items are matched by their request (see :func:`item_keys`), so the batch may differ
        from the one that wrote the journal; :attr:`changes` says how.

        Raises:
            JournalError: the journal cannot be read or written, or is not a journal.
        """
        keys = item_keys([fingerprint(r) for r in requests])
        return await anyio.to_thread.run_sync(cls._open_sync, Path(path), keys)

    @classmethod
    def _open_sync(cls, path: Path, keys: list[str]) -> Journal:
        by_key = {key: ItemState(fingerprint=key) for key in keys}
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
                _replay(path, lines, by_key)
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
        journal = cls(path, file, keys, by_key)
        if not lines:
            journal._write_sync({"event": "batch", "version": JOURNAL_VERSION})
        elif journal.changes.new or journal.changes.removed:
            logger.info("journal %s: %s", path, journal.changes.describe())
        return journal

    def state(self, index: int) -> ItemState:
        """What the journal knows of item ``index``."""
        return self._states[index]

    def claimed_elsewhere(self, index: int) -> bool:
        """Whether another live client is submitting item ``index`` now (in a journal
        several hosts share; never in a file's, which one run at a time holds)."""
        return False

    async def refresh(self) -> None:
        """Read what other clients wrote since (a no-op for a journal file)."""

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
        await self._write({"event": "submitting", "i": index, "at": at})

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
        if "i" in line:  # an item's line: named by its key first
            self._states[line["i"]].recorded = True
            line = {"event": line["event"], "k": self._keys[line["i"]]} | line
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


def _replay(path: Path, lines: list[str], by_key: dict[str, ItemState]) -> None:
    """Rebuild item states from a journal's lines; items the batch no longer has are added
    to ``by_key`` too (they are counted as removed, never touched)."""
    where = repr(str(path))
    old_keys = _header_keys(path, lines[0])
    for number, text in enumerate(lines[1:], start=2):
        try:
            line = json.loads(text)
            key = _line_key(line, old_keys)
            event = line["event"]
        except (ValueError, KeyError, IndexError, TypeError):
            msg = f"the journal {where} is damaged at line {number}; it cannot be resumed"
            raise JournalError(msg) from None
        state = by_key.get(key)
        if state is None:
            state = by_key[key] = ItemState(fingerprint=key)
        state.recorded = True
        if event == "submitting":
            state.submitting_at = float(line.get("at") or 0.0)
            by = line.get("by")
            state.submitting_by = by if isinstance(by, str) else None
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


def _changes(keys: Sequence[str], by_key: dict[str, ItemState]) -> Changes:
    current = set(keys)
    states = [by_key[k] for k in keys]
    return Changes(
        before=sum(state.recorded for state in states),
        new=sum(not state.recorded for state in states),
        removed=sum(s.recorded for k, s in by_key.items() if k not in current),
    )


def compare(path: str | os.PathLike[str], requests: Sequence[VideoRequest]) -> Changes | None:
    """How ``requests`` compare with what the journal at ``path`` holds, read-only; ``None``
    if there is no journal there (or it cannot be read: opening it will say why)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    complete, _, _ = text.rpartition("\n")
    lines = complete.splitlines()
    if not lines:
        return None
    keys = item_keys([fingerprint(r) for r in requests])
    by_key = {key: ItemState(fingerprint=key) for key in keys}
    try:
        _replay(Path(path), lines, by_key)
    except JournalError:
        return None
    return _changes(keys, by_key)


def _header_keys(path: Path, text: str) -> list[str]:
    """The item keys a version 1 header lists (none for version 2), or JournalError."""
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("event") != "batch":
        msg = f"{str(path)!r} is not a wan_async journal (its first line is not a batch header)"
        raise JournalError(msg)
    fingerprints = header.get("fingerprints") or []
    return item_keys([str(fp) for fp in fingerprints])


def _line_key(line: dict[str, Any], old_keys: Sequence[str]) -> str:
    """Which item a line is about: its ``k``, or (version 1) its index in the header."""
    key = line.get("k")
    if isinstance(key, str) and key:
        return key
    return old_keys[int(line["i"])]


#: How long the gateway keeps a task (SPEC: task ids expire after 24 hours).
TASK_LIFETIME = 24 * 3600.0


def _expired(state: ItemState, at: object) -> bool:
    """Whether a not-found answer at ``at`` (Unix seconds) comes after the task's lifetime."""
    if not isinstance(at, int | float) or state.submitting_at is None:
        return False
    return at - state.submitting_at >= TASK_LIFETIME


def recorded_submits(
    path: str | os.PathLike[str], requests: Sequence[VideoRequest] | None = None
) -> dict[int, str | None]:
    """What a journal file says was sent, read-only: item index -> task id.

    The index is that of the item in ``requests`` (items the journal holds that ``requests``
    lacks are left out); without ``requests``, the index each line was written with. The id
    is ``None`` for an item whose submit was started and never answered (nor refused): its
    task may exist. Items never sent, or certainly refused, are absent. A missing file, and
    lines that cannot be read, record nothing: this is for reporting, not for resuming.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    raw_lines = text.splitlines()
    if not raw_lines:
        return {}
    index_of: dict[str, int] | None = None
    old_keys: list[str] = []
    if requests is not None:
        keys = item_keys([fingerprint(r) for r in requests])
        index_of = {key: i for i, key in enumerate(keys)}
        try:
            old_keys = _header_keys(Path(path), raw_lines[0])
        except JournalError:
            return {}
    sent: dict[int, str | None] = {}
    for raw in raw_lines[1:]:
        try:
            line = json.loads(raw)
            event = line["event"]
            if index_of is None:
                index = int(line["i"])
            else:
                found = index_of.get(_line_key(line, old_keys))
                if found is None:
                    continue
                index = found
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        task_id = line.get("task_id")
        if event in ("refused", "retry"):
            sent.pop(index, None)
        elif isinstance(task_id, str) and task_id:
            sent[index] = task_id
        elif event in ("submitting", "unknown"):
            sent.setdefault(index, None)
    return sent
