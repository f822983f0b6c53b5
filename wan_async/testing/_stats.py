"""What the simulator observed: request counters and per-task timelines for benchmarks."""

from __future__ import annotations

from collections import Counter

import attrs

from ._faults import Fault, RequestKind


@attrs.define(kw_only=True)
class GatewayStats:
    """Counters of one :class:`~wan_async.testing.FakeGateway`, updated as requests arrive.

    ``requests`` is keyed by ``(kind, outcome)``: kind is ``"submit"``, ``"get"`` or
    ``"download"``; outcome is the HTTP status sent (``"200"``, ``"429"``, ...) or, when no
    complete answer was sent, ``"reset"``, ``"drop_after_create"`` or ``"truncated"``.
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
    #: The signed download URL, once the gateway has seen the task succeed.
    video_url: str | None
    #: Upstream's failure code and message, if it failed (or will fail).
    fail_code: str | None
    fail_message: str | None
