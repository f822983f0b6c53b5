"""The one shared poller: a single coroutine that checks every outstanding task of a client.

Tasks wait in a heap ordered by the time of their next check. The poller sleeps until the
earliest one is due or a new task arrives, takes a GET slot (``max_concurrent_polls``: a stalled
answer holds only its own), draws one request from the client's
:class:`~wan_async._ratelimit.RateBudget` (status checks have their own share of it), and sends
the most promising due task's GET in a task of its own. The answer updates the task's handle,
resolves it when the task has ended, or plans its next check.

When to check (see :mod:`wan_async._schedule`): at the first refresh of the gateway at which
the task may have ended, then at every refresh; with few tasks outstanding (status GETs are cheap
then) at every refresh from the submit on. Every answer is also evidence for three estimators,
which the plans and the batches' window read: the gateway's refresh loop and the clock offset
(:class:`~wan_async._refresh.RefreshEstimator`), how long work takes
(:class:`~wan_async._durations.DurationModel`) and how many tasks upstream runs for us
(:class:`~wan_async._window.WindowEstimator`). Nothing is assumed that they can learn: a plan
that needs the loop while nothing is known of it waits (*parked*) while one task finds it.

The heap is in the client's monotonic clock (``Clock.monotonic()``), so a step of the wall clock
never freezes or rushes the schedule; times stamped by the gateway or upstream are moved into it
with the learned offset.
"""

from __future__ import annotations

import contextlib
import heapq
import inspect
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterator

import anyio
import attrs
from anyio.abc import TaskStatus as AnyioTaskStatus

from ._clock import Clock
from ._durations import DurationKey, DurationModel
from ._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    PermissionDeniedError,
    RateLimitedError,
    StatusUnavailable,
    TaskFailed,
    TaskNotFound,
    UnexpectedRedirect,
    WanError,
)
from ._handle import TaskHandle
from ._models import TaskSnapshot, TaskStatus, VideoResult
from ._ratelimit import RateBudget
from ._refresh import RefreshEstimator
from ._schedule import PollPolicy, earliest_end
from ._window import WindowEstimator

logger = logging.getLogger("wan_async")

#: Errors of a status check that every other task's check would meet too.
_CLIENT_WIDE = (AuthenticationError, PermissionDeniedError, UnexpectedRedirect)

Fetch = Callable[[str], Awaitable[TaskSnapshot]]
StatusListener = Callable[[TaskHandle, TaskSnapshot], None]


@attrs.define(slots=True, eq=False)
class Watch:
    """The poller's private record of one outstanding task (times in the client's monotonic
    clock unless said otherwise)."""

    handle: TaskHandle
    key: DurationKey | None
    next_at: float
    #: When the submit was sent (for a task attached by id: its submit_time, once seen).
    submitted_at: float | None = None
    #: When the latest answer about it came back (the submit's, at first).
    seen_at: float = -math.inf
    #: Gateway time (``updated_at``) of the latest refresh seen.
    refreshed_at: float | None = None
    #: Gateway time: the earliest the task can have started, once seen running.
    started_at: float | None = None
    errors: int = 0
    #: When the current run of failed checks began.
    failing_since: float | None = None
    active: bool = True
    #: While due and waiting for the request budget (in the poller's ready heap): the
    #: sequence number of its entry there; else 0.
    queued: int = 0


@attrs.frozen(kw_only=True)
class PollerStats:
    """What the poller has done so far, and what it has learned of the gateway."""

    outstanding: int
    polls: int
    poll_errors: int
    rate_limited: int
    #: The gateway's refresh period as learned (None until known).
    refresh_period: float | None


