"""FakeGateway: the gateway of SPEC.md, its upstream and its object storage, on loopback.

Three layers, as in production:

- the *gateway* answers submits and GETs. GETs read its database only; a background loop
  refreshes unfinished tasks from upstream (SPEC §3.2): all at once every ``tick``, or one
  after another with a cost per task (``refresh="sequential"``);
- *upstream* runs a few tasks at a time per account (:mod:`._upstream`);
- the *object storage*, on a second port, serves the finished videos (:mod:`._storage`).

All simulated time is read from one :class:`~wan_async._clock.Clock`, so a shared
:class:`~wan_async._clock.ScaledClock` runs a day of gateway time in minutes.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import ipaddress
import json
import math
import random
import string
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import anyio
from aiohttp import web

from .._clock import Clock, SystemClock
from .._exceptions import ValidationError
from .._models import VideoRequest
from .._rules import MODEL_RULES
from . import _upstream as up
from ._bucket import TokenBucket
from ._checks import (
    check_choice,
    check_delay_range,
    check_port,
    check_probability,
    check_schedule,
    non_negative,
    non_negative_int,
    positive,
    positive_int,
)
from ._faults import AFTER_UPSTREAM_CODES, Fault, FaultChoice, FaultPlan, RequestKind, Target
from ._refresh import SequentialPasses, StepSchedule
from ._stats import GatewayStats, RefreshPass, TaskFinish, TaskInfo
from ._storage import Signer, VideoStore
from ._view import FailReasonStyle, GatewayTask, UrlField, ViewStyle, submit_json
from ._wire import (
    LOGIN_PATH,
    REQUEST_ID_HEADER,
    abort,
    bad_gateway_html,
    forbidden_html,
    json_response,
    login_page,
    middleware_error,
    not_json_page,
    redirect_to_login,
    retry_after_value,
    task_error,
    too_many_requests_html,
    truncated,
    unix,
    upstream_error,
)

TaskIdStyle = Literal["task", "uuid"]
#: How a down gateway looks: connections refused, or nginx's 502 page for every request.
DownMode = Literal["refuse", "bad_gateway"]
KeyState = Literal["active", "revoked", "forbidden"]
#: How the refresh loop walks the unfinished tasks (see ``FakeGateway``).
RefreshModel = Literal["tick", "sequential"]
_Reply = tuple[web.StreamResponse, str]

_SUBMIT_PATH = "/v1/video/generations"
_ALNUM = string.ascii_letters + string.digits
# How long closing waits for requests in flight (a SLOW fault) before cancelling them.
_SHUTDOWN_TIMEOUT = 1.0
#: The per-key request limiter's message (a middleware error, not upstream's).
_KEY_RATE_LIMITED = "Too many requests for this key, please try again later"
_THROTTLED = upstream_error(
    "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."
)
_UNAVAILABLE = upstream_error(
    "ServiceUnavailable", "The service is temporarily unavailable, please try again later."
)
_DO_REQUEST_FAILED = (
    'do request failed: Post "https://dashscope.aliyuncs.com/api/v1/services/aigc/'
    'video-generation/video-synthesis": read tcp: connection reset by peer'
)
# What the gateway says when it fails after upstream accepted the task (SPEC §2).
_AFTER_UPSTREAM_MESSAGES: Mapping[str, str] = {
    "do_request_failed": (
        'do request failed: Post "https://dashscope.aliyuncs.com/api/v1/services/aigc/'
        'video-generation/video-synthesis": context deadline exceeded '
        "(Client.Timeout exceeded while awaiting headers)"
    ),
    "read_response_body_failed": "unexpected EOF",
    "unmarshal_response_body_failed": "unexpected end of JSON input",
    "invalid_response": "upstream returned no task_id",
    "insert_task_failed": "Error 1205 (HY000): Lock wait timeout exceeded; try restarting "
    "transaction",
}
_KEY_FORBIDDEN = "Your IP is not in the list of addresses this token may be used from"
# Parameters upstream accepts, by where they sit in the submitted body (SPEC §2).
_INPUT_KEYS = ("negative_prompt", "audio_url")
_PARAMETER_KEYS = (
    "size",
    "duration",
    "prompt_extend",
    "watermark",
    "seed",
    "audio",
    "shot_type",
)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class FakeGateway:
    """A faithful simulator of the gateway, served over real HTTP on loopback.

    Use it as ``async with FakeGateway(...) as gw:`` and point a client at ``gw.base_url``
    with ``gw.api_key``; or call :meth:`start` and :meth:`aclose`. It runs on the current
    asyncio loop. Every time below is in seconds of ``clock``, except ``slow_delay`` (real).

    Args:
        api_key: the one key accepted as ``Authorization: Bearer <api_key>``.
        host: interface to listen on; loopback only unless ``allow_remote``.
        port: gateway port (0: any free port).
        storage_port: object storage port (0: any free port).
        allow_remote: permit a non-loopback ``host``.
        clock: the clock of all simulated time (default: the system clock).
        tick: the refresh loop's period (``"tick"``) or sleep between passes
            (``"sequential"``), SPEC §3.2: 15 s in the gateway's default build, 3 s seen.
        refresh: how the loop walks the unfinished tasks. ``"tick"`` (the default): every
            ``tick``, on a fixed schedule, one pass refreshes them all at the same instant.
            ``"sequential"``, as the real gateway: the loop sleeps ``tick``, then refreshes
            the unfinished tasks of all tenants one after another, ``refresh_cost`` apart,
            stamping each as it stores it, then sleeps again. Each task then has its own phase
            (its place in the pass) and is refreshed every ``tick`` + pass length seconds,
            which grows with the unfinished tasks on the gateway. Its schedule is exact: a
            request sees every refresh due by the clock's reading when it arrives, however
            late the event loop runs (with a clock that never moves by itself, a request or
            :meth:`task` runs the refreshes due).
        refresh_cost: seconds one task's refresh takes in a ``"sequential"`` pass (its
            upstream query), e.g. 0.05; 0 refreshes a whole pass at one instant.
        first_refresh: clock seconds from :meth:`start` (and :meth:`come_back`) to the first
            pass (default: ``tick``). Any fraction: the passes need not fall on whole seconds,
            and ``updated_at``, in whole seconds, hides the sub-second phase.
        other_tenants: unfinished tasks of other users on the same gateway: a count, or a
            schedule ``[(seconds_from_start, count), ...]``. Every pass walks them before ours
            (their rows are older), so in ``"sequential"`` mode they lengthen the pass; they
            count against ``max_refresh_per_tick``; our key never sees them, and they take no
            upstream slot of ours. See :meth:`set_other_tenants`.
        max_refresh_per_tick: tasks refreshed per pass at most (the operator's
            ``TASK_QUERY_LIMIT``); ours beyond it wait their turn, in rotation.
        slots: tasks upstream runs at once; the rest wait PENDING.
        capacity: changes of ``slots`` over time: ``[(seconds_from_start, slots), ...]``
            (0 slots: upstream starts nothing). Running tasks always finish; a cut retires
            slots as they free. See :meth:`set_slots`.
        start_delay: ``(low, high)`` seconds upstream waits before starting a task, drawn
            uniformly per task, even when a slot is free: the task shows QUEUED meanwhile.
        queue: ``"fifo"`` or ``"shared"`` (other tenants take freed slots for a while).
        shared_delay: ``(low, high)`` delay before a freed slot comes back, for ``"shared"``.
        seed: seed of every random draw (processing times, failures, ids, chaos).
        processing_time: ``f(body, rng) -> seconds`` of upstream work per task (default:
            :func:`default_processing_time`).
        processing_spread: the lognormal sigma of the default processing time, for one size
            and duration (0 makes every task of a kind take the median).
        failure_rate: fraction of tasks upstream fails with ``InternalError``. Prompts
            containing ``"[fail]"`` always fail with ``DataInspectionFailed``.
        fail_reason_style: ``"short"`` (``fail_reason`` is ``"task failed"``) or ``"full"``.
        url_field: where a success puts the video URL: ``"fail_reason"`` (and
            ``output.video_url``), ``"result_url"`` (also ``result_url``), or ``"output"``
            (``output.video_url`` only).
        video_bytes: ``None`` (the default): every video is the bundled clip, a real, playable
            2 s MP4 (:func:`~wan_async.testing.sample_video`); an integer: every task's video
            is that many deterministic bytes of its own (not playable), for large downloads.
        url_ttl: how long a video URL works after the task finished upstream.
        task_id_style: ``"task"`` (``task_`` + 32 alphanumerics) or ``"uuid"``.
        task_ttl: tasks still unfinished this long after submit are failed by the gateway.
        models: models with a channel; others get 503 ``model_not_found``.
        forbidden_models: models this key may not use (403).
        quota: tasks the account may create in all (``None``: unlimited).
        rate_limit: requests (submits and GETs) per second per key (``None``: unlimited);
            beyond it the middleware answers 429 in its ``{"error": ...}`` shape.
        rate_burst: bucket size of ``rate_limit`` (default: ``max(1, rate_limit)``).
        fault_rates: probability of each :class:`Fault` per applicable request.
        slow_delay: real seconds a ``SLOW`` answer waits (unless injected with ``delay``).
        retry_after: seconds in ``RATE_LIMIT_RETRY_AFTER``'s header (unless injected).
    """

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        host: str = "127.0.0.1",
        port: int = 0,
        storage_port: int = 0,
        allow_remote: bool = False,
        clock: Clock | None = None,
        tick: float = 15.0,
        refresh: RefreshModel = "tick",
        refresh_cost: float = 0.0,
        first_refresh: float | None = None,
        other_tenants: int | Sequence[tuple[float, int]] = 0,
        max_refresh_per_tick: int = 1000,
        slots: int = 4,
        capacity: Sequence[tuple[float, int]] = (),
        start_delay: tuple[float, float] = (0.0, 0.0),
        queue: up.QueuePolicy = "fifo",
        shared_delay: tuple[float, float] = (0.0, 60.0),
        seed: int = 0,
        processing_time: up.ProcessingTime | None = None,
        processing_spread: float = 0.3,
        failure_rate: float = 0.0,
        fail_reason_style: FailReasonStyle = "short",
        url_field: UrlField = "fail_reason",
        video_bytes: int | None = None,
        url_ttl: float = 86400.0,
        task_id_style: TaskIdStyle = "task",
        task_ttl: float = 86400.0,
        models: Collection[str] = tuple(MODEL_RULES),
        forbidden_models: Collection[str] = (),
        quota: int | None = None,
        rate_limit: float | None = None,
        rate_burst: float | None = None,
        fault_rates: Mapping[Fault, float] | None = None,
        slow_delay: float = 1.0,
        retry_after: float = 1.0,
    ) -> None:
        if not isinstance(api_key, str) or not api_key:
            msg = f"api_key must be a non-empty string, got {api_key!r}"
            raise ValueError(msg)
        if not allow_remote and not is_loopback_host(host):
            msg = f"host {host!r} is not a loopback address; pass allow_remote=True to expose it"
            raise ValueError(msg)
        check_port("port", port)
        check_port("storage_port", storage_port)
        check_choice("queue", queue, ("fifo", "shared"))
        check_choice("fail_reason_style", fail_reason_style, ("short", "full"))
        check_choice("url_field", url_field, ("fail_reason", "result_url", "output"))
        check_choice("task_id_style", task_id_style, ("task", "uuid"))
        check_delay_range(shared_delay)
        check_delay_range(start_delay, "start_delay")
        check_choice("refresh", refresh, ("tick", "sequential"))
        check_probability("failure_rate", failure_rate)
        if isinstance(seed, bool) or not isinstance(seed, int):
            msg = f"seed must be an integer, got {seed!r}"
            raise TypeError(msg)

        self.api_key = api_key
        #: Keys of other accounts (key -> account name), see add_account().
        self._other_accounts: dict[str, str] = {}
        self._host = host
        self._port = port
        self._storage_port = storage_port
        self._clock: Clock = SystemClock() if clock is None else clock
        self._tick = positive("tick", tick)
        self._refresh_model: RefreshModel = refresh
        self._refresh_cost = non_negative("refresh_cost", refresh_cost)
        if refresh == "tick" and self._refresh_cost > 0:
            msg = 'refresh_cost needs refresh="sequential" (a "tick" pass takes no time)'
            raise ValueError(msg)
        self._first_refresh = (
            self._tick if first_refresh is None else non_negative("first_refresh", first_refresh)
        )
        if isinstance(other_tenants, int):  # non_negative_int refuses a bool
            self._tenants = StepSchedule(non_negative_int("other_tenants", other_tenants))
            self._tenants_plan: list[tuple[float, int]] = []
        else:
            self._tenants = StepSchedule(0)
            self._tenants_plan = check_schedule("other_tenants", other_tenants, 0)
        self._capacity_plan = check_schedule("capacity", capacity, 0)
        self._passes: SequentialPasses[GatewayTask] = SequentialPasses(
            sleep=self._tick, cost=self._refresh_cost
        )
        self._max_refresh = positive_int("max_refresh_per_tick", max_refresh_per_tick)
        if not (isinstance(processing_spread, (int, float)) and processing_spread >= 0):
            msg = f"processing_spread must be a number >= 0, got {processing_spread!r}"
            raise ValueError(msg)
        self._processing_time = processing_time or functools.partial(
            up.default_processing_time, sigma=float(processing_spread)
        )
        self._failure_rate = float(failure_rate)
        self._style = ViewStyle(url_field=url_field, fail_reason_style=fail_reason_style)
        self._video_bytes = (
            None if video_bytes is None else non_negative_int("video_bytes", video_bytes)
        )
        self._url_ttl = positive("url_ttl", url_ttl)
        self._task_id_style = task_id_style
        self._task_ttl = positive("task_ttl", task_ttl)
        self._models = frozenset(models)
        self._forbidden = frozenset(forbidden_models)
        self._quota = None if quota is None else non_negative_int("quota", quota)
        self._bucket = _make_bucket(rate_limit, rate_burst, self._clock)

        # Separate streams, so that e.g. chaos or the number of GETs never shifts the
        # processing times drawn for a given seed.
        self._rng = random.Random(f"{seed}:upstream")
        self._id_rng = random.Random(f"{seed}:task-ids")
        self._rid_rng = random.Random(f"{seed}:request-ids")
        self._upstream = up.Upstream(
            slots=positive_int("slots", slots),
            queue=queue,
            shared_delay=(float(shared_delay[0]), float(shared_delay[1])),
            rng=random.Random(f"{seed}:shared-queue"),
            start_delay=(float(start_delay[0]), float(start_delay[1])),
            delay_rng=random.Random(f"{seed}:start-delay"),
        )
        self._faults = FaultPlan(
            rates=fault_rates or {},
            rng=random.Random(f"{seed}:chaos"),
            slow_delay=slow_delay,
            retry_after=retry_after,
        )
        self._signer = Signer(hashlib.sha256(f"fake-oss-secret:{seed}".encode()).digest())
        self._store = VideoStore(
            clock=self._clock,
            signer=self._signer,
            video_bytes=self._video_bytes,
            produced_at=self._video_produced_at,
        )

        #: Counters of everything the simulator served.
        self.stats = GatewayStats()
        self._tasks: dict[str, GatewayTask] = {}
        # Unfinished tasks in submission order: what the refresh loop walks.
        self._unfinished: dict[str, GatewayTask] = {}
        self._cursor = 0
        self._last_now = -math.inf
        self._state: Literal["new", "running", "closed"] = "new"
        # Tasks upstream accepted that the gateway never stored (an error after upstream).
        self._unrecorded: dict[str, GatewayTask] = {}
        self._key_state: KeyState = "active"
        self._down: DownMode | None = None
        self._runners: list[web.AppRunner] = []
        self._gateway_runner: web.AppRunner | None = None
        self._gateway_site: web.TCPSite | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._started_at: float | None = None
        self._base_url: str | None = None
        self._storage_url: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind both sites and start the refresh loop on the running asyncio loop.

        Raises:
            RuntimeError: already started, or closed (a closed gateway cannot restart).
        """
        if self._state != "new":
            msg = f"FakeGateway is {self._state}; create a new one to start again"
            raise RuntimeError(msg)
        self._state = "running"
        try:
            _, _, storage_port = await self._serve(self._storage_app(), self._storage_port)
            self._storage_url = self._url(storage_port)
            runner, site, port = await self._serve(self._gateway_app(), self._port)
            self._gateway_runner, self._gateway_site = runner, site
            self._port = port
            self._base_url = self._url(port)
        except BaseException:
            await self.aclose()
            raise
        self._started_at = now = self._now()
        for offset, slots in self._capacity_plan:
            self._upstream.schedule_slots(slots, now + offset)
        for offset, count in self._tenants_plan:
            self._tenants.change(now + offset, count)
        self._start_refresher(now)

    async def aclose(self) -> None:
        """Stop the refresh loop and close both sites. Safe to call more than once."""
        if self._state == "closed":
            return
        self._state = "closed"
        try:
            await self._stop_refresher()
        finally:
            runners, self._runners = self._runners, []
            for runner in reversed(runners):
                await runner.cleanup()

    def _start_refresher(self, now: float) -> None:
        """Start the refresh loop afresh at ``now``: its first pass ``first_refresh`` later."""
        if self._refresh_model == "sequential":
            self._passes.restart(now + self._first_refresh)
            loop = self._sequential_loop()
        else:
            loop = self._refresh_loop()
        self._refresher = asyncio.create_task(loop, name="FakeGateway refresh")

    async def _stop_refresher(self) -> None:
        """Cancel the refresh loop and wait for it; re-raise what it crashed with, if it did."""
        refresher, self._refresher = self._refresher, None
        if refresher is None:
            return
        refresher.cancel()
        # asyncio.wait never raises the task's CancelledError, yet lets our own
        # cancellation through.
        await asyncio.wait([refresher])
        if not refresher.cancelled():
            crash = refresher.exception()
            if crash is not None:
                raise crash

    async def __aenter__(self) -> FakeGateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        where = self._base_url or "not started"
        return f"<FakeGateway {where} {self._state} tasks={len(self._tasks)}>"

    # -- public view -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The gateway's base URL, e.g. ``"http://127.0.0.1:54321"`` (no trailing slash)."""
        return self._require_started(self._base_url)

    @property
    def storage_url(self) -> str:
        """The object storage's base URL (where video URLs point)."""
        return self._require_started(self._storage_url)

    @property
    def clock(self) -> Clock:
        """The clock of all simulated time."""
        return self._clock

    @property
    def tick(self) -> float:
        """The refresh loop's period (``"tick"``) or sleep between passes (``"sequential"``)."""
        return self._tick

    @property
    def refresh(self) -> RefreshModel:
        """How the refresh loop walks the tasks: ``"tick"`` or ``"sequential"``."""
        return self._refresh_model

    @property
    def started_at(self) -> float:
        """The clock's time when :meth:`start` ran (schedules count from it)."""
        if self._started_at is None:
            msg = "FakeGateway is not running; use 'async with FakeGateway(...)' or start()"
            raise RuntimeError(msg)
        return self._started_at

    @property
    def slots(self) -> int:
        """Upstream's capacity now (see ``capacity`` and :meth:`set_slots`)."""
        self._catch_up()
        return self._upstream.slots

    @property
    def other_tenants(self) -> int:
        """Other tenants' unfinished tasks on the gateway now."""
        return self._tenants.at(self._now())

    @property
    def download_auth_headers(self) -> list[bool]:
        """For each download request, in order: did it carry an ``Authorization`` header?"""
        return self.stats.download_auth_headers

    @property
    def upstream_running(self) -> int:
        """Tasks running upstream, as of the last refresh or submit."""
        return self._upstream.running

    @property
    def upstream_waiting(self) -> int:
        """Tasks waiting upstream for a slot, as of the last refresh or submit."""
        return self._upstream.waiting

    @property
    def peak_running(self) -> int:
        """The most tasks ever running upstream at once."""
        return self._upstream.peak_running

    @property
    def pending_faults(self) -> int:
        """Injected faults not yet consumed."""
        return self._faults.pending

    def task(self, task_id: str) -> TaskInfo:
        """A snapshot of one task (stored or not: see :meth:`unrecorded_tasks`).

        Raises:
            KeyError: no task has this id.
        """
        self._observe()
        task = self._tasks.get(task_id) or self._unrecorded[task_id]
        return self._info(task)

    def tasks(self) -> list[TaskInfo]:
        """Snapshots of every task the gateway stored, in submission order."""
        self._observe()
        return [self._info(task) for task in self._tasks.values()]

    def unrecorded_tasks(self) -> list[TaskInfo]:
        """Tasks upstream accepted (and billed) that the gateway never stored, in order.

        They come from the submit faults answered 500 after upstream accepted the task
        (``Fault.INSERT_TASK_FAILED`` and its kin): no GET finds them, no refresh sees them,
        yet they run upstream, hold slots and count in ``stats.tasks_per_prompt``.
        """
        self._observe()
        return [self._info(task) for task in self._unrecorded.values()]

    @property
    def is_down(self) -> bool:
        """Whether :meth:`go_down` is in force."""
        return self._down is not None

    @property
    def key_state(self) -> KeyState:
        """``"active"``, ``"revoked"`` (401 for every request) or ``"forbidden"`` (403)."""
        return self._key_state

    def detection_lags(self) -> list[float]:
        """For each finished task a client saw end: first terminal GET - gateway finish time."""
        self._catch_up()
        return [
            task.first_terminal_get - task.finish_time
            for task in self._tasks.values()
            if task.first_terminal_get is not None and task.finish_time is not None
        ]

    # -- test hooks --------------------------------------------------------------------------

    def inject(
        self,
        fault: Fault,
        *,
        on: Target = "any",
        times: int | None = 1,
        delay: float | None = None,
        retry_after: float | None = None,
        task_id: str | None = None,
    ) -> None:
        """Make the next ``times`` requests of kind ``on`` that ``fault`` applies to fail so.

        Injections are consulted in the order they were made; the first that matches a
        request hits it.

        Args:
            fault: what goes wrong.
            on: ``"submit"``, ``"get"``, ``"download"`` or ``"any"``.
            times: how many requests it hits; ``None``: every one until :meth:`clear_faults`.
            delay: real seconds, for ``Fault.SLOW`` (default: ``slow_delay``).
            retry_after: header seconds, for ``Fault.RATE_LIMIT_RETRY_AFTER`` (default:
                ``retry_after``) and ``Fault.RATE_LIMIT_HTML`` (default: no header).
            task_id: hit only the GETs and downloads naming this task (e.g. a GET that never
                parses for one task: ``inject(Fault.NOT_JSON, task_id=t, times=None)``).

        Raises:
            ValueError: ``fault`` never applies to ``on`` requests, or a bad count.
        """
        self._faults.inject(
            fault, on=on, times=times, delay=delay, retry_after=retry_after, task_id=task_id
        )

    def clear_faults(self, fault: Fault | None = None) -> None:
        """Forget injected faults not yet consumed: all of them, or only those of ``fault``."""
        self._faults.clear(fault)

    def revoke_key(self) -> None:
        """Revoke the API key: from now on every gateway request gets 401 (middleware shape).

        Downloads are unaffected (they carry no key). :meth:`restore_key` undoes it;
        :meth:`rotate_key` issues a new key.
        """
        self._key_state = "revoked"

    def forbid_key(self) -> None:
        """Forbid the API key: from now on every gateway request gets 403 (middleware shape),
        as when an operator restricts the key's IP addresses. :meth:`restore_key` undoes it.
        """
        self._key_state = "forbidden"

    def restore_key(self) -> None:
        """Accept :attr:`api_key` again after :meth:`revoke_key` or :meth:`forbid_key`."""
        self._key_state = "active"

    def add_account(self, key: str) -> None:
        """Accept ``key`` too, as another account's: it submits tasks of its own and sees
        only those. Another account's task id reads as ``task_not_exist`` (new-api scopes a
        task by its user), the answer a resumed batch gets when run with the wrong key.

        Raises:
            ValueError: ``key`` is empty or already accepted.
        """
        if not isinstance(key, str) or not key or key == self.api_key:
            msg = f"key must be a new non-empty string, got {key!r}"
            raise ValueError(msg)
        if key in self._other_accounts:
            msg = "that key is already another account's"
            raise ValueError(msg)
        self._other_accounts[key] = f"account-{len(self._other_accounts) + 2}"

    def _account(self, request: web.Request) -> str:
        """The account of a request that passed _auth_error."""
        token = request.headers.get("Authorization", "").partition(" ")[2].strip()
        return self._other_accounts.get(token, "")

    def rotate_key(self, new_key: str) -> None:
        """Accept ``new_key`` only, from now on: the old key gets 401 on every request.

        Raises:
            ValueError: ``new_key`` is empty.
        """
        if not isinstance(new_key, str) or not new_key:
            msg = f"new_key must be a non-empty string, got {new_key!r}"
            raise ValueError(msg)
        self.api_key = new_key
        self._key_state = "active"

    async def go_down(self, mode: DownMode = "refuse") -> None:
        """Take the gateway down until :meth:`come_back` (the object storage stays up).

        Args:
            mode: ``"refuse"``: the gateway stops listening, so new connections are refused
                (nothing can have been created), and a request on a connection opened
                before is dropped unanswered. ``"bad_gateway"``: the nginx in front stays
                up and answers every gateway request 502 with its HTML page.

        While down, the refresh loop does not run (the gateway process is gone); upstream
        goes on working. Taking a down gateway down again only changes the mode.
        """
        check_choice("mode", mode, ("refuse", "bad_gateway"))
        if self._state != "running":
            msg = f"FakeGateway is {self._state}; only a running gateway can go down"
            raise RuntimeError(msg)
        if self._down is None:
            self._catch_up()
            await self._stop_refresher()
        if mode == "refuse" and self._down != "refuse":
            site, self._gateway_site = self._gateway_site, None
            if site is not None:
                await site.stop()
            if self._gateway_runner is not None and self._gateway_runner.server is not None:
                # The gateway process is gone: every open connection drops, even busy ones.
                for connection in self._gateway_runner.server.connections:
                    connection.force_close()
        elif mode == "bad_gateway" and self._down == "refuse":
            await self._listen_again()
        self._down = mode

    async def come_back(self) -> None:
        """End :meth:`go_down`: listen again on the same port and restart the refresh loop.

        The loop starts afresh, as a restarted gateway's does: its first pass comes
        ``first_refresh`` after now. Does nothing if the gateway is not down.
        """
        if self._down is None or self._state != "running":
            return
        if self._down == "refuse":
            await self._listen_again()
        self._down = None
        self._start_refresher(self._now())

    def finish_now(
        self,
        task_id: str,
        *,
        success: bool = True,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Make upstream end ``task_id`` now; the next refresh pass shows it to clients.

        A failure uses ``code`` / ``message`` (default: upstream's ``InternalError``).

        Raises:
            KeyError: no task has this id.
            ValueError: upstream has already ended it.
        """
        self._catch_up()
        task = self._tasks.get(task_id) or self._unrecorded[task_id]
        default_code, default_message = up.INTERNAL_ERROR
        failure = None if success else (code or default_code, message or default_message)
        self._upstream.finish_now(task.upstream, self._now(), failure=failure)

    def refresh_now(self) -> int:
        """Run one refresh pass at once, all its tasks at this instant (the loop's passes
        go on as scheduled: in ``"sequential"`` mode this pass costs no time).

        Returns:
            How many of our tasks it refreshed.
        """
        self._catch_up()
        now = self._now()
        self._upstream.advance(now)
        foreign = min(self._tenants.at(now), self._max_refresh)
        batch = self._next_batch(self._max_refresh - foreign)
        for task in batch:
            self._refresh(task, now)
        self._pass_ended(RefreshPass(start=now, end=now, refreshed=len(batch), foreign=foreign))
        return len(batch)

    def set_slots(self, slots: int) -> None:
        """Change upstream's capacity now, until a scheduled change (``capacity``) or the
        next call. More slots start waiting tasks at once; with fewer, running tasks
        finish and their slots retire until the account is within its capacity.

        Raises:
            ValueError: ``slots`` is not an integer >= 0.
        """
        slots = non_negative_int("slots", slots)
        self._catch_up()
        self._upstream.set_slots(slots, self._now())

    def set_other_tenants(self, count: int) -> None:
        """Other tenants have ``count`` unfinished tasks from now on (until a scheduled
        change in ``other_tenants``, or the next call).

        Raises:
            ValueError: ``count`` is not an integer >= 0.
        """
        count = non_negative_int("count", count)
        self._catch_up()
        self._tenants.change(self._now(), count)

    # -- refresh loop ------------------------------------------------------------------------

    def _observe(self) -> None:
        """Bring everything up to now before a snapshot: refreshes due, upstream's events."""
        self._catch_up()
        self._upstream.advance(self._now())

    def _catch_up(self) -> None:
        """Run the ``"sequential"`` refreshes due by now, each at its own scheduled time.

        Called before anything observes the gateway, so that what a client sees follows the
        clock, not how promptly the event loop woke the refresh loop up.
        """
        if self._refresh_model != "sequential" or self._state != "running" or self._down:
            return
        now = self._now()
        self._upstream.advance(now)
        self._passes.run_until(
            now, plan=self._plan_pass, refresh=self._refresh_in_pass, ended=self._pass_ended
        )

    async def _sequential_loop(self) -> None:
        """Wake up whenever the sequential schedule has something due, and do it."""
        while True:
            await self._clock.sleep(self._passes.next_due - self._now())
            self._catch_up()

    def _plan_pass(self, start: float) -> tuple[int, list[GatewayTask]]:
        """Other tenants' task count and our tasks, in order, for a pass starting at ``start``."""
        foreign = min(self._tenants.at(start), self._max_refresh)
        # A late wake-up must not let a pass include tasks submitted after it began.
        return foreign, self._next_batch(self._max_refresh - foreign, created_by=start)

    def _refresh_in_pass(self, task: GatewayTask, at: float) -> None:
        # refresh_now() may have seen it end since the pass listed it.
        if not task.terminal:
            self._refresh(task, at)

    def _pass_ended(self, done: RefreshPass) -> None:
        self.stats.refresh_passes += 1
        self.stats.foreign_refreshes += done.foreign
        self.stats.passes.append(done)

    async def _refresh_loop(self) -> None:
        """Run a pass every ``tick``, on a fixed schedule that skips ticks it fell behind on."""
        # Pass n runs at origin + n * tick; the first (n = 1) first_refresh after now.
        origin = self._clock.monotonic() + self._first_refresh - self._tick
        passes = 0
        while True:
            passes = max(passes + 1, math.floor((self._clock.monotonic() - origin) / self._tick))
            await self._clock.sleep(origin + passes * self._tick - self._clock.monotonic())
            self.refresh_now()

    def _next_batch(self, limit: int, created_by: float | None = None) -> list[GatewayTask]:
        """Our tasks of this pass: all in submission order, or the next ``limit`` in rotation.

        Args:
            limit: how many of ours the pass may take.
            created_by: leave out tasks created after this time.
        """
        tasks = list(self._unfinished.values())
        if created_by is not None:
            tasks = [t for t in tasks if t.created_at <= created_by]
        if len(tasks) <= limit:
            self._cursor = 0
            return tasks
        if limit <= 0:
            return []
        start = next((i for i, t in enumerate(tasks) if t.row_id > self._cursor), 0)
        batch = (tasks[start:] + tasks[:start])[:limit]
        self._cursor = batch[-1].row_id
        return batch

    def _refresh(self, task: GatewayTask, now: float) -> None:
        """Store ``task`` as upstream shows it at ``now`` (which may be a little past)."""
        if now - task.created_at >= self._task_ttl:
            task.expire(now)
        else:
            seen = task.upstream.seen_at(now)
            url = ""
            if seen.state == up.SUCCEEDED and seen.end_time is not None:
                expires = unix(seen.end_time + self._url_ttl)
                url = self._signer.url(self.storage_url, task.task_id, expires)
            task.refresh(now, request_id=self._uuid(), video_url=url, style=self._style, seen=seen)
        self.stats.task_refreshes += 1
        if task.terminal:
            del self._unfinished[task.task_id]
            assert task.finish_time is not None
            self.stats.finishes.append(
                TaskFinish(
                    task_id=task.task_id,
                    status=task.status,
                    upstream_end=task.upstream.end_time if task.upstream.finished else None,
                    gateway_finish=task.finish_time,
                )
            )

    # -- HTTP: gateway -----------------------------------------------------------------------

    def _gateway_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(_SUBMIT_PATH, self._endpoint("submit", self._submit))
        app.router.add_get(_SUBMIT_PATH + "/{task_id}", self._endpoint("get", self._get))
        app.router.add_get(LOGIN_PATH, self._login)
        app.router.add_route("*", "/{tail:.*}", self._endpoint(None, self._no_route))
        return app

    async def _login(self, request: web.Request) -> web.StreamResponse:
        """The page ``Fault.REDIRECT`` sends clients to (a proxy's, not the gateway's)."""
        return login_page()

    async def _listen_again(self) -> None:
        """Bind the gateway's port again after ``go_down("refuse")``."""
        if self._gateway_runner is None or self._gateway_site is not None:
            return
        site = web.TCPSite(self._gateway_runner, self._host, self._port)
        await site.start()
        self._gateway_site = site

    def _endpoint(
        self,
        kind: RequestKind | None,
        handler: Callable[[web.Request, str], Awaitable[_Reply]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap ``handler``: give it a request id, stamp the header, count the outcome."""

        async def endpoint(request: web.Request) -> web.StreamResponse:
            arrived = self._now()
            request_id = self._request_id()
            response: web.StreamResponse
            if self._down == "refuse":
                # A request on a connection opened before the gateway went down.
                response, outcome = abort(request), "refused"
            elif self._down == "bad_gateway":
                response, outcome = bad_gateway_html(), "502"
            else:
                response, outcome = await handler(request, request_id)
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            if kind is not None:
                task_id = request.match_info.get("task_id")
                self.stats.record(arrived, kind, outcome, task_id)
            return response

        return endpoint

    async def _no_route(self, request: web.Request, request_id: str) -> _Reply:
        text = f"Invalid URL ({request.method} {request.path})"
        return middleware_error(404, text, request_id), "404"

    async def _submit(self, request: web.Request, request_id: str) -> _Reply:
        try:
            # Read first: a client that gives up during a SLOW answer must not make the
            # read fail afterwards (aiohttp would log that as an unhandled error).
            raw = await request.read()
        except ConnectionError:
            return abort(request), "client_gone"
        choice = self._take_fault("submit")
        early = await self._early_fault(request, choice)
        if early is not None:
            return early
        response = self._create(request, raw, request_id, None if choice is None else choice.fault)
        if choice is not None and choice.fault is Fault.DROP_AFTER_CREATE:
            return abort(request), "drop_after_create"
        if choice is not None and choice.fault is Fault.TRUNCATED_JSON:
            return truncated(response), "truncated"
        return response, str(response.status)

    def _create(
        self, request: web.Request, raw: bytes, request_id: str, fault: Fault | None
    ) -> web.Response:
        """Run a submit's checks in the gateway's order; create the task if all pass.

        ``fault`` may make the gateway fail after upstream accepted the task, or leave the
        task id out of its answer.
        """
        self._catch_up()
        denied = self._auth_error(request, request_id)
        if denied is not None:
            return denied
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return task_error(400, "invalid_json", "invalid request body: not a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return task_error(400, "missing_model", "model is required")
        if model in self._forbidden:
            return middleware_error(403, f"This token has no access to model {model}", request_id)
        if model not in self._models:
            text = f"No available channel for model {model} under group default"
            return middleware_error(503, text, request_id, code="model_not_found")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return task_error(400, "invalid_request", "prompt is required")
        if self._quota is not None and self.stats.tasks_created >= self._quota:
            return task_error(403, "quota_not_enough", "user quota is not enough")
        if self._bucket is not None and not self._bucket.take():
            return middleware_error(429, _KEY_RATE_LIMITED, request_id)
        rejection = _upstream_rejection(body, prompt, model)
        if rejection is not None:
            message = upstream_error("InvalidParameter", rejection)
            return task_error(400, "fail_to_fetch_task", message)
        code = AFTER_UPSTREAM_CODES.get(fault) if fault is not None else None
        task = self._new_task(body, prompt, model, recorded=code is None)
        task.account = self._account(request)
        if code is not None:
            return task_error(500, code, _AFTER_UPSTREAM_MESSAGES[code])
        answer: dict[str, Any] = {
            "id": task.task_id,
            "object": "video",
            "model": model,
            "status": "queued",
            "progress": 0,
            "created_at": unix(task.created_at),
        }
        if fault is Fault.NO_TASK_ID:
            del answer["id"]
        return json_response(200, answer)

    async def _get(self, request: web.Request, request_id: str) -> _Reply:
        self._catch_up()
        task_id = request.match_info["task_id"]
        self.stats.gets_per_task[task_id] += 1
        known = self._tasks.get(task_id)
        if known is not None:
            known.get_times.append(self._now())
        choice = self._take_fault("get", task_id)
        early = await self._early_fault(request, choice)
        if early is not None:
            return early
        denied = self._auth_error(request, request_id)
        if denied is not None:
            return denied, str(denied.status)
        if self._bucket is not None and not self._bucket.take():
            return middleware_error(429, _KEY_RATE_LIMITED, request_id), "429"
        if choice is not None and choice.fault is Fault.WRONG_SHAPE:
            return json_response(200, {"code": "success", "data": None}), "200"
        task = self._tasks.get(task_id)
        if task is None or task.account != self._account(request):
            return task_error(400, "task_not_exist", "task_not_exist"), "400"
        dto = _distorted(task.dto(), None if choice is None else choice.fault)
        response = json_response(200, {"code": "success", "message": "", "data": dto})
        if choice is not None and choice.fault is Fault.TRUNCATED_JSON:
            # The client cannot read a cut body: it has not seen the status.
            return truncated(response), "truncated"
        if dto["status"] in ("SUCCESS", "FAILURE") and task.first_terminal_get is None:
            task.first_terminal_get = self._now()
        return response, "200"

    def _auth_error(self, request: web.Request, request_id: str) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return middleware_error(401, "No token provided", request_id)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return middleware_error(401, "Invalid token", request_id)
        if token.strip() in self._other_accounts:
            return None
        if token.strip() != self.api_key:
            return middleware_error(401, "Invalid token", request_id)
        if self._key_state == "revoked":
            return middleware_error(401, "This token has been disabled", request_id)
        if self._key_state == "forbidden":
            return middleware_error(403, _KEY_FORBIDDEN, request_id)
        return None

    # -- HTTP: object storage ----------------------------------------------------------------

    def _storage_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/videos/{name}", self._download)
        app.router.add_get(LOGIN_PATH, self._login)
        return app

    async def _download(self, request: web.Request) -> web.StreamResponse:
        arrived = self._now()
        self.stats.download_auth_headers.append("Authorization" in request.headers)
        task_id = request.match_info["name"].removesuffix(".mp4")
        choice = self._take_fault("download", task_id)
        early = await self._early_fault(request, choice)
        if early is not None:
            response, outcome = early
        else:
            answer, content = self._store.answer(request)
            response, outcome = answer, str(answer.status)
            if choice is not None and choice.fault is Fault.TRUNCATED_JSON and content:
                response, outcome = await _cut_download(request, answer, content), "truncated"
        self.stats.record(arrived, "download", outcome, task_id)
        return response

    def _video_produced_at(self, task_id: str) -> float | None:
        task = self._tasks.get(task_id)
        if task is None or task.upstream.state != up.SUCCEEDED:
            return None
        return task.upstream.end_time

    # -- faults ------------------------------------------------------------------------------

    def _take_fault(self, kind: RequestKind, task_id: str | None = None) -> FaultChoice | None:
        choice = self._faults.take(kind, task_id)
        if choice is not None:
            self.stats.faults[(kind, choice.fault)] += 1
        return choice

    async def _early_fault(self, request: web.Request, choice: FaultChoice | None) -> _Reply | None:
        """Answer a fault that strikes before the request is handled; wait out ``SLOW``."""
        if choice is None:
            return None
        fault = choice.fault
        if fault is Fault.SLOW:
            # Real seconds on purpose: it exercises the client's own (real) timeouts.
            await anyio.sleep(choice.delay)
            return None
        if fault is Fault.RESET_BEFORE_CREATE:
            return abort(request), "reset"
        if fault is Fault.BAD_GATEWAY_HTML:
            return bad_gateway_html(), "502"
        if fault is Fault.SERVER_ERROR:
            return task_error(500, "do_request_failed", _DO_REQUEST_FAILED), "500"
        if fault is Fault.UNAVAILABLE:
            return task_error(503, "fail_to_fetch_task", _UNAVAILABLE), "503"
        if fault in (Fault.RATE_LIMIT, Fault.RATE_LIMIT_RETRY_AFTER):
            response = task_error(429, "fail_to_fetch_task", _THROTTLED)
            if fault is Fault.RATE_LIMIT_RETRY_AFTER:
                response.headers["Retry-After"] = retry_after_value(choice.retry_after)
            return response, "429"
        if fault is Fault.RATE_LIMIT_HTML:
            given = choice.retry_after_given
            header = retry_after_value(choice.retry_after) if given else None
            return too_many_requests_html(header), "429"
        if fault is Fault.FORBIDDEN_HTML:
            return forbidden_html(), "403"
        if fault is Fault.REDIRECT:
            origin = f"{request.scheme}://{request.host}"
            return redirect_to_login(origin, request.path_qs), "302"
        if fault is Fault.NOT_JSON:
            return not_json_page(), "200"
        return None

    # -- helpers -----------------------------------------------------------------------------

    def _new_task(
        self, body: Mapping[str, Any], prompt: str, model: str, *, recorded: bool = True
    ) -> GatewayTask:
        """Create the task upstream (billed) and, if ``recorded``, store the gateway's row."""
        now = self._now()
        upstream_id = self._uuid_from(self._id_rng)
        task_id = upstream_id if self._task_id_style == "uuid" else self._task_id()
        params = _parameters(body)
        rules = MODEL_RULES.get(model)
        task = GatewayTask(
            row_id=len(self._tasks) + 1 if recorded else 0,
            task_id=task_id,
            prompt=prompt,
            model=model,
            size=_str_or(params.get("size"), rules.default_size if rules else "1920*1080"),
            duration=_duration(params.get("duration"), rules.default_duration if rules else 5),
            prompt_extend=params.get("prompt_extend") is not False,
            created_at=now,
            upstream=self._upstream_task(upstream_id, body, prompt, now),
            data=submit_json(upstream_id, self._uuid()),
        )
        self._upstream.submit(task.upstream, now)
        self.stats.tasks_per_prompt[prompt] += 1
        if not recorded:
            self._unrecorded[task_id] = task
            return task
        self._tasks[task_id] = task
        self._unfinished[task_id] = task
        return task

    def _upstream_task(
        self, upstream_id: str, body: Mapping[str, Any], prompt: str, now: float
    ) -> up.UpstreamTask:
        seconds = float(self._processing_time(body, self._rng))
        if not (math.isfinite(seconds) and seconds >= 0):
            msg = f"processing_time returned {seconds!r}; it must be a finite number >= 0"
            raise ValueError(msg)
        # Always draw, so a [fail] prompt does not shift the draws of later tasks.
        unlucky = self._rng.random() < self._failure_rate
        failure: tuple[str, str] | None = None
        if up.FAIL_MARKER in prompt:
            failure = up.MODERATION_ERROR
        elif unlucky:
            failure = up.INTERNAL_ERROR
        return up.UpstreamTask(
            task_id=upstream_id, submit_time=now, processing_time=seconds, failure=failure
        )

    def _info(self, task: GatewayTask) -> TaskInfo:
        failure = task.upstream.failure
        return TaskInfo(
            recorded=task.row_id != 0,
            task_id=task.task_id,
            prompt=task.prompt,
            model=task.model,
            status=task.status,
            progress=task.progress,
            upstream_status=task.upstream.state,
            created_at=task.created_at,
            upstream_start=task.upstream.start_time,
            upstream_end=task.upstream.end_time,
            gateway_start=task.start_time,
            gateway_finish=task.finish_time,
            first_terminal_get=task.first_terminal_get,
            updated_at=task.updated_at,
            gets=self.stats.gets_per_task[task.task_id],
            get_times=tuple(task.get_times),
            refresh_times=tuple(task.refresh_times),
            video_url=task.video_url,
            fail_code=None if failure is None else failure[0],
            fail_message=None if failure is None else failure[1],
        )

    def _now(self) -> float:
        """The clock's time, never going backwards (the system clock may)."""
        self._last_now = max(self._last_now, self._clock.time())
        return self._last_now

    def _task_id(self) -> str:
        return "task_" + "".join(self._id_rng.choices(_ALNUM, k=32))

    def _uuid(self) -> str:
        return self._uuid_from(self._rid_rng)

    @staticmethod
    def _uuid_from(rng: random.Random) -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def _request_id(self) -> str:
        """A request id like new-api's: a timestamp, then random characters."""
        stamp = unix(self._clock.time())
        return f"{stamp}{''.join(self._rid_rng.choices(_ALNUM, k=12))}"

    def _url(self, port: int) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{port}"

    async def _serve(
        self, app: web.Application, port: int
    ) -> tuple[web.AppRunner, web.TCPSite, int]:
        """Serve ``app`` on ``port`` (0: any) of our host; return the runner, site and port."""
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self._host, port)
        await site.start()
        address = runner.addresses[0]
        return runner, site, int(address[1])

    def _require_started(self, url: str | None) -> str:
        if url is None:
            msg = "FakeGateway is not running; use 'async with FakeGateway(...)' or start()"
            raise RuntimeError(msg)
        return url


# -- module helpers ----------------------------------------------------------------------------


def _distorted(dto: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
    """Apply a GET-only fault to one answer, leaving the stored view alone."""
    if fault is Fault.UNKNOWN_STATUS:
        return {**dto, "status": "MYSTERY_STATE"}
    if fault is Fault.STATUS_REGRESSION and dto["status"] == "IN_PROGRESS":
        # An upstream hiccup: it reports the task as waiting again.
        regressed = copy.deepcopy(dto)
        regressed["status"], regressed["progress"] = "QUEUED", "20%"
        output = regressed.get("data", {}).get("output")
        if isinstance(output, dict):
            output["task_status"] = up.PENDING
        return regressed
    return dto


def _upstream_rejection(body: Mapping[str, Any], prompt: str, model: str) -> str | None:
    """What upstream says about the parameters, or ``None`` when it accepts them."""
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return "metadata must be an object"
    fields: dict[str, Any] = {}
    for section, keys in (("input", _INPUT_KEYS), ("parameters", _PARAMETER_KEYS)):
        values = metadata.get(section) or {}
        if not isinstance(values, Mapping):
            return f"{section} must be an object"
        fields.update((key, values[key]) for key in keys if key in values)
    try:
        VideoRequest(prompt=prompt, model=model, **fields)
    except ValidationError as exc:
        return "; ".join(str(problem) for problem in exc.problems)
    except TypeError as exc:
        return str(exc)
    return None


def _parameters(body: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = body.get("metadata")
    params = metadata.get("parameters") if isinstance(metadata, Mapping) else None
    return params if isinstance(params, Mapping) else {}


def _str_or(value: object, default: str) -> str:
    return value if isinstance(value, str) else default


def _duration(value: object, default: int) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if ok and isinstance(value, int) else default


async def _cut_download(
    request: web.Request, answer: web.Response, content: bytes
) -> web.StreamResponse:
    """Declare the whole body, send half of it, then drop the connection."""
    response = web.StreamResponse(status=answer.status)
    for name in ("Accept-Ranges", "Content-Range", "x-oss-request-id"):
        if name in answer.headers:
            response.headers[name] = answer.headers[name]
    response.content_type = "video/mp4"
    response.content_length = len(content)
    await response.prepare(request)
    await response.write(content[: len(content) // 2])
    abort(request)
    return response


def _make_bucket(rate: float | None, burst: float | None, clock: Clock) -> TokenBucket | None:
    if rate is None:
        if burst is not None:
            msg = "rate_burst needs rate_limit"
            raise ValueError(msg)
        return None
    rate = positive("rate_limit", rate)
    burst = max(1.0, rate) if burst is None else positive("rate_burst", burst)
    if burst < 1:
        msg = f"rate_burst must be at least 1, got {burst!r}"
        raise ValueError(msg)
    return TokenBucket(rate=rate, burst=burst, clock=clock)
