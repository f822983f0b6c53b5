"""Fault injection: what can go wrong with one request, and which request it hits.

Faults come from two places, consulted in this order for every request:

1. a one-shot queue filled by :meth:`FaultPlan.inject` (deterministic tests), consumed in
   order by the next requests it applies to;
2. random chaos: per-fault rates drawn with a seeded RNG (soak tests and benchmarks).

Only faults that make sense for a kind of request ever hit it: a ``DROP_AFTER_CREATE`` queued
for ``"any"`` waits for the next submit and lets GETs and downloads pass. An injection may be
narrowed to the GETs and downloads of one task (``task_id=``), and may last until cleared
(``times=None``): the first injection in the queue that matches a request hits it.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from typing import Literal

import attrs

from ._checks import check_probability, non_negative

#: The three kinds of request the simulator serves.
RequestKind = Literal["submit", "get", "download"]
#: Which requests an injected fault may hit.
Target = Literal["submit", "get", "download", "any"]

KINDS: tuple[RequestKind, ...] = ("submit", "get", "download")


class Fault(enum.Enum):
    """One misbehaviour of the gateway, a proxy in front of it, or the network."""

    #: 429, task shape ``fail_to_fetch_task``, no ``Retry-After`` (the gateway's own 429).
    RATE_LIMIT = "rate_limit"
    #: 429 with a ``Retry-After: <seconds>`` header (a proxy in front).
    RATE_LIMIT_RETRY_AFTER = "rate_limit_retry_after"
    #: 500, task shape ``do_request_failed``: the gateway's call upstream broke.
    SERVER_ERROR = "server_error"
    #: 503, task shape ``fail_to_fetch_task``.
    UNAVAILABLE = "unavailable"
    #: 502 with an nginx HTML page instead of JSON.
    BAD_GATEWAY_HTML = "bad_gateway_html"
    #: The connection is aborted before anything happens; nothing is created.
    RESET_BEFORE_CREATE = "reset_before_create"
    #: Submit only: the task is created (and billed), then the connection is aborted.
    DROP_AFTER_CREATE = "drop_after_create"
    #: The answer is delayed by real seconds, then sent normally.
    SLOW = "slow"
    #: The normal answer with only the first half of its body (a submit still creates the task).
    #: For a download: the full ``Content-Length`` is declared, half the bytes are sent, and
    #: the connection drops.
    TRUNCATED_JSON = "truncated_json"
    #: GET only: a task shown ``IN_PROGRESS`` is answered as ``QUEUED`` / ``"20%"`` this once.
    STATUS_REGRESSION = "status_regression"
    #: GET only: the status reads ``"MYSTERY_STATE"`` this once.
    UNKNOWN_STATUS = "unknown_status"

    # Submit errors sent after upstream accepted the task (SPEC §2, "outcome unknown"). The
    # task runs upstream and is billed (it counts in ``stats.tasks_per_prompt``), but the
    # gateway answers 500 in the task shape with no id and stores no row for it (new-api
    # inserts the row only after it has read and parsed upstream's answer): a GET of the id it
    # would have had is ``task_not_exist``, and no refresh pass ever sees it. See
    # ``FakeGateway.unrecorded_tasks()``.

    #: Submit only: 500 ``do_request_failed`` after upstream accepted the task (the gateway's
    #: read of upstream's answer timed out). ``SERVER_ERROR`` is the same answer, sent before.
    DO_REQUEST_FAILED_AFTER_CREATE = "do_request_failed_after_create"
    #: Submit only: 500 ``read_response_body_failed``; the task exists upstream, unrecorded.
    READ_RESPONSE_BODY_FAILED = "read_response_body_failed"
    #: Submit only: 500 ``unmarshal_response_body_failed``; the task exists upstream, unrecorded.
    UNMARSHAL_RESPONSE_BODY_FAILED = "unmarshal_response_body_failed"
    #: Submit only: 500 ``invalid_response``; the task exists upstream, unrecorded.
    INVALID_RESPONSE = "invalid_response"
    #: Submit only: 500 ``insert_task_failed``: the gateway's database refused the row; the
    #: task exists upstream, unrecorded.
    INSERT_TASK_FAILED = "insert_task_failed"
    #: Submit only: the task is created and stored (the loop refreshes it), and the 200 answer
    #: has no ``id`` key, so the client cannot know it.
    NO_TASK_ID = "no_task_id"

    #: 429 with a proxy's HTML page (nginx ``limit_req``), not the gateway's JSON. It carries
    #: ``Retry-After`` only when injected with ``retry_after=``. Nothing is created.
    RATE_LIMIT_HTML = "rate_limit_html"
    #: 403 with a web application firewall's HTML page, not the gateway's JSON: a rule that
    #: blocks this one request (an odd task id, say). Nothing is created.
    FORBIDDEN_HTML = "forbidden_html"
    #: 302 to an HTML login page (a single-sign-on proxy in front); nothing is created. The
    #: login page itself answers 200 ``text/html``.
    REDIRECT = "redirect"
    #: GET only: 200 with an HTML page instead of JSON (a captive portal, a misrouted proxy).
    NOT_JSON = "not_json"
    #: GET only: 200 JSON of the wrong shape: ``{"code":"success","data":null}`` (what
    #: new-api sends when it has no body to relay).
    WRONG_SHAPE = "wrong_shape"

    @property
    def kinds(self) -> frozenset[RequestKind]:
        """The kinds of request this fault can hit."""
        return _APPLIES_TO[self]


_ALL: frozenset[RequestKind] = frozenset(KINDS)
_APPLIES_TO: Mapping[Fault, frozenset[RequestKind]] = {
    Fault.RATE_LIMIT: _ALL,
    Fault.RATE_LIMIT_RETRY_AFTER: _ALL,
    Fault.SERVER_ERROR: _ALL,
    Fault.UNAVAILABLE: _ALL,
    Fault.BAD_GATEWAY_HTML: _ALL,
    Fault.RESET_BEFORE_CREATE: _ALL,
    Fault.DROP_AFTER_CREATE: frozenset({"submit"}),
    Fault.SLOW: _ALL,
    Fault.TRUNCATED_JSON: _ALL,
    Fault.STATUS_REGRESSION: frozenset({"get"}),
    Fault.UNKNOWN_STATUS: frozenset({"get"}),
    Fault.DO_REQUEST_FAILED_AFTER_CREATE: frozenset({"submit"}),
    Fault.READ_RESPONSE_BODY_FAILED: frozenset({"submit"}),
    Fault.UNMARSHAL_RESPONSE_BODY_FAILED: frozenset({"submit"}),
    Fault.INVALID_RESPONSE: frozenset({"submit"}),
    Fault.INSERT_TASK_FAILED: frozenset({"submit"}),
    Fault.NO_TASK_ID: frozenset({"submit"}),
    Fault.RATE_LIMIT_HTML: _ALL,
    Fault.FORBIDDEN_HTML: _ALL,
    Fault.REDIRECT: _ALL,
    Fault.NOT_JSON: frozenset({"get"}),
    Fault.WRONG_SHAPE: frozenset({"get"}),
}

#: Faults answering a submit with a 500 after upstream accepted the task: the code sent.
AFTER_UPSTREAM_CODES: Mapping[Fault, str] = {
    Fault.DO_REQUEST_FAILED_AFTER_CREATE: "do_request_failed",
    Fault.READ_RESPONSE_BODY_FAILED: "read_response_body_failed",
    Fault.UNMARSHAL_RESPONSE_BODY_FAILED: "unmarshal_response_body_failed",
    Fault.INVALID_RESPONSE: "invalid_response",
    Fault.INSERT_TASK_FAILED: "insert_task_failed",
}


@attrs.frozen(kw_only=True)
class FaultChoice:
    """The fault picked for one request, with its parameters resolved."""

    fault: Fault
    #: Real seconds to wait, for ``SLOW``.
    delay: float
    #: Seconds for the ``Retry-After`` header, for ``RATE_LIMIT_RETRY_AFTER``.
    retry_after: float
    #: Whether the injection named ``retry_after`` itself (``RATE_LIMIT_HTML`` sends the
    #: header only then).
    retry_after_given: bool = False


@attrs.define(kw_only=True)
class _Injection:
    fault: Fault
    on: Target
    #: Requests it still hits; ``None``: until cleared.
    remaining: int | None
    delay: float | None
    retry_after: float | None
    task_id: str | None

    def matches(self, kind: RequestKind, task_id: str | None) -> bool:
        if self.task_id is not None and task_id != self.task_id:
            return False
        return (self.on == "any" or self.on == kind) and kind in self.fault.kinds


class FaultPlan:
    """Chooses the fault, if any, for each request.

    Args:
        rates: probability of each fault per applicable request; for each kind of request the
            rates of the faults that apply to it must add up to at most 1.
        rng: the seeded random source of chaos draws (kept apart from the upstream model's, so
            chaos never changes processing times).
        slow_delay: default real seconds of a ``SLOW`` answer.
        retry_after: default ``Retry-After`` seconds.
    """

    def __init__(
        self,
        *,
        rates: Mapping[Fault, float],
        rng: random.Random,
        slow_delay: float,
        retry_after: float,
    ) -> None:
        self._rates = _checked_rates(rates)
        self._rng = rng
        self._slow_delay = non_negative("slow_delay", slow_delay)
        self._retry_after = non_negative("retry_after", retry_after)
        self._queue: list[_Injection] = []

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
        """Queue ``fault`` for the next ``times`` requests of kind ``on`` it applies to.

        ``times=None`` keeps it until :meth:`clear`; ``task_id`` narrows it to the GETs and
        downloads naming that task.
        """
        if not isinstance(fault, Fault):
            msg = f"fault must be a Fault member, got {fault!r}"
            raise TypeError(msg)
        if on != "any" and on not in KINDS:
            msg = f"on must be one of 'submit', 'get', 'download', 'any', got {on!r}"
            raise ValueError(msg)
        if on != "any" and on not in fault.kinds:
            allowed = ", ".join(sorted(fault.kinds))
            msg = f"{fault.name} never applies to {on} requests (only to: {allowed})"
            raise ValueError(msg)
        bad_count = isinstance(times, bool) or not isinstance(times, int) or times < 1
        if times is not None and bad_count:
            msg = f"times must be a positive integer or None (until cleared), got {times!r}"
            raise ValueError(msg)
        if task_id is not None:
            if not isinstance(task_id, str) or not task_id:
                msg = f"task_id must be a non-empty string, got {task_id!r}"
                raise ValueError(msg)
            if on == "submit" or not fault.kinds & {"get", "download"}:
                msg = f"task_id= narrows a fault to GETs and downloads, not {fault.name} on {on}"
                raise ValueError(msg)
        if delay is not None:
            non_negative("delay", delay)
        if retry_after is not None:
            non_negative("retry_after", retry_after)
        self._queue.append(
            _Injection(
                fault=fault,
                on=on,
                remaining=times,
                delay=delay,
                retry_after=retry_after,
                task_id=task_id,
            )
        )

    @property
    def pending(self) -> int:
        """How many injected faults are still waiting for a request (a lasting one: 1)."""
        return sum(1 if i.remaining is None else i.remaining for i in self._queue)

    def clear(self, fault: Fault | None = None) -> None:
        """Forget the injected faults not yet consumed: all, or those of ``fault``."""
        self._queue[:] = [] if fault is None else [i for i in self._queue if i.fault is not fault]

    def take(self, kind: RequestKind, task_id: str | None = None) -> FaultChoice | None:
        """Return the fault for the next request of ``kind`` (consuming it), or ``None``.

        Args:
            kind: the kind of request.
            task_id: the task a GET or download names, if any.
        """
        for injection in self._queue:
            if injection.matches(kind, task_id):
                if injection.remaining is not None:
                    injection.remaining -= 1
                    if injection.remaining == 0:
                        self._queue.remove(injection)
                return self._choice(injection.fault, injection.delay, injection.retry_after)
        fault = self._draw(kind)
        return None if fault is None else self._choice(fault, None, None)

    def _draw(self, kind: RequestKind) -> Fault | None:
        applicable = [(f, r) for f, r in self._rates.items() if kind in f.kinds and r > 0]
        if not applicable:
            # No draw at all: a run without chaos leaves the RNG untouched.
            return None
        u = self._rng.random()
        total = 0.0
        for fault, rate in applicable:
            total += rate
            if u < total:
                return fault
        return None

    def _choice(self, fault: Fault, delay: float | None, retry_after: float | None) -> FaultChoice:
        return FaultChoice(
            fault=fault,
            delay=self._slow_delay if delay is None else delay,
            retry_after=self._retry_after if retry_after is None else retry_after,
            retry_after_given=retry_after is not None,
        )


def _checked_rates(rates: Mapping[Fault, float]) -> dict[Fault, float]:
    """Validate ``rates`` and return them in :class:`Fault` order (so draws are reproducible)."""
    for fault, rate in rates.items():
        if not isinstance(fault, Fault):
            msg = f"fault_rates keys must be Fault members, got {fault!r}"
            raise TypeError(msg)
        check_probability(f"fault_rates[{fault.name}]", rate)
    for kind in KINDS:
        total = sum(rate for fault, rate in rates.items() if kind in fault.kinds)
        if total > 1.0 + 1e-9:
            msg = f"fault_rates applying to {kind} requests add up to {total:g}, more than 1"
            raise ValueError(msg)
    return {fault: float(rates[fault]) for fault in Fault if fault in rates}
