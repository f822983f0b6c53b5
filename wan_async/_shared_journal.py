"""A batch journal in the fleet's task store, which several hosts may run at once.

Its lines are those of a journal file (:mod:`wan_async._journal`), each with ``"by"``, the
client that wrote it, kept in the store instead of a file; what is new is the claim. Before
its request goes out, an item is *claimed* in the same atomic step that appends its
``submitting`` line, and only one client can hold the claim: no item is ever submitted by two
hosts. A client that finds an item claimed follows it instead (it reads the other clients'
lines until the item has a task id, then attaches to it, or until it ended). A claim is freed
only by a ``refused`` line (the submit certainly created nothing), never because its holder
stopped: an item left ``submitting`` by a client whose lease ran out reads as outcome unknown,
as after ``kill -9`` of a single run, since its task may exist.

A lost ``submitting`` line means paying twice, so a journal is opened only on a store whose
acknowledged writes survive its crash (Redis: ``appendonly yes`` and ``appendfsync always``),
unless the caller opts out (``SharedJournal(..., require_durable=False)``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from ._exceptions import JournalError, StoreUnavailable
from ._journal import JOURNAL_VERSION, ItemState, Journal, _replay, fingerprint, item_keys
from ._models import VideoRequest
from ._store import TaskStore

__all__ = ["ClaimedElsewhere", "SharedJournal", "StoreJournal"]

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _check_name(instance: object, attribute: object, value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        msg = f"a shared journal's name is 1-100 letters, digits, '.', '_' or '-'; got {value!r}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class SharedJournal:
    """Names a batch journal kept in the client's task store, which several hosts may run
    at once: ``generate_many(requests, journal=SharedJournal(name="spring-campaign"))``.

    Every host running the same batch with the same name (same gateway, same key) submits
    each item at most once between them, and each gets every item's outcome (those another
    host submitted are followed from the store).

    Attributes:
        name: the journal's name in the store.
        require_durable: refuse to open it on a store that may lose an acknowledged write
            (Redis without ``appendonly yes`` and ``appendfsync always``): a lost claim would
            let a second host pay for the same item.
        follow_every: seconds between two reads of the other hosts' lines while an item
            another host claimed has no task id yet; default a quarter of the store's lease.
    """

    name: str = attrs.field(validator=_check_name)
    require_durable: bool = True
    follow_every: float | None = None


class ClaimedElsewhere(Exception):
    """Another client holds the item's claim: follow it rather than submit it."""


