"""The client: its settings, its lifecycle (open -> closed) and the calls it offers."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import pathlib
import random
import re
import reprlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Literal, TypeVar, overload
from urllib.parse import quote

import anyio
import anyio.lowlevel
import attrs
from anyio.abc import TaskGroup
from anyio.abc import TaskStatus as AnyioTaskStatus

from ._admission import Admission
from ._batch import Batch, Outcome, Save, SubmitHooks
from ._clock import Clock, SystemClock
from ._config import (
    Timeouts,
    awaited_only,
    check_count,
    check_rate,
    check_seconds,
    resolve_api_key,
    resolve_base_url,
)
from ._download import download
from ._exceptions import (
    APIError,
    ClientClosedError,
    ConfigurationError,
    DecodeError,
    RateLimitedError,
    SubmitOutcomeUnknown,
    WanError,
)
from ._fleet import Fleet
from ._handle import TaskHandle
from ._journal import Journal
from ._models import TaskCreated, TaskSnapshot, TaskStatus, VideoRequest, VideoResult
from ._poller import Poller, PollerStats, StatusListener
from ._progress import ProgressCallback, check_progress_callback
from ._ratelimit import RateBudget, RateStats
from ._redis import RedisStore
from ._retry import RetryPolicy, call_with_retries
from ._schedule import PollPolicy, duration_key
from ._serde import created_from_wire, request_to_wire, snapshot_from_wire
from ._shared_journal import SharedJournal, StoreJournal
from ._store import TaskStore, namespace_for, snapshot_order
from ._stream import Controls, OutcomeStream
from ._transport import Answer, Transport

if TYPE_CHECKING:
    import aiohttp

SUBMIT_PATH = "/v1/video/generations"
#: The name of the one poller task of each running client (visible in asyncio.all_tasks()).
POLLER_TASK_NAME = "wan_async.poller"
#: The name of each client's own task, which holds its poller and batches.
CLIENT_TASK_NAME = "wan_async.client"
#: The name of the task that serves the client's part in its fleet (with a task store).
FLEET_TASK_NAME = "wan_async.fleet"

_T = TypeVar("_T")
#: What may not appear in a file name made from a task id.
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
logger = logging.getLogger("wan_async")


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@attrs.frozen(kw_only=True)
class ClientStats:
    """What a client has spent: requests by kind, the poller's work, the rate in force."""

    submits: int
    poller: PollerStats
    rate: RateStats


