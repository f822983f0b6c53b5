"""What the simulator observed: request counters and per-task timelines for benchmarks."""

from __future__ import annotations

import math
from collections import Counter

import attrs

from ._faults import Fault, RequestKind


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One request the simulator served, for plots over time."""

    #: Clock time the request arrived.
    at: float
    kind: RequestKind
    #: As in :attr:`GatewayStats.requests`: ``"200"``, ``"429"``, ``"reset"``, ...
    outcome: str
    #: The task a GET or download named (``None`` for a submit).
    task_id: str | None


@attrs.frozen(kw_only=True)
class RefreshPass:
    """One pass of the gateway's refresh loop over the unfinished tasks (SPEC §3.2)."""

    #: Clock time the pass began (after the loop's sleep).
    start: float
    #: Clock time it stored its last task (``start`` for an instantaneous pass).
    end: float
    #: Our tasks it refreshed.
    refreshed: int
    #: Other tenants' tasks it refreshed (invisible to our key, yet they take their time).
    foreign: int


@attrs.frozen(kw_only=True)
class TaskFinish:
    """The gateway saw a task end: when upstream ended it and when a refresh noticed."""

    task_id: str
    #: ``"SUCCESS"`` or ``"FAILURE"``.
    status: str
    #: When upstream ended it (``None`` when the gateway failed it itself: ``task_ttl``).
    upstream_end: float | None
    #: When the refresh that saw it end stored it (its ``finish_time``).
    gateway_finish: float


@attrs.define(kw_only=True)
class GatewayStats:
    """Counters of one :class:`~wan_async.testing.FakeGateway`, updated as requests arrive.

    ``requests`` is keyed by ``(kind, outcome)``: kind is ``"submit"``, ``"get"`` or
    ``"download"``; outcome is the HTTP status sent (``"200"``, ``"429"``, ...) or, when no
    complete answer was sent, ``"reset"``, ``"drop_after_create"``, ``"truncated"`` or
    ``"refused"`` (a request on a connection opened before the gateway went down).

    For plots over time: :attr:`request_log` (every request with its arrival time),
    :attr:`passes` (every refresh pass), :attr:`finishes` (every task the gateway saw end),
    and the helpers :meth:`request_times` and :meth:`request_counts`.
    """

    requests: Counter[tuple[RequestKind, str]] = attrs.field(factory=Counter)
    #: Faults applied, by kind of request (injected or drawn).
    faults: Counter[tuple[RequestKind, Fault]] = attrs.field(factory=Counter)
    #: Tasks created per prompt text (a duplicate submit shows up as a count above 1).
    tasks_per_prompt: Counter[str] = attrs.field(factory=Counter)
    #: GET requests per task id in the path (known or not, whatever the answer).
    gets_per_task: Counter[str] = attrs.field(factory=Counter)
    #: Refresh passes run by the background loop (or by ``refresh_now()``).
    refresh_passes: int = 0
    #: Task refreshes done over all passes.
    task_refreshes: int = 0
    #: For each download request, in order: did it carry an ``Authorization`` header?
    download_auth_headers: list[bool] = attrs.field(factory=list)
    #: Other tenants' task refreshes over all passes (see ``FakeGateway(other_tenants=)``).
    foreign_refreshes: int = 0
    #: Every request, in order of arrival.
    request_log: list[RequestRecord] = attrs.field(factory=list)
    #: Every refresh pass, in order (a pass is listed once it has ended).
    passes: list[RefreshPass] = attrs.field(factory=list)
    #: Every task the gateway saw end, in order.
    finishes: list[TaskFinish] = attrs.field(factory=list)

    def record(self, at: float, kind: RequestKind, outcome: str, task_id: str | None) -> None:
        """Count one request that arrived at ``at`` and was answered with ``outcome``."""
        self.requests[(kind, outcome)] += 1
        self.request_log.append(RequestRecord(at=at, kind=kind, outcome=outcome, task_id=task_id))

    def request_times(self, kind: RequestKind, outcome: str | None = None) -> list[float]:
        """Arrival times of the requests of ``kind`` (with ``outcome`` only, if given)."""
        return [
            r.at
            for r in self.request_log
            if r.kind == kind and (outcome is None or r.outcome == outcome)
        ]

    def request_counts(
        self,
        kind: RequestKind,
        *,
        bucket: float,
        start: float | None = None,
        outcome: str | None = None,
    ) -> list[int]:
        """Requests of ``kind`` per time bucket: ``[n0, n1, ...]`` for consecutive buckets
        ``[start + i * bucket, start + (i + 1) * bucket)`` up to the last such request.

        Args:
            kind: the kind of request.
            bucket: the bucket width in clock seconds.
            start: where bucket 0 begins (default: the first request of any kind), e.g.
                ``gw.started_at`` to line up several plots.
            outcome: count only the requests answered so.
        """
        if not (math.isfinite(bucket) and bucket > 0):
            msg = f"bucket must be a finite number of seconds > 0, got {bucket!r}"
            raise ValueError(msg)
        times = self.request_times(kind, outcome)
        if start is None:
            start = self.request_log[0].at if self.request_log else 0.0
        counts: list[int] = []
        for at in times:
            if at < start:
                continue
            index = int((at - start) // bucket)
            if index >= len(counts):
                counts.extend([0] * (index + 1 - len(counts)))
            counts[index] += 1
        return counts

    def outcomes(self, kind: RequestKind) -> Counter[str]:
        """Outcomes of the requests of one kind, e.g. ``{"200": 3, "429": 1}``."""
        out: Counter[str] = Counter()
        for (k, outcome), n in self.requests.items():
            if k == kind:
                out[outcome] += n
        return out

    @property
    def tasks_created(self) -> int:
        """Tasks created so far (each one billed)."""
        return sum(self.tasks_per_prompt.values())


@attrs.frozen(kw_only=True)
class TaskInfo:
    """A snapshot of one task: the gateway's view, upstream's truth and what clients saw.

    Times are clock seconds (Unix time as the simulator's clock reads it), ``None`` until
    the event happened.
    """

    task_id: str
    prompt: str
    model: str
    #: Whether the gateway stored the task. ``False`` for a task upstream accepted while the
    #: gateway answered an error (e.g. ``insert_task_failed``): it runs and is billed, but no
    #: GET finds it and the gateway's ``status`` stays ``NOT_START``.
    recorded: bool = True
    #: The gateway's ``data.status`` and ``data.progress`` as of the last refresh.
    status: str
    progress: str
    #: Upstream's own status now: ``PENDING``, ``RUNNING``, ``SUCCEEDED`` or ``FAILED``.
    upstream_status: str
    created_at: float
    upstream_start: float | None
    upstream_end: float | None
    #: When the gateway first saw the task running (its ``start_time``).
    gateway_start: float | None
    #: When a refresh first saw the task ended (its ``finish_time``).
    gateway_finish: float | None
    #: When a GET first returned the terminal status to a client.
    first_terminal_get: float | None
    updated_at: float | None
    #: GET requests naming this task.
    gets: int
    #: Clock time of each of those GETs, in order of arrival (whatever they were answered).
    get_times: tuple[float, ...]
    #: Clock time of each refresh of the task, in order (``updated_at`` before rounding to
    #: whole seconds): its phase in the loop's passes.
    refresh_times: tuple[float, ...] = ()
    #: The signed download URL, once the gateway has seen the task succeed.
    video_url: str | None
    #: Upstream's failure code and message, if it failed (or will fail).
    fail_code: str | None
    fail_message: str | None