class StoreJournal(Journal):
    """An open shared journal (see :class:`SharedJournal`). Create it with :meth:`open_in`."""

    def __init__(
        self,
        *,
        spec: SharedJournal,
        store: TaskStore,
        owner: str,
        keys: list[str],
        by_key: dict[str, ItemState],
        cursor: int,
        live: set[str],
    ) -> None:
        self._spec = spec
        self._store = store
        self._owner = owner
        self._cursor = cursor
        self._live = live
        self._by_key = by_key
        self._reading = anyio.Lock()
        self.follow_every = spec.follow_every if spec.follow_every else store.lease / 4
        path = Path(f"store:{spec.name}")
        super().__init__(path, None, keys, by_key)  # type: ignore[arg-type]

    @classmethod
    async def open_in(
        cls, store: TaskStore, owner: str, spec: SharedJournal, requests: Sequence[VideoRequest]
    ) -> StoreJournal:
        """Open (or create) the shared journal ``spec`` of a batch of ``requests``.

        Raises:
            JournalError: the store cannot be reached, may lose writes, or holds something
                that is not a journal under that name.
        """
        keys = item_keys([fingerprint(r) for r in requests])
        by_key = {key: ItemState(fingerprint=key) for key in keys}
        where = f"the shared journal {spec.name!r}"
        try:
            if spec.require_durable:
                shortfall = await store.durability()
                if shortfall is not None:
                    msg = (
                        f"{where} needs a store that keeps every write it acknowledged: "
                        f"{shortfall}. Set appendonly yes and appendfsync always on the "
                        "Redis server (a lost claim would let two hosts pay for one item), or "
                        "pass SharedJournal(..., require_durable=False) to accept that risk; "
                        "nothing was submitted"
                    )
                    raise JournalError(msg)
            lines = await store.journal_read(spec.name, 0)
            if not lines:
                header = json.dumps({"event": "batch", "version": JOURNAL_VERSION, "by": owner})
                await store.journal_append(spec.name, header)
                lines = await store.journal_read(spec.name, 0)
            live = await store.live_owners()
        except StoreUnavailable as exc:
            msg = f"cannot open {where}: {exc}; nothing was submitted"
            raise JournalError(msg) from None
        header = json.dumps({"event": "batch", "version": JOURNAL_VERSION})
        _replay(Path(where), [header, *_item_lines(lines)], by_key)
        return cls(
            spec=spec,
            store=store,
            owner=owner,
            keys=keys,
            by_key=by_key,
            cursor=len(lines),
            live=live,
        )

    # -- what is new in a shared journal ------------------------------------------------------

    def claimed_elsewhere(self, index: int) -> bool:
        state = self._states[index]
        return (
            state.submitting_at is not None
            and state.task_id is None
            and not state.unknown
            and state.submitting_by not in (None, self._owner)
            and state.submitting_by in self._live
        )

    async def refresh(self) -> None:
        """Read the lines other clients appended since, and who is alive. One reader at a
        time: every item that follows another client's calls this."""
        async with self._reading:
            try:
                lines = await self._store.journal_read(self._spec.name, self._cursor)
                self._live = await self._store.live_owners()
            except StoreUnavailable as exc:
                raise self._failed(exc) from None
            self._cursor += len(lines)
            theirs = [line for line in _item_lines(lines) if _author(line) != self._owner]
            if theirs:
                # _replay reads a header first: give it the one every journal starts with.
                header = json.dumps({"event": "batch", "version": JOURNAL_VERSION})
                _replay(self.path, [header, *theirs], self._by_key)

    async def submitting(self, index: int, at: float) -> None:
        """Claim item ``index`` and record that it is being submitted, in one step.

        Raises:
            ClaimedElsewhere: another client holds the claim (nothing was written).
        """
        line = self._line({"event": "submitting", "i": index, "at": at})
        try:
            claimed = await self._store.journal_claim(
                self._spec.name, self._keys[index], self._owner, line
            )
        except StoreUnavailable as exc:
            raise self._failed(exc) from None
        if not claimed:
            raise ClaimedElsewhere
        state = self._states[index]
        state.recorded = True
        state.submitting_at, state.submitting_by = at, self._owner

    async def refused(self, index: int, reason: str) -> None:
        """Record that item ``index``'s submit created nothing, and free its claim."""
        self._states[index].submitting_at = None
        line = self._line({"event": "refused", "i": index, "error": reason})
        try:
            await self._store.journal_release(self._spec.name, self._keys[index], line)
        except StoreUnavailable as exc:
            raise self._failed(exc) from None

    async def retry(self, index: int) -> None:
        msg = "a shared journal does not retry items yet (retry_failed, resubmit_unknown)"
        raise JournalError(msg)

    async def aclose(self) -> None:
        """Nothing to close: every line is in the store already."""

    # -- storage ------------------------------------------------------------------------------

    def _line(self, line: dict[str, Any]) -> str:
        self._states[line["i"]].recorded = True
        keyed = {"event": line["event"], "k": self._keys[line["i"]]} | line | {"by": self._owner}
        return json.dumps(keyed, ensure_ascii=False)

    async def _write(self, line: dict[str, Any]) -> None:
        text = self._line(line) if "i" in line else json.dumps(line | {"by": self._owner})
        try:
            await self._store.journal_append(self._spec.name, text)
        except StoreUnavailable as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: StoreUnavailable) -> JournalError:
        return JournalError(
            f"cannot use the shared journal {self._spec.name!r}: {exc}; the batch stops "
            "(what it recorded stays in the store: run it again to resume)"
        )


def _author(text: str) -> str | None:
    try:
        line = json.loads(text)
    except ValueError:
        return None
    by = line.get("by") if isinstance(line, dict) else None
    return by if isinstance(by, str) else None


def _item_lines(lines: list[str]) -> list[str]:
    """Lines about items: not the headers (two hosts opening a new journal at once both
    write one)."""
    return [line for line in lines if not line.startswith('{"event": "batch"')]