class Poller:
    """Checks all outstanding tasks of one client from a single coroutine (:meth:`run`)."""

    def __init__(
        self,
        *,
        fetch: Fetch,
        budget: RateBudget,
        clock: Clock,
        policy: PollPolicy,
        rng: random.Random | None = None,
    ) -> None:
        self._fetch = fetch
        self._budget = budget
        self._clock = clock
        self._policy = policy
        self._rng = rng or random.Random()
        self._durations = DurationModel(policy)
        self._refresh = RefreshEstimator(hint=policy.refresh_period)
        self._generation = self._refresh.generation
        self._window = WindowEstimator(initial=_INITIAL_WINDOW, period=self._known_period)
        self._window_limit = self._window.limit
        self._window_users = 0
        #: (next check, sequence, watch), earliest first; entries whose time no longer matches
        #: the watch's are stale and skipped.
        self._heap: list[tuple[float, int, Watch]] = []
        #: Tasks already due: (order, due, sequence, watch), see _ready_key().
        self._ready: list[tuple[float, float, int, Watch]] = []
        #: Tasks whose plan waits for the refresh loop to be found.
        self._parked: dict[str, Watch] = {}
        self._watches: dict[str, Watch] = {}
        #: Called first on every status change seen (the fleet stores it).
        self.on_change: StatusListener | None = None
        #: Tasks attached by id and not answered about yet (resumed ones, mostly finished).
        self._unanswered: set[str] = set()
        #: Tasks submitted and never seen refreshed whose check is due or under way: while
        #: the window grows fast, it holds until they answer (see window()).
        self._first_due: set[str] = set()
        self._held = self._window.limit
        #: Due tasks seen running, by when they are expected to end (gateway time, as of when
        #: they became due), and those of them past it: their slot upstream is likely free.
        self._ends_due: list[tuple[float, int, Watch]] = []
        self._likely_ended: set[str] = set()
        #: Handles of recently ended tasks, oldest first: attaching to one costs no request.
        self._ended: OrderedDict[str, TaskHandle] = OrderedDict()
        self._seq = 0
        self._wakeup = anyio.Event()
        self._slots = anyio.Semaphore(policy.max_concurrent_polls)
        self._change_callbacks: list[Callable[[], None]] = []
        self._listeners: list[StatusListener] = []
        self._closed = False
        self._polls = 0
        self._poll_errors = 0
        self._rate_limited = 0
        #: The task whose check something other than the gateway refused (401/403/3xx).
        self._refused_task: str | None = None

    # -- public to the client ------------------------------------------------------------

    @property
    def stats(self) -> PollerStats:
        """Counters for tests, benchmarks and progress displays."""
        return PollerStats(
            outstanding=len(self._watches),
            polls=self._polls,
            poll_errors=self._poll_errors,
            rate_limited=self._rate_limited,
            refresh_period=self._refresh.period if self._refresh.known else None,
        )

    def get(self, task_id: str) -> TaskHandle | None:
        """The handle of a task this poller tracks, or saw end recently, if any."""
        watch = self._watches.get(task_id)
        if watch is not None:
            return watch.handle
        return self._ended.get(task_id)

    def add_listener(self, listener: StatusListener) -> None:
        """Call ``listener(handle, snapshot)`` whenever a tracked task's status changes."""
        self._listeners.append(listener)

    def remove_listener(self, listener: StatusListener) -> None:
        """Stop calling ``listener`` (a no-op if it was not added)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def track(
        self,
        handle: TaskHandle,
        *,
        key: DurationKey | None,
        submitted: tuple[float, float | None] | None = None,
    ) -> None:
        """Start tracking ``handle``: a task just submitted, or one attached by id.

        Args:
            key: the kind of task, for what is learned of durations.
            submitted: for a task just submitted, when its submit was sent (the client's
                monotonic clock) and the gateway's ``created_at`` (Unix seconds), if it said.

        A submitted task is first checked at the first refresh at which it may have ended
        (with few tasks outstanding, or while a batch's window is finding upstream's capacity:
        at its first refresh); an attached one at once, since nothing is known about it.
        """
        if self._closed:
            handle._fail(ClientClosedError(_CLOSED))
            return
        task_id = handle.task_id
        now = self._clock.monotonic()
        watch = Watch(handle=handle, key=key, next_at=now)
        handle._watch = watch
        self._watches[task_id] = watch
        if submitted is None:
            self._unanswered.add(task_id)
            self._push(watch)
            return
        sent, created = submitted
        watch.submitted_at = sent
        watch.seen_at = now
        self._refresh.observe_submit(task_id, sent=sent, received=now, created=created)
        self._window.submitted(task_id, at=sent - self._refresh.offset)
        self._window_moved()
        self._schedule(watch, self._plan(watch, TaskStatus.NOT_START, now))

    @contextlib.contextmanager
    def using_window(self) -> Iterator[None]:
        """Mark a batch that reads :meth:`window` as running (the poller then spends a check
        on each new task's first refresh while the window is still growing)."""
        self._window_users += 1
        try:
            yield
        finally:
            self._window_users -= 1

    def window(self) -> int:
        """How many tasks this client should keep outstanding to keep upstream busy.

        Learned from how many of this client's tasks upstream was seen running at once (see
        :class:`~wan_async._window.WindowEstimator`): a task that only waits upstream costs
        status checks, one too few leaves a slot idle.

        While the window grows fast, it does not grow on part of a round: once the first
        refresh of new tasks is due, it holds where it was until they have answered. A FIFO
        upstream shows the tasks that started first, and each start would grow the window
        before the ones that wait behind them are seen.
        """
        limit = self._window.limit
        if self._first_due and self._window.eager:
            return min(limit, self._held)
        return limit

    def typical_duration(self, key: DurationKey | None) -> float | None:
        """The learned median duration of a kind of task (seconds of upstream work); for
        ``None``, of an unknown kind. ``None`` until a task has been seen to end."""
        if self._durations.observed == 0:
            return None
        return self._durations.median(key)

    def expected_end(self, handle: TaskHandle) -> float | None:
        """When a tracked task is expected to end (the client's monotonic clock): its start
        upstream, else its submit, plus the learned median of its kind. ``None`` when the
        poller does not track it, knows neither time, or has learned no duration yet."""
        watch = self._watches.get(handle.task_id)
        median = self.typical_duration(watch.key) if watch is not None else None
        if watch is None or median is None:
            return None
        if watch.started_at is not None:
            return watch.started_at + self._refresh.offset + median
        if watch.submitted_at is not None:
            return watch.submitted_at + median
        return None

    def in_flight(self) -> int:
        """Outstanding tasks that hold a place in the window.

        Not counted: tasks attached by id and not answered about yet (a resumed batch's,
        mostly finished: the free slots are filled while they are checked), and tasks whose
        check is overdue (the request budget holds it back) although they have been running
        for longer than such tasks usually take (their slot upstream is likely free).
        """
        self._collect_due()  # the poller may wait for a slot, the due checks with it
        if self._ends_due:
            now = self._clock.monotonic() - self._refresh.offset
            while self._ends_due and self._ends_due[0][0] <= now:
                _, seq, watch = heapq.heappop(self._ends_due)
                if watch.active and watch.queued == seq:
                    self._likely_ended.add(watch.handle.task_id)
        return len(self._watches) - len(self._unanswered) - len(self._likely_ended)

    def saturated(self) -> None:
        """A submit was refused because upstream is saturated: the window stops growing."""
        self._window.saturated()
        self._window_moved()

    def _known_period(self) -> float:
        return self._refresh.period if self._refresh.known else 0.0

    def _window_moved(self) -> None:
        """Tell the batches when the window grew: a batch may send more now."""
        limit = self.window()
        if limit > self._window_limit:
            self._window_limit = limit
            self._notify()
        else:
            self._window_limit = limit

    def add_change_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a task ends or upstream's capacity is better known."""
        self._change_callbacks.append(callback)

    def remove_change_callback(self, callback: Callable[[], None]) -> None:
        """Stop calling a callback added with :meth:`add_change_callback` (no-op if absent)."""
        with contextlib.suppress(ValueError):
            self._change_callbacks.remove(callback)

    def _notify(self) -> None:
        for callback in list(self._change_callbacks):
            callback()

    def close(self, error: BaseException | None = None) -> None:
        """Stop tracking: every pending handle fails with ``error``, by default a
        :class:`ClientClosedError`."""
        self._closed = True
        watches, self._watches = self._watches, {}
        self._heap.clear()
        self._ready.clear()
        self._parked.clear()
        self._ends_due.clear()
        self._likely_ended.clear()
        self._first_due.clear()
        for watch in watches.values():
            watch.active = False
            watch.handle._resolve(None, error or ClientClosedError(_CLOSED))
        self._wakeup.set()
        self._notify()

    async def run(self, *, task_status: AnyioTaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The poller coroutine: runs until cancelled, each GET in a task of its own."""
        async with anyio.create_task_group() as checks:
            task_status.started()
            while True:
                await self._wait_until_due()
                await self._slots.acquire()
                try:
                    await self._budget.acquire("poll")
                    watch = self._pop_best_due()
                except BaseException:
                    self._slots.release()
                    raise
                if watch is None:
                    self._slots.release()
                else:
                    checks.start_soon(self._checked, watch)

    # -- the schedule -------------------------------------------------------------------

    def _schedule(self, watch: Watch, when: float | None) -> None:
        """Check ``watch`` at ``when``; or, for None, once the refresh loop is known."""
        if not watch.active:
            return
        self._dequeued(watch)
        if when is None:
            watch.next_at = math.inf
            self._parked[watch.handle.task_id] = watch
            return
        self._parked.pop(watch.handle.task_id, None)
        watch.next_at = when
        self._push(watch)

    def _push(self, watch: Watch) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (watch.next_at, self._seq, watch))
        self._wakeup.set()

    def _next_check(self, task_id: Hashable) -> float:
        """When ``task_id`` is next asked about: now while a check is under way, inf if it is
        not tracked or waits for the loop to be known."""
        watch = self._watches.get(task_id) if isinstance(task_id, str) else None
        if watch is None or not watch.active or task_id in self._parked:
            return math.inf
        if watch.next_at == math.inf:
            return -math.inf  # in flight
        return watch.next_at

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and (not heap[0][2].active or heap[0][0] != heap[0][2].next_at):
            heapq.heappop(heap)

    def _collect_due(self) -> None:
        """Move every task due now from the time heap to the ready heap (best first)."""
        now = self._clock.monotonic()
        heap, ready = self._heap, self._ready
        period = self._refresh.period
        while heap and heap[0][0] <= now:
            due, seq, watch = heapq.heappop(heap)
            if watch.active and due == watch.next_at:
                task_id = watch.handle.task_id
                if watch.refreshed_at is None and task_id not in self._unanswered:
                    # Its first refresh is believed past, its check maybe held back below.
                    if not self._first_due:
                        self._held = self._window.limit
                    self._first_due.add(task_id)
                later = self._refresh.not_before(
                    watch.handle.task_id, now=now, next_check=self._next_check
                )
                if later > now:
                    # The pass runs late for the tasks before this one: its refresh too.
                    watch.next_at = later
                    self._push(watch)
                    continue
                heapq.heappush(ready, (_ready_key(watch, due, period), due, seq, watch))
                watch.queued = seq
                if watch.started_at is not None and self._window_users:
                    end = watch.started_at + self._durations.median(watch.key)
                    heapq.heappush(self._ends_due, (end, seq, watch))

    async def _wait_until_due(self) -> None:
        while True:
            self._collect_due()
            if self._ready:
                return
            self._drop_stale_top()
            self._wakeup = anyio.Event()
            if not self._heap:
                await self._wakeup.wait()
                continue
            delay = (self._heap[0][0] - self._clock.monotonic()) / self._clock.scale
            with anyio.move_on_after(delay):
                await self._wakeup.wait()

    def _pop_best_due(self) -> Watch | None:
        """Among the tasks due now, take the one most likely to have ended."""
        self._collect_due()
        while self._ready:
            _, due, _, watch = heapq.heappop(self._ready)
            if watch.active and due == watch.next_at:
                watch.next_at = math.inf  # in flight: in no heap until the answer comes
                self._dequeued(watch)
                return watch
        return None

    def _answered(self, watch: Watch) -> None:
        """``watch``'s check is over (answered, failed, or the task ended): a window held for
        its answer may grow."""
        first_due = self._first_due
        if first_due:
            first_due.discard(watch.handle.task_id)
            if not first_due:
                self._window_moved()

    def _dequeued(self, watch: Watch) -> None:
        """``watch`` no longer waits among the due tasks (checked now, or ended)."""
        if watch.queued:
            watch.queued = 0
            self._likely_ended.discard(watch.handle.task_id)

    def _plan(self, watch: Watch, status: TaskStatus, now: float) -> float | None:
        """When to check an unfinished task next (monotonic clock); None: once the loop is
        known."""
        refresh = self._refresh
        offset = refresh.offset
        after = watch.seen_at
        few = len(self._watches) <= self._policy.every_refresh_up_to
        eager = self._window_users and self._window.eager and watch.refreshed_at is None
        if not (few or eager):
            earliest = earliest_end(
                status=status,
                submitted_at=watch.submitted_at,
                refreshed_at=None if watch.refreshed_at is None else watch.refreshed_at + offset,
                started_at=None if watch.started_at is None else watch.started_at + offset,
                shortest=self._durations.shortest(watch.key),
                period=refresh.period,
            )
            if earliest is not None:
                after = max(after, earliest)
        return refresh.ask_at(watch.handle.task_id, after=after, now=now)

    def _replan(self) -> None:
        """Plan again every waiting check: what durations to expect moved a lot.

        Plans are made from each task's latest answer, and only ever move a check earlier: a
        check already due, or planned for a refresh that may have passed, is never postponed.
        """
        now = self._clock.monotonic()
        for watch in list(self._watches.values()):
            if watch.active and (watch.next_at != math.inf or watch.handle.task_id in self._parked):
                when = self._plan(watch, watch.handle.status, now)
                if when is not None and when < watch.next_at:
                    self._schedule(watch, when)

    def _unpark(self) -> None:
        """The refresh loop is better known: plan the checks that waited for it."""
        if self._generation == self._refresh.generation:
            return
        self._generation = self._refresh.generation
        now = self._clock.monotonic()
        for watch in list(self._parked.values()):
            if watch.active:
                when = self._plan(watch, watch.handle.status, now)
                if when is not None:
                    self._schedule(watch, when)
            else:
                self._parked.pop(watch.handle.task_id, None)

    # -- the checks ---------------------------------------------------------------------

    async def _checked(self, watch: Watch) -> None:
        try:
            if watch.active:
                await self._check(watch)
        except Exception as exc:  # a bug must fail one handle, not the poller
            logger.exception("checking %s failed unexpectedly", watch.handle.task_id)
            self._finish(watch, None, exc)
        finally:
            self._answered(watch)
            self._slots.release()

    async def _check(self, watch: Watch) -> None:
        task_id = watch.handle.task_id
        self._polls += 1
        sent = self._clock.monotonic()
        try:
            snapshot = await self._fetch(task_id)
        except ClientClosedError:
            return
        except RateLimitedError as exc:
            # Not the task's fault: the budget hears of it (from the client) and slows down if
            # such answers grow common; this task keeps its place, a little later.
            self._rate_limited += 1
            first, longest = self._backoff()
            wait = max(min(exc.retry_after or 0.0, longest), first)  # never a day's pause
            logger.debug("poll of %s rate-limited; next in %.2fs", task_id, wait)
            self._reschedule(watch, self._clock.monotonic() + wait)
        except _CLIENT_WIDE as exc:
            self._poll_errors += 1
            if watch.active:  # else: failed already, with the checks that were under way
                self._refused(watch, exc)
        except (TaskNotFound, BadRequestError) as exc:
            # This query is refused as it stands: asking again cannot change the answer.
            self._poll_errors += 1
            self._finish(watch, None, exc)
        except WanError as exc:
            self._poll_errors += 1
            self._failed_transiently(watch, exc)
        else:
            if not watch.active:
                return  # failed meanwhile with the rest (a rejected key), or closed
            watch.errors = 0
            watch.failing_since = None
            self._apply(watch, snapshot, sent)

    def _backoff(self) -> tuple[float, float]:
        """The first and longest wait after a failed GET: the policy's, else an eighth of a
        refresh period doubling up to sixteen periods (in units of the user's patience while
        the period is unknown)."""
        if self._policy.error_backoff is not None:
            return self._policy.error_backoff
        if self._refresh.known and self._refresh.period > 0:
            period = self._refresh.period
            return period / 8, 16 * period
        patience = self._policy.give_up_after
        return patience / 600, patience / 10

    def _failed_transiently(self, watch: Watch, error: WanError) -> None:
        """Check again after a back-off, until the failures have lasted ``give_up_after``."""
        task_id = watch.handle.task_id
        now = self._clock.monotonic()
        if watch.failing_since is None:
            watch.failing_since = now
        failing_for = now - watch.failing_since
        if failing_for >= self._policy.give_up_after:
            logger.warning(
                "giving up on the status of %s after %.0fs of failures: %s",
                task_id,
                failing_for,
                error,
            )
            unavailable = StatusUnavailable(task_id=task_id, failing_for=failing_for, cause=error)
            self._finish(watch, None, unavailable)
            return
        watch.errors += 1
        first, longest = self._backoff()
        wait = min(longest, first * 2 ** (watch.errors - 1)) * (0.5 + self._rng.random())
        logger.debug("poll of %s failed (%s); retrying in %.2fs", task_id, error, wait)
        self._reschedule(watch, now + wait)

    def _refused(self, watch: Watch, error: APIError) -> None:
        """A 401, 403 or 3xx answered this task's check.

        The gateway's own 401/403 (its JSON, naming why) refuses the key: every other check
        would be refused too. An answer that is not the gateway's (a WAF's HTML 403 for one
        odd id, a redirect) may concern this query alone: it fails this task only, until a
        second task gets one too, which shows it is the client's.
        """
        task_id = watch.handle.task_id
        own = error.code is not None or error.message is not None
        if not isinstance(error, UnexpectedRedirect) and own:
            self._fail_all(error)
            return
        first = self._refused_task
        if first is not None and first != task_id:
            self._fail_all(error)
            return
        self._refused_task = task_id
        logger.warning(
            "the status check of %s was refused by something that is not the gateway (%s); "
            "failing that task only, unless another task's check is refused too",
            task_id,
            error,
        )
        self._finish(watch, None, error)

    def _fail_all(self, error: WanError) -> None:
        """Fail every tracked task with ``error``, which no task's check can get past."""
        watches = list(self._watches.values())
        logger.error(
            "status checks are refused for every task (%s); failing the %d tracked task%s",
            error,
            len(watches),
            "" if len(watches) == 1 else "s",
        )
        for watch in watches:
            self._finish(watch, None, error)

    def _reschedule(self, watch: Watch, when: float | None) -> None:
        if watch.active:
            self._schedule(watch, when)

    def _apply(self, watch: Watch, snapshot: TaskSnapshot, sent: float) -> None:
        handle = watch.handle
        task_id = handle.task_id
        previous = handle.snapshot
        handle._update(snapshot)
        received = self._clock.monotonic()
        refresh = self._refresh
        # A task never refreshed carries its insert time in updated_at, not a refresh time.
        stamp = (
            snapshot.updated_at.timestamp()
            if snapshot.updated_at and snapshot.status is not TaskStatus.NOT_START
            else None
        )
        fresh = stamp is not None and stamp != watch.refreshed_at
        refresh.observe(task_id, sent=sent, received=received, stamp=stamp)
        if fresh:
            self._pull_followers(task_id, received)
        watch.seen_at = received
        self._unanswered.discard(task_id)
        if stamp is not None:
            watch.refreshed_at = stamp
        if watch.submitted_at is None and snapshot.submit_time is not None:
            watch.submitted_at = snapshot.submit_time.timestamp() + refresh.offset
        if watch.started_at is None and (snapshot.upstream_start or snapshot.start_time):
            watch.started_at = _earliest_start(snapshot, refresh.period)
        if previous is None or previous.raw_status != snapshot.raw_status:
            logger.debug("task %s is %s", task_id, snapshot.raw_status)
            if self.on_change is not None:
                self.on_change(handle, snapshot)
            self.tell(handle, snapshot)
        if snapshot.is_terminal:
            self._learn(watch, snapshot)
            try:
                result = snapshot.result()
            except TaskFailed as exc:
                self._finish(watch, None, exc)
            else:
                self._finish(watch, result, None)
            self._unpark()
            return
        at = stamp if stamp is not None else received - refresh.offset
        self._window.seen(task_id, at=at, started=watch.started_at)
        self._window_moved()
        self._unpark()
        self._reschedule(watch, self._plan(watch, snapshot.status, received))

    def tell(self, handle: TaskHandle, snapshot: TaskSnapshot) -> None:
        """Call the status listeners: ``handle``'s status changed to ``snapshot``'s (seen
        here, or read from the task store)."""
        for listener in list(self._listeners):
            try:
                returned: object = listener(handle, snapshot)
                if inspect.isawaitable(returned):
                    # A coroutine nothing awaits: close it, and say so once per listener.
                    if inspect.iscoroutine(returned):
                        returned.close()
                    self.remove_listener(listener)
                    logger.error(
                        "status listener %r returned an awaitable, which is never awaited;"
                        " it is removed (listeners must be plain functions)",
                        listener,
                    )
            except Exception:
                # A listener's bug must not stop the poller every other task depends on.
                logger.exception("status listener %r failed; the poller goes on", listener)

    def _pull_followers(self, task_id: str, now: float) -> None:
        """``task_id`` was just seen refreshed in a new pass: the check of the next task after
        it in the pass that is planned for this pass (within the lag the forecasts allow) goes
        at once, a pass step after this one's refresh.
        """
        refresh = self._refresh
        soon = now + refresh.resolution * refresh.period
        for key, when, aimed in refresh.followers(task_id):
            watch = self._watches.get(key) if isinstance(key, str) else None
            if watch is None or not watch.active or not watch.next_at <= min(soon, aimed):
                continue  # not asked about in this pass: the next one may be
            if max(now, when) < watch.next_at:
                refresh.pulled(key)
                self._schedule(watch, max(now, when))
            # Its own answer moves the ones after it: each check is moved by the one just
            # before it in the pass, not again by every task before that.
            break

    def _learn(self, watch: Watch, snapshot: TaskSnapshot) -> None:
        """What an ended task teaches: how long work takes, how many of ours ran at once."""
        start, end = snapshot.upstream_start, snapshot.upstream_end
        started = start.timestamp() if start else watch.started_at
        ended = (
            end.timestamp()
            if end
            else (snapshot.finish_time.timestamp() if snapshot.finish_time else None)
        )
        if ended is not None:
            self._window.ended(watch.handle.task_id, started=started, ended=ended)
            self._window_moved()
        if snapshot.status is not TaskStatus.SUCCESS:
            return  # failures end early: they say nothing about how long work takes
        if start and end:
            took = (end - start).total_seconds()
        elif snapshot.start_time and snapshot.finish_time:
            # Refresh stamps, each up to a period late: count the span a half period short.
            span = (snapshot.finish_time - snapshot.start_time).total_seconds()
            took = span - self._refresh.period / 2
        else:
            return
        if self._durations.observe(watch.key, took):
            self._replan()

    def _finish(
        self, watch: Watch, result: VideoResult | None, error: BaseException | None
    ) -> None:
        if not watch.active:
            return
        watch.active = False
        task_id = watch.handle.task_id
        self._watches.pop(task_id, None)
        self._parked.pop(task_id, None)
        self._unanswered.discard(task_id)
        self._dequeued(watch)
        self._answered(watch)
        if error is None or isinstance(error, TaskFailed):
            # Ended upstream for good: attach() answers from memory. Any other error is this
            # client's trouble, and a later attach() should ask again.
            self._ended[task_id] = watch.handle
            if len(self._ended) > _ENDED_KEPT:
                self._ended.popitem(last=False)
        self._refresh.forget(task_id)
        # The task may have been the one searching the loop: another takes over.
        self._unpark()
        self._window.forget(task_id)  # no-op after an end it has learned from
        watch.handle._resolve(result, error)
        self._notify()


def _earliest_start(snapshot: TaskSnapshot, period: float) -> float:
    """The earliest the task can have started: upstream's own time, else a period before the
    refresh that first saw it running."""
    if snapshot.upstream_start is not None:
        return snapshot.upstream_start.timestamp()
    assert snapshot.start_time is not None
    return snapshot.start_time.timestamp() - period


def _ready_key(watch: Watch, due: float, period: float) -> float:
    """Order of the tasks due at once, smallest first: the earliest due, with a head start
    of up to two refresh periods for the tasks most likely to have ended (seen running).

    A head start and not a rank: a task that has waited longer than it always comes first,
    so none starves when the request budget cannot serve every due task (a task whose last
    check failed included).
    """
    head_start = 2 if watch.started_at is not None else 1
    return due - head_start * period


#: Tasks a client keeps outstanding before anything is known of upstream's capacity.
_INITIAL_WINDOW = 8
#: How many ended tasks' handles are kept for attach() (a few hundred bytes each).
_ENDED_KEPT = 4096
_CLOSED = "the client was closed before the task ended; attach to its id from a new client"