class WanClient:
    """An async client for the Wan text-to-video gateway.

    Use it as ``async with WanClient() as client:``, or create it and ``await
    client.aclose()`` when done (from any task: a web app's start-up and shutdown hooks). The
    one shared poller that watches every task of the client starts with its first use (or
    with ``async with``), in a task of the client's own; closing stops it and fails pending
    waits with :class:`ClientClosedError`. A closed client cannot be reopened. One client is
    safe to share between many concurrent callers of one event loop.

    Args:
        api_key: the gateway key; default ``$WAN_API_KEY``.
        base_url: the gateway; default ``$WAN_BASE_URL``, else the documented service.
        timeouts: limits of one HTTP exchange.
        session: an aiohttp session to use (and never close); default: one of our own. Create
            it with ``trace_configs=[wan_async.trace_config()]``: without it, a request that
            fails before it is sent (a wait for a pooled connection that times out) reads as
            outcome unknown, a submit as :class:`SubmitOutcomeUnknown`, and a warning is
            logged once, when the client is created. The session keeps its own ``trust_env``.
        trust_env: by default, API calls and video downloads alike go through the proxies
            ``HTTPS_PROXY`` / ``HTTP_PROXY`` name (upper or lower case, read when the client
            is created; credentials as ``http://user:password@host:port``, never shown in logs
            or errors), except to the hosts ``NO_PROXY`` lists. A loopback host goes through a
            proxy only if that proxy is on loopback too; ``~/.netrc`` is not read. Redirects
            are still never followed for API calls, and plain ``http://`` is still refused
            for a gateway that is not loopback. A proxy that is not an ``http://`` or
            ``https://`` URL raises :class:`ConfigurationError`. ``False`` ignores the
            environment. Our own session only: one passed in keeps its own ``trust_env``.
        clock: where time is read (a :class:`~wan_async.testing.ScaledClock` in tests).
        allow_insecure_http: permit plain ``http://`` to a host that is not loopback.
        max_concurrent_submits: submits in flight at once.
        max_in_flight: default for batches: tasks submitted and not yet ended at once.
        max_requests_per_second: a hard cap on requests per clock second, submits and polls
            together (status checks keep half of it). By default there is none: the gateway's
            rate-limiter 429s, when they grow common, set the rate.
        poll_policy: how the shared poller spends its requests.
        retry: how failed requests are retried (a submit only when certainly not created).
        max_concurrent_downloads: video downloads in flight at once (apart from submits and polls).
        store: the task store this client shares with the other clients of its fleet (several
            worker processes or hosts on one key): :class:`RedisStore`, or a
            :class:`MemoryStore` shared by the clients of one process. Default: the
            :class:`RedisStore` ``$WAN_REDIS_URL`` names, else none (the client keeps its tasks
            to itself). With a store, each task is polled by one client of the fleet, and
            :meth:`attach` and :meth:`latest` answer for a task of another client from the
            store, at no gateway request. The client closes the store when it closes.

    Raises:
        ConfigurationError: no API key, or an unusable base URL.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeouts: Timeouts = Timeouts(),  # noqa: B008 - frozen, so sharing the default is safe
        session: aiohttp.ClientSession | None = None,
        trust_env: bool = True,
        clock: Clock | None = None,
        allow_insecure_http: bool = False,
        max_concurrent_submits: int = 8,
        max_in_flight: int = 500,
        max_requests_per_second: float | None = None,
        poll_policy: PollPolicy = PollPolicy(),  # noqa: B008 - frozen
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen
        max_concurrent_downloads: int = 4,
        store: TaskStore | None = None,
    ) -> None:
        check_count("max_concurrent_submits", max_concurrent_submits)
        check_count("max_in_flight", max_in_flight)
        check_count("max_concurrent_downloads", max_concurrent_downloads)
        check_rate("max_requests_per_second", max_requests_per_second)
        self.base_url = resolve_base_url(base_url, allow_insecure_http=allow_insecure_http)
        self.clock: Clock = clock or SystemClock()
        self.max_in_flight = max_in_flight
        key = resolve_api_key(api_key)
        if store is not None and not isinstance(store, TaskStore):
            msg = f"store must be a TaskStore (RedisStore, MemoryStore), got {store!r}"
            raise ConfigurationError(msg)
        store = store if store is not None else RedisStore.from_env()
        self._transport = Transport(
            base_url=self.base_url,
            api_key=key,
            timeouts=timeouts,
            session=session,
            trust_env=trust_env,
        )
        self._budget = RateBudget(cap=max_requests_per_second, clock=self.clock)
        self._submit_slots = anyio.Semaphore(max_concurrent_submits)
        if max_concurrent_downloads < 1:
            msg = "max_concurrent_downloads must be at least 1"
            raise ValueError(msg)
        self._download_slots = anyio.Semaphore(max_concurrent_downloads)
        self._retry = retry
        self._rng = random.Random()
        # The poller draws on the budget itself (to pick which task to spend it on) and
        # retries by rescheduling, so it gets the bare single GET.
        self._poller = Poller(
            fetch=self._get_once, budget=self._budget, clock=self.clock, policy=poll_policy
        )
        #: This client's part in its fleet, if it shares a task store.
        self._fleet: Fleet | None = None
        if store is not None:
            self._fleet = Fleet(
                store,
                namespace=namespace_for(self.base_url, key),
                poller=self._poller,
                clock=self.clock,
                budget=self._budget,
            )
            self._poller.on_change = self._fleet.record
            self._budget.fleet = self._fleet
        del key
        self._task_group: TaskGroup | None = None
        #: What runs in the client's task group (the poller, batches), each in its own scope:
        #: closing cancels these, never the group's own scope, which the opener's body is in.
        self._services: set[anyio.CancelScope] = set()
        self._batches: set[Batch] = set()
        self._idle = anyio.Event()
        #: Submits whose request may be on the wire: closing waits for their answers.
        self._on_wire = 0
        self._wire_idle = anyio.Event()
        self._submits = 0
        self._state = _State.OPEN
        self._entered = False
        #: The client's own task, started on first use (see :meth:`_run`).
        self._runner: asyncio.Task[None] | None = None
        self._ready = anyio.Event()
        self._release = anyio.Event()
        self._runner_done = anyio.Event()
        self._transport_closed = anyio.Event()

    def __repr__(self) -> str:
        return f"<WanClient base_url={self.base_url!r} {self._state.value}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._state is _State.CLOSED

    @property
    def store(self) -> TaskStore | None:
        """The task store this client shares with the rest of its fleet (None: none)."""
        return self._fleet.store if self._fleet is not None else None

    @property
    def stats(self) -> ClientStats:
        """Requests spent so far and the rate in force."""
        return ClientStats(
            submits=self._submits, poller=self._poller.stats, rate=self._budget.stats
        )

    async def __aenter__(self) -> WanClient:
        """Start the client now (it would start on first use anyway); leaving closes it."""
        self._check_open()
        if self._entered:
            msg = "this WanClient is already entered; enter it once"
            raise RuntimeError(msg)
        self._entered = True
        await self._group()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client and its HTTP session (unless the session was passed in). Idempotent.

        Pending waits fail with :class:`ClientClosedError`; running batches stop and report
        every item (submitted ones with their task ids). Submits whose request is on the wire
        are let finish first (bounded by ``timeouts``), so no created task goes unrecorded.
        Any task may close the client, whether or not it was opened with ``async with`` and
        whichever task opened it; none is cancelled by it, and when it returns no task of the
        client is left running.
        """
        if self._state is not _State.CLOSED:
            self._state = _State.CLOSED
            try:
                await self._shut_down()
            finally:
                self._release.set()
        # Shielded: a cancelled caller still leaves no task of the client behind.
        with anyio.CancelScope(shield=True):
            if self._runner is not None:
                await self._runner_done.wait()
            await self._transport_closed.wait()

    async def _shut_down(self) -> None:
        """Fail pending waits, stop batches and the poller, let submits on the wire finish."""
        self._poller.close()
        closed = ClientClosedError("the client was closed")
        for batch in list(self._batches):
            batch.stop(closed)
        for scope in list(self._services):
            scope.cancel()
        # Shielded: closing is also what a cancelled caller does on its way out.
        with anyio.CancelScope(shield=True):
            try:
                if self._services:
                    await self._idle.wait()
                if self._on_wire:
                    await self._wire_idle.wait()
                if self._fleet is not None:
                    # After the submits on the wire: the fleet learns of every task created.
                    await self._fleet.aclose()
            finally:
                await self._transport.aclose()
                self._transport_closed.set()

    def _start(self) -> None:
        """Start the client's own task (the poller, batches) on first use, in this loop."""
        self._check_open()
        if self._runner is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            msg = "WanClient is used from async code: call it from a running event loop"
            raise RuntimeError(msg) from None
        self._runner = loop.create_task(self._run(), name=CLIENT_TASK_NAME)

    async def _run(self) -> None:
        """The client's own task: its task group lives here, not in any caller's task, so
        that whichever task opened the client, any task may close it (and none is
        cancelled by that). Ends when :meth:`aclose` has stopped everything in it."""
        try:
            async with anyio.create_task_group() as task_group:
                await task_group.start(self._serve_poller, name=POLLER_TASK_NAME)
                if self._fleet is not None:
                    await task_group.start(self._serve_fleet, name=FLEET_TASK_NAME)
                self._task_group = task_group
                self._ready.set()
                await self._release.wait()
                task_group.cancel_scope.cancel()
        except Exception:
            logger.exception("the client's task failed; the client is closed")
        finally:
            self._task_group = None
            self._ready.set()
            if self._state is not _State.CLOSED:
                # Cancelled from outside (the event loop is shutting down, never closed):
                # fail the waits and close the session rather than leave them to warnings.
                self._state = _State.CLOSED
                with anyio.CancelScope(shield=True):
                    await self._shut_down()
            self._runner_done.set()

    async def _group(self) -> TaskGroup:
        """The running client's task group, once its poller is up."""
        self._start()
        await self._ready.wait()
        self._check_open()
        if self._task_group is None:
            raise ClientClosedError("the client was closed")
        return self._task_group

    async def _serve_poller(
        self, *, task_status: AnyioTaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The poller, in a scope of its own; a crash fails its handles, never the caller."""
        async with self._service():
            try:
                await self._poller.run(task_status=task_status)
            except Exception as exc:
                logger.exception("the poller failed; every pending task fails with its error")
                self._poller.close(exc)

    async def _serve_fleet(
        self, *, task_status: AnyioTaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The fleet's lease, writes and reads, in a scope of their own; a crash leaves the
        client alone (its own tasks are polled as without a store)."""
        assert self._fleet is not None
        async with self._service():
            try:
                await self._fleet.run(task_status=task_status)
            except Exception:
                logger.exception("the task store's service failed; this client goes on alone")

    @contextlib.asynccontextmanager
    async def _service(self) -> AsyncIterator[anyio.CancelScope]:
        """Run something in the client's task group, in its own cancel scope."""
        scope = anyio.CancelScope()
        self._services.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._services.discard(scope)
            if not self._services:
                self._idle.set()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            msg = "this WanClient is closed and cannot be reused; create a new one"
            raise ClientClosedError(msg)

    def _running(self) -> None:
        """Refuse a closed client; start an unstarted one (its poller picks up what comes)."""
        self._start()

    # -- the engine ---------------------------------------------------------------------

    async def submit(self, request: VideoRequest) -> TaskHandle:
        """Submit one task and return its handle at once; ``await handle`` for the video.

        Submits are bounded by ``max_concurrent_submits`` and draw on the request budget.

        Raises:
            SubmitOutcomeUnknown: the answer was lost; a task may exist (never resubmitted).
            WanError: the gateway refused the task (nothing was created).
        """
        return await self._submit(request)

    async def _submit(
        self, request: VideoRequest, *, hooks: SubmitHooks | None = None
    ) -> TaskHandle:
        self._running()
        async with self._submit_slots:
            created, _, sent_mono = await self._create(request, hooks)
        # No checkpoint since the answer came: the new task is tracked before any cancellation
        # can be delivered.
        handle = TaskHandle(created.task_id, request=request, clock=self.clock)
        key = duration_key(request.model, request.size, request.duration)
        created_at = created.created_at.timestamp() if created.created_at else None
        self._poller.track(handle, key=key, submitted=(sent_mono, created_at))
        if self._fleet is not None:
            # Shielded (bounded by the store's timeouts): once created, the fleet must know
            # who polls the task; a cancellation is delivered just below.
            with anyio.CancelScope(shield=True):
                await self._fleet.claim_new(
                    created.task_id, _not_started(created.task_id, created.created_at)
                )
        if hooks is None:  # a batch reports its items' task ids itself
            await _created_despite_cancel(created.task_id, tracked=True)
        return handle

    async def generate(self, request: VideoRequest, *, timeout: float | None = None) -> VideoResult:
        """Submit one task and wait for its video.

        Args:
            timeout: clock seconds to wait for the end; the task goes on after a timeout.

        Raises:
            TaskFailed: the task ended in FAILURE.
            TimeoutError: the timeout passed (the task goes on; attach to collect it).
            WanError: as :meth:`submit`.
        """
        check_seconds("timeout", timeout)  # before anything is billed
        handle = await self.submit(request)
        return await handle.wait(timeout)

    def attach(self, task_id: str) -> TaskHandle:
        """Track a task submitted earlier (elsewhere, or before a restart) by its id.

        Attaching to a task this client already tracks (or saw end recently) returns the
        same handle, at no request. With a task store, a task another live client of the
        fleet owns is followed from the store (no status check here); one that no live client
        owns is owned and polled by this one.

        Raises:
            ValueError: the id is not one path segment (empty, blank, ``.`` or ``..``).
        """
        self._running()
        _checked_task_id(task_id)
        existing = self._poller.get(task_id)
        if existing is None and self._fleet is not None:
            existing = self._fleet.following(task_id)
        if existing is not None:
            return existing
        handle = TaskHandle(task_id, request=None, clock=self.clock)
        if self._fleet is not None:
            self._fleet.attach(handle)
        else:
            self._poller.track(handle, key=None)
        return handle

    async def latest(self, task_id: str) -> TaskSnapshot | None:
        """The newest snapshot of a task known without asking the gateway: this client's,
        else (with a task store) the one its owner stored. None if neither knows the task.

        For a web backend's status endpoint: it costs no gateway request, whichever worker
        of the fleet submitted the task.

        Raises:
            ValueError: the id is not one path segment.
        """
        self._running()
        _checked_task_id(task_id)
        handle = self._poller.get(task_id)
        if handle is None and self._fleet is not None:
            handle = self._fleet.following(task_id)
        local = handle.snapshot if handle is not None else None
        if handle is not None and local is None and handle.request is not None:
            # Submitted here and not checked yet: it exists, and has not started.
            local = _not_started(task_id, None)
        if self._fleet is None or (local is not None and local.is_terminal):
            return local
        stored = await self._fleet.latest(task_id)
        known = [s for s in (local, stored) if s is not None]
        return max(known, key=snapshot_order) if known else None

    def add_status_listener(self, listener: StatusListener) -> None:
        """Call ``listener(handle, snapshot)`` on every status change the poller sees.

        The listener runs on the poller's own path: keep it quick and non-blocking (to do
        async work, hand the change to your own task, e.g. through an anyio memory stream).

        Raises:
            TypeError: ``listener`` is a coroutine function: nothing would await it.
        """
        if awaited_only(listener):
            msg = (
                f"status listeners are called, not awaited; {listener!r} is a coroutine "
                "function. Pass a plain function that hands the change to a task of yours "
                "(e.g. send it on an anyio memory object stream)"
            )
            raise TypeError(msg)
        self._poller.add_listener(listener)

    def remove_status_listener(self, listener: StatusListener) -> None:
        """Stop calling a listener added with :meth:`add_status_listener`."""
        self._poller.remove_listener(listener)

    def as_completed(
        self,
        requests: Iterable[VideoRequest],
        *,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        fail_fast: bool = False,
        journal: str | os.PathLike[str] | SharedJournal | None = None,
        download_dir: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        resubmit_unknown: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> OutcomeStream:
        """Run a batch and yield each item's :class:`Outcome` as it ends.

        Args:
            requests: the batch; each already validated (they are ``VideoRequest``).
            max_in_flight: a fixed limit on tasks submitted and not yet ended. By default the
                limit adapts to upstream's capacity as the poller observes it (a task beyond
                it would only sit queued, costing status checks), never above the client's
                ``max_in_flight``. The next item is submitted when a slot frees, so a huge
                batch never floods the gateway.
            timeout: clock seconds each item may wait for its task to end.
            deadline: clock seconds from now for the whole batch.
            fail_fast: stop the batch at the first failed item. Without it, one failure
                never stops the others (a rejected API key always stops the batch).
            journal: a file to record the batch in, one fsynced JSON line per event; running
                the same batch with the same journal resumes it without resubmitting
                anything (see :mod:`wan_async._journal`). Or a :class:`SharedJournal`, kept in
                the client's task store: several hosts may run the batch at once, each item
                is submitted by one of them, and each gets every outcome.
            download_dir: save each video there as soon as its task succeeds (as
                ``<index>-<task_id>.mp4``; a file already there is kept, so a resumed batch
                does not fetch it again); the outcome's ``path`` says where. The folder is
                created if needed, before anything is submitted.
            retry_failed: with ``journal``, submit again the items whose task an earlier
                run recorded as failed for upstream's own reasons (``TaskFailed.retryable``:
                ``InternalError``, ``Throttling``, timeouts), each as a new attempt recorded
                in the journal; failures of the request itself (content inspection, invalid
                parameters) come back from the journal as before. Each resubmit is a new,
                billed task.
            resubmit_unknown: with ``journal``, submit again the items whose submit's answer
                an earlier run lost (:class:`SubmitOutcomeUnknown`). Their first task may
                exist and be billed: this may pay twice for them. Say so to whoever decides.
            on_progress: a plain function, called with a :class:`BatchProgress` each time an
                item moves (sent, created, seen queued or running, saving, ended): counts
                from what the client knows, and an ETA from the durations and window it
                learned. It runs on the event loop: keep it quick (a progress bar's update).
                If it raises, the batch stops and the error is raised to the reader.
                ``OutcomeStream.progress()`` reads the same at any time.

        Every item yields exactly one outcome; items cut short by the deadline or a stop end
        with :class:`DeadlineExceeded` or :class:`BatchAborted`. Leaving the loop early stops
        the batch, also when the stream is kept in a variable; ``async with
        client.as_completed(...) as outcomes:`` makes that deterministic on any Python (see
        :class:`OutcomeStream`). The batch starts with the first iteration.
        """
        check_seconds("timeout", timeout)
        check_seconds("deadline", deadline)
        if (retry_failed or resubmit_unknown) and isinstance(journal, SharedJournal):
            msg = "retry_failed and resubmit_unknown do not work with a shared journal yet"
            raise ValueError(msg)
        if (retry_failed or resubmit_unknown) and journal is None:
            msg = (
                "retry_failed=True and resubmit_unknown=True act on what an earlier run "
                "recorded in its journal: pass journal= as well"
            )
            raise ValueError(msg)
        if max_in_flight is not None:
            check_count("max_in_flight", max_in_flight)
        check_progress_callback(on_progress)
        controls = Controls()
        outcomes = self._as_completed(
            controls,
            requests,
            max_in_flight=max_in_flight,
            timeout=timeout,
            deadline=deadline,
            fail_fast=fail_fast,
            journal=journal,
            download_dir=download_dir,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
            on_progress=on_progress,
        )
        stream = OutcomeStream(outcomes, controls)
        return stream

    async def _open_journal(
        self,
        journal: str | os.PathLike[str] | SharedJournal | None,
        items: list[VideoRequest],
    ) -> Journal | None:
        if journal is None:
            return None
        if not isinstance(journal, SharedJournal):
            return await Journal.open(journal, items)
        if self._fleet is None:
            msg = (
                f"the shared journal {journal.name!r} lives in the client's task store: "
                "create the client with store=RedisStore.from_url(...) (or set WAN_REDIS_URL)"
            )
            raise ConfigurationError(msg)
        return await StoreJournal.open_in(self._fleet.store, self._fleet.owner, journal, items)

    async def _as_completed(
        self,
        controls: Controls,
        requests: Iterable[VideoRequest],
        *,
        max_in_flight: int | None,
        timeout: float | None,
        deadline: float | None,
        fail_fast: bool,
        journal: str | os.PathLike[str] | SharedJournal | None,
        download_dir: str | os.PathLike[str] | None,
        retry_failed: bool,
        resubmit_unknown: bool,
        on_progress: ProgressCallback | None,
    ) -> AsyncGenerator[Outcome, None]:
        task_group = await self._group()
        items = _checked_requests(requests)
        save = await self._saver(download_dir) if download_dir is not None else None
        opened = await self._open_journal(journal, items)
        poller = self._poller
        cap = max_in_flight or self.max_in_flight
        admission = Admission(
            cap=cap,
            limit=None if max_in_flight else poller.window,
            outstanding=poller.in_flight,
        )
        batch = Batch(
            items,
            submit=self._submit,
            attach=self.attach,
            clock=self.clock,
            journal=opened,
            save=save,
            admission=admission,
            item_timeout=timeout,
            deadline=deadline,
            fail_fast=fail_fast,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
            outlook=poller,
            cap=cap,
            on_progress=on_progress,
        )
        self._batches.add(batch)
        controls.bind(batch.stop, batch.discard, batch.progress)
        task_group.start_soon(self._serve_batch, batch, admission, max_in_flight is None)
        # Closed explicitly, not left to the garbage collector, when the caller leaves.
        async with contextlib.aclosing(batch.outcomes()) as outcomes:
            async for outcome in outcomes:
                yield outcome

    async def _serve_batch(self, batch: Batch, admission: Admission, adaptive: bool) -> None:
        poller = self._poller
        poller.add_change_callback(admission.kick)
        poller.add_listener(batch.tracker.status_changed)
        window = poller.using_window() if adaptive else contextlib.nullcontext()
        async with self._service():
            try:
                with window:
                    await batch.run()
            finally:
                poller.remove_listener(batch.tracker.status_changed)
                poller.remove_change_callback(admission.kick)
                self._batches.discard(batch)

    async def _saver(self, folder: str | os.PathLike[str]) -> Save:
        """How a batch saves each video into ``folder`` (created now, before any submit)."""
        directory = pathlib.Path(folder)
        await anyio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))

        async def save(index: int, result: VideoResult) -> pathlib.Path:
            # Task ids are opaque: one with "/" or ".." must not leave the folder.
            target = directory / f"{index}-{_UNSAFE_IN_NAME.sub('_', result.task_id)}.mp4"
            if await anyio.to_thread.run_sync(target.exists):
                return target  # saved by an earlier run of the same batch
            return await self.download(result, target)

        return save

    @overload
    async def generate_many(
        self,
        requests: Iterable[VideoRequest],
        *,
        return_outcomes: Literal[False] = False,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        fail_fast: bool = False,
        journal: str | os.PathLike[str] | SharedJournal | None = None,
        download_dir: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        resubmit_unknown: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> list[VideoResult]: ...

    @overload
    async def generate_many(
        self,
        requests: Iterable[VideoRequest],
        *,
        return_outcomes: Literal[True],
        max_in_flight: int | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        fail_fast: bool = False,
        journal: str | os.PathLike[str] | SharedJournal | None = None,
        download_dir: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        resubmit_unknown: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> list[Outcome]: ...

    async def generate_many(
        self,
        requests: Iterable[VideoRequest],
        *,
        return_outcomes: bool = False,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        fail_fast: bool = False,
        journal: str | os.PathLike[str] | SharedJournal | None = None,
        download_dir: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        resubmit_unknown: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> list[VideoResult] | list[Outcome]:
        """Run a batch and return its results in input order.

        Args:
            return_outcomes: return one :class:`Outcome` per item instead of raising.
            max_in_flight, timeout, deadline, fail_fast, journal, download_dir,
                retry_failed, resubmit_unknown, on_progress: as for :meth:`as_completed`.

        Raises:
            WanError: without ``return_outcomes``, the first failed item's error (by input
                order), once every item has ended; pass ``return_outcomes=True`` to keep the
                videos that did succeed.
        """
        items = _checked_requests(requests)
        outcomes: list[Outcome | None] = [None] * len(items)
        async for outcome in self.as_completed(
            items,
            max_in_flight=max_in_flight,
            timeout=timeout,
            deadline=deadline,
            fail_fast=fail_fast,
            journal=journal,
            download_dir=download_dir,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
            on_progress=on_progress,
        ):
            outcomes[outcome.index] = outcome
        complete = [
            o
            if o is not None
            else Outcome(
                index=i, request=items[i], error=ClientClosedError("the client closed mid-batch")
            )
            for i, o in enumerate(outcomes)
        ]
        if return_outcomes:
            return complete
        return [o.unwrap() for o in complete]

    # -- low level ------------------------------------------------------------------------

    async def create_task(self, request: VideoRequest) -> TaskCreated:
        """Submit one task. Retried only while the task was certainly not created.

        Once its request may be on the wire, a submit is not cut off by cancellation: it
        waits for the answer (bounded by ``timeouts``), so a task it created is never lost
        unseen; the cancellation takes effect right after.

        Returns:
            The created task's id and status.

        Raises:
            SubmitOutcomeUnknown: the request was sent but its answer was lost; a task may
                exist and be billed. Never retried; its ``cause`` is the transport or API error.
            WanError: any other failure, in which case no task was created.
        """
        created, _, _ = await self._create(request, None)
        await _created_despite_cancel(created.task_id, tracked=False)
        return created

    async def _create(
        self, request: VideoRequest, hooks: SubmitHooks | None
    ) -> tuple[TaskCreated, float, float]:
        """Submit with retries; the created task, and when its (last) request was sent (Unix
        time, and the clock's monotonic reading)."""
        self._check_open()
        if not isinstance(request, VideoRequest):
            msg = f"create_task() takes a VideoRequest, got {type(request).__name__}"
            raise TypeError(msg)
        body = request_to_wire(request)
        sent_at = self.clock.time()
        sent_mono = self.clock.monotonic()

        async def once() -> TaskCreated:
            nonlocal sent_at, sent_mono
            if hooks is not None:
                hooks.may_send()
            # The last point where cancellation may stop the submit: nothing is sent yet.
            await anyio.lowlevel.checkpoint()
            with anyio.CancelScope(shield=True):
                sent_at = self.clock.time()
                sent_mono = self.clock.monotonic()
                if hooks is not None:
                    await hooks.sending(sent_at)
                try:
                    created = await self._post(body)
                except WanError as exc:
                    if hooks is not None:
                        await hooks.settled(sent_at, None, exc)
                    raise
                if hooks is not None:
                    await hooks.settled(sent_at, created.task_id, None)
            return created

        try:
            created = await self._with_retries(once, submit=True, what="submit")
        except WanError as exc:
            if exc.task_may_exist:
                raise SubmitOutcomeUnknown(
                    request=request, submitted_at=sent_at, cause=exc
                ) from exc
            raise
        return created, sent_at, sent_mono

    async def _post(self, body: object) -> TaskCreated:
        """One submit request (the caller shields it), counted while it may be on the wire."""
        self._on_wire += 1
        try:
            answer = await self._answered(self._transport.request("POST", SUBMIT_PATH, body=body))
            return _decoded(answer, SUBMIT_PATH, "POST", created_from_wire)
        finally:
            self._submits += 1
            self._on_wire -= 1
            if not self._on_wire:
                self._wire_idle.set()
                self._wire_idle = anyio.Event()

    async def get_task(self, task_id: str) -> TaskSnapshot:
        """Fetch a task's status as the gateway last refreshed it (retried when transient).

        Raises:
            TaskNotFound: the gateway knows no such task.
            WanError: the query failed.
        """
        return await self._with_retries(
            lambda: self._get_once(task_id), submit=False, what=f"status of {task_id}"
        )

    async def download(
        self,
        result: VideoResult | str,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        timeout: float | None = None,
    ) -> pathlib.Path:
        """Save a finished video to a file, streamed from the storage host.

        The URL is signed and on another host: it is fetched without the gateway's key, in
        chunks written to a temporary file beside the destination, which takes the
        destination's name only once complete (checked against ``Content-Length``, fsynced):
        the file is never seen half-written. Transient failures are retried with the client's
        ``retry`` policy, outside the gateway's request budget; at most
        ``max_concurrent_downloads`` run at once. Works with or without entering the client.

        Args:
            result: the finished task's result, or its video URL.
            path: the file to write; or an existing directory, to write ``<task_id>.mp4`` in
                (for a bare URL, the URL's file name).
            overwrite: replace an existing file (by default that is an error).
            timeout: clock seconds for the whole download, retries included.

        Returns:
            The path of the saved file.

        Raises:
            FileExistsError: the file exists and ``overwrite`` is false (checked before any
                request, and again by the final move).
            VideoURLExpired: the storage host refused the URL: URLs are valid for 24 h after
                the task finished; :meth:`get_task` may give a fresh one, else generate again.
            DeadlineExceeded: ``timeout`` passed; nothing was saved.
            WanError: the download failed for good (a transport error, an :class:`APIError`
                from the storage host, :class:`IncompleteDownload`); nothing was saved.
            ValueError: not an http(s) URL, or no safe file name for a directory.
        """
        self._check_open()
        check_seconds("timeout", timeout)
        return await download(
            result,
            path,
            transport=self._transport,
            policy=self._retry,
            clock=self.clock,
            rng=self._rng,
            slots=self._download_slots,
            overwrite=overwrite,
            timeout=timeout,
        )

    async def _get_once(self, task_id: str) -> TaskSnapshot:
        self._check_open()
        path = f"{SUBMIT_PATH}/{quote(_checked_task_id(task_id), safe='')}"
        answer = await self._answered(self._transport.request("GET", path))
        return _decoded(answer, path, "GET", snapshot_from_wire)

    async def _answered(self, request: Awaitable[Answer]) -> Answer:
        """Run one request and tell the budget and the window what its answer says.

        A rate limiter's 429 (the middleware's, a proxy's, any with ``Retry-After``, any on a
        status check) counts towards the share of limited answers that slows every request.
        The gateway's own task-shaped 429 on a submit (``fail_to_fetch_task``) says upstream
        is saturated, not that requests come too fast: it stops the window growing instead.
        A request that got no answer at all tells neither.
        """
        try:
            answer = await request
        except RateLimitedError as exc:
            saturated = (
                exc.method == "POST"
                and exc.code == "fail_to_fetch_task"
                and exc.retry_after is None
            )
            if saturated:
                self._poller.saturated()
            self._budget.answered(limited=not saturated)
            raise
        except APIError:
            self._budget.answered(limited=False)
            raise
        self._budget.answered(limited=False)
        return answer

    async def _with_retries(
        self, call: Callable[[], Awaitable[_T]], *, submit: bool, what: str
    ) -> _T:
        return await call_with_retries(
            call,
            policy=self._retry,
            clock=self.clock,
            rng=self._rng,
            submit=submit,
            before_attempt=lambda: self._budget.acquire("submit" if submit else "poll"),
            what=what,
        )


def _not_started(task_id: str, submitted: datetime | None) -> TaskSnapshot:
    """A task known to exist and not checked yet: what its submit said of it."""
    return TaskSnapshot(
        task_id=task_id,
        status=TaskStatus.NOT_START,
        raw_status=TaskStatus.NOT_START.value,
        submit_time=submitted,
    )


def _checked_requests(requests: Iterable[VideoRequest]) -> list[VideoRequest]:
    items = list(requests)
    for index, item in enumerate(items):
        if not isinstance(item, VideoRequest):
            msg = f"item {index} of the batch is a {type(item).__name__}, not a VideoRequest"
            raise TypeError(msg)
    return items


def _checked_task_id(task_id: object) -> str:
    """A task id fit to be the last segment of the status path.

    Any text is quoted into one segment (``/`` included), but ``.`` and ``..`` would be
    resolved away: ``attach("..")`` was sent as ``GET /v1/video/`` with the key.
    """
    if not isinstance(task_id, str) or not task_id.strip() or task_id in (".", ".."):
        msg = f"task_id must be a non-empty string and not '.' or '..', got {task_id!r}"
        raise ValueError(msg)
    return task_id


async def _created_despite_cancel(task_id: str, *, tracked: bool) -> None:
    """Deliver a cancellation that came while a submit was on the wire, saying which task
    the submit created (it exists, and is billed, although its caller is gone)."""
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()
    except anyio.get_cancelled_exc_class():
        logger.warning(
            "task %s was created although its caller was cancelled while the submit was on "
            "the wire; it runs and is billed: %s",
            task_id,
            "the client keeps checking it, attach(task_id) to collect it"
            if tracked
            else "attach(task_id) to collect it",
        )
        raise


#: Shows an answer's start, however deeply it nests.
_SNIPPET = reprlib.Repr()
_SNIPPET.maxlevel = 4
_SNIPPET.maxstring = 200


def _decoded(answer: Answer, path: str, method: str, parse: Callable[[object], _T]) -> _T:
    try:
        return parse(answer.body)
    except Exception as exc:  # whatever the server sent: RecursionError, OverflowError...
        raise DecodeError(
            method=method,
            path=path,
            status=answer.status,
            message=f"{type(exc).__name__}: {exc}"[:500],
            request_id=answer.request_id,
            snippet=_SNIPPET.repr(answer.body)[:200],
            task_may_exist=method == "POST",
            hint="the answer's JSON is not shaped like the API's",
        ) from None
