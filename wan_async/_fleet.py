"""This client's part in a fleet that shares one :class:`~wan_async.TaskStore`.

With a store, every task has one *owner* among the fleet's clients, the one whose poller
checks it; the others *follow* it: they read the snapshot the owner stored when the store
announces one, at no gateway request. A client submits a task and owns it; ``attach()``
follows a task another live client owns, and owns one that no live client does. The fleet:

* renews this client's lease every quarter of it, and adopts the unfinished tasks of owners
  whose lease ran out (a process killed, a host gone): they are polled again within
  ``lease`` and a quarter of it;
* writes every status change its poller sees (only the latest per task, if the store
  lags behind), and announces it;
* follows by announcement, and re-reads everything it follows every ``lease`` and after a
  lost subscription (an announcement is a hint, the stored snapshot is the truth); a followed
  task whose owner died is claimed and polled here;
* closes by writing what is left and ending its lease, so its unfinished tasks are adopted
  at once.

If the store cannot be reached, the client goes on alone: its own tasks are polled as
without a store, followed tasks are polled here too (two clients polling one task costs only
status checks), and a log line says so; the latest snapshot of each task it polls is written
once the store is back.
Every interval here is a fraction of the lease, a setting of the store, in seconds of real
time: leases run on the store's clock.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterable

import anyio
from anyio.abc import TaskStatus as AnyioTaskStatus

from ._clock import Clock
from ._exceptions import ClientClosedError, StoreUnavailable, TaskFailed
from ._handle import TaskHandle
from ._models import TaskSnapshot
from ._poller import Poller
from ._ratelimit import RateBudget, RequestKind
from ._serde import snapshot_from_store, snapshot_to_store
from ._store import RATE_CHANGED, StoredTask, TaskStore, snapshot_order

__all__ = ["Fleet"]

logger = logging.getLogger("wan_async")

#: Records read per request when re-reading what is followed.
_READ_BATCH = 256


class Fleet:
    """The fleet side of one client: its lease, its writes, what it follows and adopts."""

    def __init__(
        self,
        store: TaskStore,
        *,
        namespace: str,
        poller: Poller,
        clock: Clock,
        budget: RateBudget | None = None,
    ) -> None:
        self.store = store
        self._budget = budget
        #: The clients alive when last counted (for the local share of the rate).
        self._members = 1
        #: A rate change of this client's to propose to the store: (rate, decrease, cooldown).
        self._proposal: tuple[float | None, bool, float] | None = None
        self._proposed = anyio.Event()
        #: Whether the store announced a change of the fleet's rate not read yet.
        self._rate_dirty = False
        self.namespace = namespace
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._poller = poller
        self._clock = clock
        self._lease = store.lease
        self._pending: dict[str, TaskSnapshot] = {}
        #: Tasks submitted here while the store was down: claimed once it is back.
        self._unclaimed: dict[str, TaskSnapshot] = {}
        self._wrote = anyio.Event()
        self._dirty: set[str] = set()
        self._read = anyio.Event()
        self._following: dict[str, TaskHandle] = {}
        self._deciding: set[str] = set()
        self._up = True
        #: When the store was last found unreachable (anyio's clock).
        self._down_at = 0.0
        #: Whether the store has this client's lease (its first beat went through).
        self._registered = False
        self._closed = False
        self._task_group: anyio.abc.TaskGroup | None = None

    # -- reading ------------------------------------------------------------------------

    @property
    def lease(self) -> float:
        """Seconds an owner's lease lasts without a renewal."""
        return self._lease

    def following(self, task_id: str) -> TaskHandle | None:
        """The handle of a task this client follows (owned elsewhere), if it does."""
        return self._following.get(task_id)

    @property
    def followed(self) -> int:
        """How many tasks this client follows."""
        return len(self._following)

    async def latest(self, task_id: str) -> TaskSnapshot | None:
        """The stored snapshot of ``task_id`` (None: none stored, or the store is down or
        did not answer within a quarter lease)."""
        stored = None
        with anyio.move_on_after(self._lease / 4) as bound:
            try:
                (stored,) = await self.store.get([task_id])
            except StoreUnavailable as exc:
                self._down(exc)
                return None
        if bound.cancelled_caught:
            return None  # slow, maybe only this process's loop: no evidence it is down
        self._back()
        if stored is None or stored.snapshot is None:
            return None
        return snapshot_from_store(stored.snapshot)

    # -- the fleet's request budget (FleetRate) ---------------------------------------------

    @property
    def shared(self) -> bool:
        """Whether request tokens come from the store now."""
        return self._up and self._registered and not self._closed

    def portion(self) -> float:
        """This client's part of the fleet's rate while the store cannot be reached."""
        return 1 / max(1, self._members)

    async def take(self, kind: RequestKind, rate: float, poll_share: float) -> float:
        """A token of the fleet's bucket (rates and waits in clock seconds; the store's are
        real seconds)."""
        scale = self._clock.scale
        try:
            wait = await self.store.take(kind, rate=rate * scale, poll_share=poll_share)
        except StoreUnavailable as exc:
            self._down(exc)
            raise
        return wait * scale

    def propose(self, rate: float | None, *, decrease: bool, cooldown: float) -> None:
        """Send this client's rate change to the store (the latest one, in the background)."""
        self._proposal = (rate, decrease, cooldown)
        self._proposed.set()

    async def _proposing(self) -> None:
        scale = self._clock.scale
        while True:
            await self._proposed.wait()
            self._proposed = anyio.Event()
            proposal, self._proposal = self._proposal, None
            if proposal is None or self._budget is None:
                continue
            rate, decrease, cooldown = proposal
            try:
                held = await self.store.propose_rate(
                    None if rate is None else rate * scale,
                    cooldown=cooldown / scale,
                    decrease=decrease,
                )
            except StoreUnavailable as exc:
                self._down(exc)
                self._budget.adopt(rate, peer=False)  # alone: this client's own rate
                continue
            self._budget.adopt(None if held is None else held / scale, peer=False)

    async def _read_rate(self) -> None:
        if self._budget is None:
            return
        held = await self.store.rate()
        self._budget.adopt(None if held is None else held / self._clock.scale)

    # -- running ------------------------------------------------------------------------

    async def run(self, *, task_status: AnyioTaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the store, take the lease, and serve until cancelled."""
        try:
            await self.store.open(self.namespace)
            await self.store.beat(self.owner, self._lease, first=True)
            self._registered = True
            self._members = await self.store.members()
            await self._read_rate()
        except StoreUnavailable as exc:
            self._down(exc)
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            task_status.started()
            task_group.start_soon(self._beating)
            task_group.start_soon(self._writing)
            task_group.start_soon(self._listening)
            task_group.start_soon(self._reading)
            task_group.start_soon(self._proposing)

    async def aclose(self) -> None:
        """Write what is left, end the lease (peers adopt the unfinished tasks at once), and
        fail the waits of what is followed. Bounded by the lease."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(self._lease, shield=True):
            try:
                await self._flush()
                await self.store.resign(self.owner)
            except StoreUnavailable as exc:
                self._down(exc)
        for handle in self._following.values():
            handle._fail(ClientClosedError("the client was closed"))
        self._following.clear()
        with anyio.move_on_after(self._lease, shield=True):
            try:
                await self.store.aclose()
            except Exception:
                logger.exception("closing the task store failed")

    # -- what the client tells -----------------------------------------------------------

    async def claim_new(self, task_id: str, snapshot: TaskSnapshot) -> None:
        """A task this client just submitted: it owns it, and the fleet knows it exists
        (``snapshot``, as the submit's answer told, until the first status check). Never
        raises: the task is polled here whatever the store says (a failure is logged)."""
        if not self._up:
            # Known down: claimed once the store is back (a hung store would hold every
            # submit for the bound below).
            self._unclaimed[task_id] = snapshot
            return
        with anyio.move_on_after(self._lease / 4) as bound:
            try:
                await self._claim(task_id, snapshot)
            except StoreUnavailable as exc:
                self._down(exc)
                self._unclaimed[task_id] = snapshot
                return
        if bound.cancelled_caught:
            self._down(StoreUnavailable("the task store did not answer within a quarter lease"))
            self._unclaimed[task_id] = snapshot
            return
        self._back()

    async def _claim(self, task_id: str, snapshot: TaskSnapshot) -> None:
        await self.store.claim(task_id, self.owner, new=True)
        await self.store.put(
            task_id,
            order=snapshot_order(snapshot),
            snapshot=snapshot_to_store(snapshot),
            ended=False,
        )

    async def _claim_late(self) -> None:
        """Claim the tasks submitted while the store was down (it is back)."""
        while self._unclaimed:
            task_id, snapshot = next(iter(self._unclaimed.items()))
            await self._claim(task_id, snapshot)
            self._unclaimed.pop(task_id, None)

    def attach(self, handle: TaskHandle) -> None:
        """Follow or own ``handle``'s task, as the store says (decided in the background;
        meanwhile the handle has no snapshot)."""
        task_id = handle.task_id
        self._following[task_id] = handle
        self._deciding.add(task_id)
        self._dirty.add(task_id)
        self._read.set()

    def record(self, handle: TaskHandle, snapshot: TaskSnapshot) -> None:
        """The poller saw a status change of a task this client polls: store it."""
        self._pending[snapshot.task_id] = snapshot
        self._wrote.set()

    # -- loops ----------------------------------------------------------------------------

    async def _beating(self) -> None:
        every = self._lease / 4
        beats = 0
        while True:
            await anyio.sleep(every)
            beats += 1
            try:
                if self._registered is False:
                    await self.store.open(self.namespace)
                kept = await self.store.beat(self.owner, self._lease, first=not self._registered)
                self._registered = True
                if not kept:
                    logger.warning(
                        "the task store took this client (%s) for dead; peers adopted its "
                        "tasks (it polls what it tracks until they end)",
                        self.owner,
                    )
                self._members = await self.store.members()
                await self._read_rate()
                await self._claim_late()
                while True:
                    taken = await self.store.adopt(self.owner)
                    if not taken:
                        break
                    logger.info("adopted %d tasks of a client that stopped", len(taken))
                    await self._own(taken)
            except StoreUnavailable as exc:
                self._down(exc)
                if anyio.current_time() - self._down_at >= self._lease:
                    # Alone for a lease: no owner's answer can reach this client.
                    self._poll_here(list(self._following))
            else:
                self._back()
            if beats % 4 == 0:
                # Once a lease: announcements are hints, and one may have been lost.
                self._dirty.update(self._following)
                self._read.set()

    async def _writing(self) -> None:
        while True:
            await self._wrote.wait()
            self._wrote = anyio.Event()
            try:
                await self._flush()
            except StoreUnavailable as exc:
                self._down(exc)
                await anyio.sleep(self._lease / 4)
                self._wrote.set()
            else:
                self._back()

    async def _flush(self) -> None:
        while self._pending:
            task_id, snapshot = next(iter(self._pending.items()))
            await self.store.put(
                task_id,
                order=snapshot_order(snapshot),
                snapshot=snapshot_to_store(snapshot),
                ended=snapshot.is_terminal,
            )
            if self._pending.get(task_id) is snapshot:
                self._pending.pop(task_id, None)

    async def _listening(self) -> None:
        while True:
            subscribed = False
            try:
                async with self.store.announcements() as announced:
                    subscribed = True
                    # Re-read everything followed: announcements were missed meanwhile.
                    self._dirty.update(self._following)
                    self._read.set()
                    async for task_id in announced:
                        if task_id == RATE_CHANGED:
                            self._rate_dirty = True
                            self._read.set()
                        elif task_id in self._following:
                            self._dirty.add(task_id)
                            self._read.set()
            except StoreUnavailable as exc:
                self._down(exc)
            if not subscribed:
                await anyio.sleep(self._lease / 4)  # at once after a lost subscription

    async def _reading(self) -> None:
        while True:
            await self._read.wait()
            self._read = anyio.Event()
            if self._rate_dirty:
                self._rate_dirty = False
                try:
                    await self._read_rate()
                except StoreUnavailable as exc:
                    self._down(exc)
            while self._dirty:
                batch = [self._dirty.pop() for _ in range(min(len(self._dirty), _READ_BATCH))]
                batch = [t for t in batch if t in self._following]
                try:
                    found = await self.store.get(batch)
                except StoreUnavailable as exc:
                    self._down(exc)
                    # Alone: what was being decided is polled here.
                    self._poll_here([t for t in batch if t in self._deciding])
                    self._dirty.update(t for t in batch if t not in self._deciding)
                    break
                self._back()
                for task_id, stored in zip(batch, found, strict=True):
                    await self._follow(task_id, stored)

    # -- following and owning ----------------------------------------------------------------

    async def _follow(self, task_id: str, stored: StoredTask | None) -> None:
        handle = self._following.get(task_id)
        if handle is None:
            return
        if stored is not None and stored.snapshot is not None:
            self._apply(handle, snapshot_from_store(stored.snapshot))
            if handle.done():
                return
        if stored is not None and (stored.ended or stored.alive):
            self._deciding.discard(task_id)
            return
        # No live owner (never stored, or its owner stopped): own it here.
        try:
            claim = await self.store.claim(task_id, self.owner, new=False)
        except StoreUnavailable as exc:
            self._down(exc)
            self._poll_here([task_id])
            return
        if claim.mine:
            self._poll_here([task_id])
        else:
            self._deciding.discard(task_id)
            self._dirty.add(task_id)

    def _apply(self, handle: TaskHandle, snapshot: TaskSnapshot) -> None:
        previous = handle.snapshot
        if previous is not None and snapshot_order(snapshot) <= snapshot_order(previous):
            return
        handle._update(snapshot)
        if previous is None or previous.raw_status != snapshot.raw_status:
            self._poller.tell(handle, snapshot)
        if snapshot.is_terminal:
            self._following.pop(handle.task_id, None)
            self._deciding.discard(handle.task_id)
            try:
                result = snapshot.result()
            except TaskFailed as exc:
                handle._resolve(None, exc)
            else:
                handle._resolve(result, None)

    def _poll_here(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            handle = self._following.pop(task_id, None)
            self._deciding.discard(task_id)
            if handle is not None and not handle.done() and self._poller.get(task_id) is None:
                self._poller.track(handle, key=None)

    async def _own(self, task_ids: list[str]) -> None:
        """Tasks adopted from a client that stopped: poll them here (from what it stored)."""
        found = await self.store.get(task_ids)
        for task_id, stored in zip(task_ids, found, strict=True):
            if self._poller.get(task_id) is not None:
                continue  # polled here already (attached while the store was down)
            handle = self._following.get(task_id)
            if handle is None:
                handle = TaskHandle(task_id, request=None, clock=self._clock)
                self._following[task_id] = handle
            if stored is not None and stored.snapshot is not None:
                self._apply(handle, snapshot_from_store(stored.snapshot))
            self._poll_here([task_id])

    # -- the store's health ----------------------------------------------------------------

    def _down(self, exc: StoreUnavailable) -> None:
        if self._up and not self._closed:
            self._up = False
            self._down_at = anyio.current_time()
            logger.warning(
                "%s; this client goes on alone (it polls its own and followed tasks) and "
                "retries every %.3g s",
                exc,
                self._lease / 4,
            )

    def _back(self) -> None:
        if not self._up:
            self._up = True
            logger.warning("the task store is reachable again; this client rejoins its fleet")
