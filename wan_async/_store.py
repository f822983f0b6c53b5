"""Where a fleet of clients keeps its tasks: who polls each, and what it last showed.

A :class:`TaskStore` is a small protocol that several :class:`~wan_async.WanClient`\\ s, in one
process or many, share (:class:`~wan_async.RedisStore` across processes and hosts,
:class:`MemoryStore` within one process). Everything in it lives under a *namespace* derived
from a hash of the gateway's URL and the API key: the key itself is never stored.

What it holds, per task: its *owner* (the one client that polls it), the latest snapshot the
owner saw (as the JSON of :func:`~wan_async._serde.snapshot_to_store`), that snapshot's
*order* (a later refresh of the gateway, or a later status at the same refresh, is larger),
and whether the task has ended. Per owner: when its lease ends, in the store's own time (never
a host's clock). The rules, which every implementation keeps atomically:

* a claim of a task succeeds unless another owner holds it and its lease runs; the task's
  record is created by the first claim and expires ``task_ttl`` after it (the gateway forgets
  tasks after 24 hours);
* a snapshot is accepted only if its order is larger than the stored one's, and never once
  the task has ended: a stale owner never rolls one back;
* an owner whose lease ran out is *dead*: :meth:`TaskStore.adopt` gives its unfinished tasks
  to the caller, in one step, so that each has one owner again;
* every accepted snapshot is announced to the subscribers (a hint: the stored snapshot is the
  truth, and a subscriber that lost its connection re-reads what it follows).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, runtime_checkable

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from ._config import Secret
from ._models import TaskSnapshot, TaskStatus

__all__ = [
    "LEASE",
    "RATE_CHANGED",
    "TASK_TTL",
    "Claim",
    "MemoryStore",
    "StoredTask",
    "TaskStore",
    "check_lease",
    "namespace_for",
    "snapshot_order",
    "take_token",
]

#: Seconds a task's record lives after its first claim: the gateway forgets tasks after 24 h.
TASK_TTL = 24 * 3600.0
#: Seconds a client owns its tasks without renewing, by default (a setting of each store).
LEASE = 10.0
#: What :meth:`TaskStore.announcements` yields when the fleet's rate changed (no task id
#: starts with ``*``: ids are one path segment of letters, digits, ``-`` and ``_``).
RATE_CHANGED = "*rate"
#: A token a grant may fall short of: float refills land a hair under after an exact sleep.
_EPSILON = 1e-9


def take_token(
    lanes: dict[str, float], kind: str, *, elapsed: float, rate: float, poll_share: float
) -> float:
    """The fleet bucket's rule (:meth:`TaskStore.take`) on ``lanes`` (``"poll"``,
    ``"submit"``), after ``elapsed`` seconds at ``rate``: 0 if a token was taken, else the
    seconds to wait. The Redis store runs the same rule in Lua."""
    shares = {"poll": poll_share, "submit": 1 - poll_share}
    size = {k: max(1.0, shares[k] * max(1.0, rate)) for k in shares}
    filled = {k: lanes.get(k, 0.0) + elapsed * rate * shares[k] for k in shares}
    lanes["poll"] = min(size["poll"], filled["poll"] + max(0.0, filled["submit"] - size["submit"]))
    lanes["submit"] = min(
        size["submit"], filled["submit"] + max(0.0, filled["poll"] - size["poll"])
    )
    own = lanes[kind]
    if own >= 1 - _EPSILON:
        lanes[kind] = own - 1
        return 0.0
    if kind == "poll":
        both = own + lanes["submit"]
        if both >= 1 - _EPSILON:
            lanes["poll"], lanes["submit"] = 0.0, both - 1
            return 0.0
        return (1 - both) / rate
    return (1 - own) / (rate * shares[kind])


def check_lease(lease: object) -> float:
    """``lease`` as seconds, a positive finite number.

    Raises:
        ValueError: anything else.
    """
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease < math.inf:
        msg = f"lease must be a positive number of seconds, got {lease!r}"
        raise ValueError(msg)
    return float(lease)


#: Rank of a status within one refresh: a later status at the same ``updated_at`` is newer.
_RANK = {
    TaskStatus.NOT_START: 0,
    TaskStatus.QUEUED: 1,
    TaskStatus.UNKNOWN: 2,
    TaskStatus.IN_PROGRESS: 3,
    TaskStatus.SUCCESS: 7,
    TaskStatus.FAILURE: 7,
}


def namespace_for(base_url: str, api_key: str | Secret) -> str:
    """The namespace of one gateway and key: a hash, from which neither can be read back."""
    key = api_key.reveal() if isinstance(api_key, Secret) else api_key
    digest = hashlib.sha256(f"wan_async\0{base_url}\0{key}".encode()).hexdigest()
    return f"wan:{digest[:32]}"


def snapshot_order(snapshot: TaskSnapshot) -> float:
    """How new ``snapshot`` is: later refreshes (``updated_at``, milliseconds) are larger, and
    at one refresh a later status is. Exact in a float (below 2**53)."""
    stamp = snapshot.updated_at.timestamp() if snapshot.updated_at is not None else 0.0
    milliseconds = max(0, math.floor(stamp * 1000))
    return float(milliseconds * 8 + _RANK.get(snapshot.status, 2))


@attrs.frozen(kw_only=True)
class StoredTask:
    """A task as the store holds it.

    Attributes:
        task_id: the task.
        owner: the client that polls it ('' once it has ended, or if no one holds it).
        alive: whether that owner's lease runs.
        snapshot: the JSON of its latest snapshot, if any was stored.
        ended: whether that snapshot is SUCCESS or FAILURE.
    """

    task_id: str
    owner: str = ""
    alive: bool = False
    snapshot: str | None = None
    ended: bool = False


@attrs.frozen(kw_only=True)
class Claim:
    """What a claim found: ``mine`` if the caller owns the task now; otherwise ``task`` says
    who does (or that it has ended)."""

    mine: bool
    task: StoredTask


@runtime_checkable
class TaskStore(Protocol):
    """What a fleet of clients shares. Every method may raise :class:`OSError` (or a
    subclass) when the store cannot be reached; the client then goes on alone and says so
    in a log line.

    Owners, leases and ``now`` are the store's: an owner's lease is renewed by
    :meth:`beat`, in seconds of the store's own clock.
    """

    #: Seconds a client owns its tasks without renewing (it renews every quarter of it).
    lease: float

    async def open(self, namespace: str) -> None:
        """Connect (if needed) and use ``namespace`` for everything from now on."""

    async def aclose(self) -> None:
        """Disconnect (a no-op for an in-process store)."""

    async def beat(self, owner: str, lease: float, *, first: bool) -> bool:
        """Renew ``owner``'s lease for ``lease`` seconds. Returns False if it was taken for
        dead meanwhile (its tasks adopted by others); it is then registered afresh. ``first``:
        the owner's first beat (nothing was adopted from it yet)."""

    async def resign(self, owner: str) -> None:
        """End ``owner``'s lease now: its unfinished tasks are free for others to adopt."""

    async def claim(self, task_id: str, owner: str, *, new: bool) -> Claim:
        """Own ``task_id`` unless a live owner holds it or it has ended. ``new``: just
        submitted by ``owner`` (no one else can know it yet)."""

    async def adopt(self, owner: str) -> list[str]:
        """Give ``owner`` the unfinished tasks of one dead owner, if there is one."""

    async def put(self, task_id: str, *, order: float, snapshot: str, ended: bool) -> bool:
        """Store a snapshot if it is newer than the stored one (and the task has not ended);
        announce it if so. Returns whether it was stored."""

    async def get(self, task_ids: Sequence[str]) -> list[StoredTask | None]:
        """The stored records of ``task_ids`` (None: unknown or expired)."""

    def announcements(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """Subscribe: the ids of tasks whose snapshot was stored, from now on, and
        :data:`RATE_CHANGED` when the fleet's rate changed. The iterator raises
        :class:`StoreUnavailable` when the subscription is lost."""

    async def members(self) -> int:
        """How many owners' leases run now."""

    async def rate(self) -> float | None:
        """The fleet's request rate in force (requests per second of the store's clock),
        None while unlimited."""

    async def propose_rate(
        self, rate: float | None, *, cooldown: float, decrease: bool
    ) -> float | None:
        """Set the fleet's rate to ``rate`` (None: unlimited) unless it changed less than
        ``cooldown`` seconds ago; a decrease only lowers it. Returns the rate in force after
        (and announces a change)."""

    async def live_owners(self) -> set[str]:
        """The owners whose leases run now."""

    async def durability(self) -> str | None:
        """None if a write the store acknowledged survives a crash of its server (Redis:
        ``appendonly yes`` with ``appendfsync always``); else what falls short."""

    async def journal_read(self, name: str, start: int) -> list[str]:
        """The lines of the shared journal ``name`` from line ``start`` on."""

    async def journal_append(self, name: str, line: str) -> None:
        """Append one line to the shared journal ``name``."""

    async def journal_claim(self, name: str, item: str, owner: str, line: str) -> bool:
        """Claim ``item`` of journal ``name`` for ``owner`` and append ``line``, in one
        step; False (nothing written) if someone holds the claim. A claim is never taken
        over: only :meth:`journal_release` (a submit that certainly created nothing) frees
        it."""

    async def journal_release(self, name: str, item: str, line: str) -> None:
        """Free the claim of ``item`` and append ``line``, in one step."""

    async def take(self, kind: str, *, rate: float, poll_share: float) -> float:
        """Take one request's token of ``kind`` (``"poll"`` or ``"submit"``) from the fleet's
        bucket, which fills at ``rate`` requests per second (``poll_share`` of it in the poll
        lane), and return 0; or take nothing and return the seconds to wait first.

        The lanes hold ``max(1, share * max(1, rate))`` tokens each; what overflows one
        spills into the other. A poll may take from the submit lane, a submit never from the
        poll lane: status checks keep their share across the fleet."""


@attrs.define
class _MemoryTask:
    owner: str = ""
    snapshot: str | None = None
    order: float = -math.inf
    ended: bool = False
    expires: float = math.inf


class MemoryStore:
    """A :class:`TaskStore` for the clients of one process (no dependency, nothing shared
    beyond it). Its time is the process's monotonic clock. ``lease`` and ``task_ttl`` as for
    :class:`~wan_async.RedisStore`."""

    def __init__(self, *, lease: float = LEASE, task_ttl: float = TASK_TTL) -> None:
        self.lease = check_lease(lease)
        self._task_ttl = task_ttl
        self._spaces: dict[str, _Space] = {}
        self._space: _Space | None = None

    def _current(self) -> _Space:
        if self._space is None:
            msg = "the store is not open"
            raise RuntimeError(msg)
        return self._space

    async def open(self, namespace: str) -> None:
        self._space = self._spaces.setdefault(namespace, _Space())

    async def aclose(self) -> None:
        return None

    async def beat(self, owner: str, lease: float, *, first: bool) -> bool:
        space = self._current()
        known = owner in space.leases
        space.leases[owner] = time.monotonic() + lease
        return first or known

    async def resign(self, owner: str) -> None:
        space = self._current()
        if owner in space.leases:
            space.leases[owner] = -math.inf

    async def claim(self, task_id: str, owner: str, *, new: bool) -> Claim:
        space = self._current()
        now = time.monotonic()
        task = space.task(task_id, now)
        if task is None:
            task = space.tasks[task_id] = _MemoryTask(expires=now + self._task_ttl)
        if task.ended or (task.owner and task.owner != owner and space.alive(task.owner, now)):
            return Claim(mine=False, task=space.stored(task_id, task, now))
        if task.owner and task.owner != owner:
            space.owned.get(task.owner, set()).discard(task_id)
        task.owner = owner
        space.owned.setdefault(owner, set()).add(task_id)
        return Claim(mine=True, task=space.stored(task_id, task, now))

    async def adopt(self, owner: str) -> list[str]:
        space = self._current()
        now = time.monotonic()
        for dead, until in list(space.leases.items()):
            if dead == owner or until > now:
                continue
            del space.leases[dead]
            taken = []
            for task_id in sorted(space.owned.pop(dead, set())):
                task = space.task(task_id, now)
                if task is not None and task.owner == dead and not task.ended:
                    task.owner = owner
                    space.owned.setdefault(owner, set()).add(task_id)
                    taken.append(task_id)
            return taken
        return []

    async def put(self, task_id: str, *, order: float, snapshot: str, ended: bool) -> bool:
        space = self._current()
        now = time.monotonic()
        task = space.task(task_id, now)
        if task is None:
            task = space.tasks[task_id] = _MemoryTask(expires=now + self._task_ttl)
        if task.ended or order <= task.order:
            return False
        task.snapshot, task.order, task.ended = snapshot, order, ended
        if ended and task.owner:
            space.owned.get(task.owner, set()).discard(task_id)
        space.announce(task_id)
        return True

    async def get(self, task_ids: Sequence[str]) -> list[StoredTask | None]:
        space = self._current()
        now = time.monotonic()
        found: list[StoredTask | None] = []
        for task_id in task_ids:
            task = space.task(task_id, now)
            found.append(None if task is None else space.stored(task_id, task, now))
        return found

    async def members(self) -> int:
        space = self._current()
        now = time.monotonic()
        return sum(1 for until in space.leases.values() if until > now)

    async def rate(self) -> float | None:
        return self._current().rate

    async def propose_rate(
        self, rate: float | None, *, cooldown: float, decrease: bool
    ) -> float | None:
        space = self._current()
        now = time.monotonic()
        current = math.inf if space.rate is None else space.rate
        wanted = math.inf if rate is None else rate
        moves = wanted < current if decrease else wanted != current
        if moves and now - space.rate_at >= cooldown:
            space.rate, space.rate_at = rate, now
            space.announce(RATE_CHANGED)
        return space.rate

    async def live_owners(self) -> set[str]:
        space = self._current()
        now = time.monotonic()
        return {owner for owner, until in space.leases.items() if until > now}

    async def durability(self) -> str | None:
        return None  # nothing outlives the process anyway: what it acknowledged, it has

    async def journal_read(self, name: str, start: int) -> list[str]:
        return list(self._current().journals.get(name, [])[start:])

    async def journal_append(self, name: str, line: str) -> None:
        self._current().journals.setdefault(name, []).append(line)

    async def journal_claim(self, name: str, item: str, owner: str, line: str) -> bool:
        space = self._current()
        claims = space.claims.setdefault(name, {})
        if item in claims:
            return False
        claims[item] = owner
        space.journals.setdefault(name, []).append(line)
        return True

    async def journal_release(self, name: str, item: str, line: str) -> None:
        space = self._current()
        space.claims.setdefault(name, {}).pop(item, None)
        space.journals.setdefault(name, []).append(line)

    async def take(self, kind: str, *, rate: float, poll_share: float) -> float:
        space = self._current()
        now = time.monotonic()
        elapsed = max(0.0, now - space.bucket_at) if space.bucket_at is not None else 0.0
        space.bucket_at = now
        return take_token(space.lanes, kind, elapsed=elapsed, rate=rate, poll_share=poll_share)

    @asynccontextmanager
    async def announcements(self) -> AsyncIterator[AsyncIterator[str]]:
        space = self._current()
        send, receive = anyio.create_memory_object_stream[str](1024)
        space.subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            space.subscribers.discard(send)
            send.close()


@attrs.define
class _Space:
    tasks: dict[str, _MemoryTask] = attrs.Factory(dict)
    leases: dict[str, float] = attrs.Factory(dict)
    owned: dict[str, set[str]] = attrs.Factory(dict)
    subscribers: set[MemoryObjectSendStream[str]] = attrs.Factory(set)
    rate: float | None = None
    rate_at: float = -math.inf
    lanes: dict[str, float] = attrs.Factory(dict)
    bucket_at: float | None = None
    journals: dict[str, list[str]] = attrs.Factory(dict)
    claims: dict[str, dict[str, str]] = attrs.Factory(dict)

    def announce(self, message: str) -> None:
        for subscriber in list(self.subscribers):
            try:
                subscriber.send_nowait(message)
            except anyio.WouldBlock:
                pass  # a hint only: a slow subscriber re-reads what it follows
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.subscribers.discard(subscriber)

    def alive(self, owner: str, now: float) -> bool:
        return self.leases.get(owner, -math.inf) > now

    def task(self, task_id: str, now: float) -> _MemoryTask | None:
        task = self.tasks.get(task_id)
        if task is not None and task.expires <= now:
            del self.tasks[task_id]
            return None
        return task

    def stored(self, task_id: str, task: _MemoryTask, now: float) -> StoredTask:
        owner = "" if task.ended else task.owner
        return StoredTask(
            task_id=task_id,
            owner=owner,
            alive=bool(owner) and self.alive(owner, now),
            snapshot=task.snapshot,
            ended=task.ended,
        )
