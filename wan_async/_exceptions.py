"""The exception tree of wan_async.

Every error the library raises derives from :class:`WanError`::

    WanError
    ├── ConfigurationError (also ValueError)   the client's own settings are unusable
    ├── ValidationError (also ValueError)      a request breaks a model rule; nothing was sent
    ├── ClientClosedError                      the client was used after aclose()
    ├── TaskFailed                             the task ended in FAILURE upstream
    ├── DeadlineExceeded (also TimeoutError)   a wait or a batch ran out of time
    ├── BatchAborted                           a batch item was not run to its end
    ├── JournalError                           a batch journal cannot be used
    ├── StoreUnavailable                       the fleet's task store cannot be reached
    ├── SubmitOutcomeUnknown                   a submit was sent, its answer was lost
    ├── StatusUnavailable                      a task's status checks kept failing
    ├── DownloadError                          a video could not be saved from the storage host
    │   ├── VideoURLExpired                    signed URL refused (valid 24 h): get a fresh one
    │   ├── IncompleteDownload                 the body's length is not its Content-Length
    │   └── StorageError (also APIError)       any other error answer of the storage host
    ├── TransportError                         no HTTP answer at all
    │   ├── WanConnectionError                 connection refused, reset or dropped
    │   └── WanTimeoutError                    connect or read timed out
    └── APIError                               an HTTP answer that is an error
        ├── AuthenticationError                401: missing or invalid API key
        ├── PermissionDeniedError              403: key not allowed here
        │   └── QuotaExceededError             403: not enough quota
        ├── BadRequestError                    4xx: the gateway refused the request
        │   └── TaskNotFound                   400 task_not_exist: unknown or expired id
        ├── ModelNotFoundError                 503 model_not_found: no channel serves the model
        ├── RateLimitedError                   429: slow down
        ├── ServerError                        5xx, gateway's JSON or a proxy's page
        ├── DecodeError                        a 2xx answer that is not what the API sends
        └── UnexpectedRedirect                 3xx: the base URL points somewhere else

Errors carry what the server said (HTTP status, code, message, request id) and never the API key.
A download's other failures are the transport errors above, naming the storage URL without
its query string (the signature), never the URL itself.
``task_may_exist`` tells, for a failed submit, whether the gateway may have created (and billed)
a task anyway: see :class:`SubmitOutcomeUnknown`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

import attrs

from ._failures import retry_worthy

if TYPE_CHECKING:
    from ._models import TaskSnapshot, VideoRequest


class WanError(Exception):
    """Root of every error raised by wan_async."""

    #: For a failed submit: the gateway may have created (and billed) a task anyway.
    task_may_exist: bool = False

    @property
    def retryable(self) -> bool:
        """Whether repeating the same call later may succeed."""
        return False


class ConfigurationError(WanError, ValueError):
    """The client's settings are unusable (no API key, bad base URL)."""


@attrs.frozen(kw_only=True)
class Problem:
    """One broken rule of a request: which field, what it held and what is allowed."""

    field: str
    value: object
    allowed: str

    def __str__(self) -> str:
        return f"{self.field}={_short_repr(self.value)}: {self.allowed}"


class ValidationError(WanError, ValueError):
    """A request breaks one or more model rules; it was not sent."""

    def __init__(self, problems: Sequence[Problem], *, model: str) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.model = model
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(
            f"invalid request for model {model!r} ({n} problem{'s' if n != 1 else ''}), "
            f"nothing was sent; fix these and try again:\n{lines}"
        )


class ClientClosedError(WanError):
    """The client was closed; create a new one."""


class TaskFailed(WanError):
    """The task ended in FAILURE: the gateway (or upstream) gave up on it."""

    def __init__(
        self,
        *,
        task_id: str,
        code: str | None,
        message: str | None,
        snapshot: TaskSnapshot | None = None,
    ) -> None:
        self.task_id = task_id
        self.code = code
        self.message = message
        self.snapshot = snapshot
        if code == "DataInspectionFailed":
            hint = "the prompt was refused by content moderation; rephrase it"
        elif retry_worthy(code):
            hint = "upstream failed, not the request: submitting it again may succeed"
        else:
            hint = "check the code and message, fix the request, and submit a new task"
        super().__init__(
            f"task {task_id} failed: code={code or '-'} message={message or '-'}; {hint}"
        )

    @property
    def retryable(self) -> bool:
        """Whether the same request, submitted again as a new task, may succeed: upstream's
        own trouble (``InternalError``, ``Throttling``, timeouts), never the request's
        (content inspection, invalid parameters) nor an unknown code."""
        return retry_worthy(self.code)


class DeadlineExceeded(WanError, TimeoutError):
    """A wait or a batch ran out of time; a submitted task goes on and can be attached later."""

    def __init__(
        self, message: str, *, task_id: str | None = None, last_status: str | None = None
    ) -> None:
        self.task_id = task_id
        #: The task's status as last seen (as the gateway spelled it), if it was ever seen.
        self.last_status = last_status
        super().__init__(message)


class BatchAborted(WanError):
    """A batch item was not run to its end because the batch stopped (fail-fast, a bad key).

    ``task_id`` is set when the item had been submitted: that task goes on upstream and can be
    attached later. ``cause`` is the error that stopped the batch.
    """

    def __init__(self, message: str, *, task_id: str | None, cause: BaseException | None) -> None:
        self.task_id = task_id
        self.cause = cause
        super().__init__(message)


class JournalError(WanError):
    """A batch journal cannot be read or written, is damaged, or another run holds it."""


class StoreUnavailable(WanError):
    """The task store a fleet of clients shares (Redis) cannot be reached or failed.

    The client itself never raises it to a caller: it goes on alone (polling its own and
    followed tasks) and says so in a log line. A :class:`~wan_async.TaskStore` raises it.
    """

    @property
    def retryable(self) -> bool:
        return True


class SubmitOutcomeUnknown(WanError):
    """A submit reached the wire but its answer was lost: a task may exist and be billed.

    The gateway has no idempotency key, so the library never resubmits such a request on its
    own. Look for the task in the gateway's console or logs (by time and prompt), or resubmit
    deliberately if a possible duplicate is acceptable.
    """

    task_may_exist = True

    def __init__(
        self,
        *,
        request: VideoRequest,
        submitted_at: float,
        cause: WanError | None,
        reason: str | None = None,
    ) -> None:
        self.request = request
        self.submitted_at = submitted_at
        #: The transport or API error; ``None`` when the answer was lost by an earlier run.
        self.cause = cause
        #: The cause as an earlier run recorded it in the batch journal, if it did; ``None``
        #: with ``cause`` also ``None`` means that run stopped before the answer came.
        self.reason = reason
        why = (
            cause
            if cause is not None
            else f"an earlier run recorded: {reason}"
            if reason
            else "the previous run stopped before the answer came"
        )
        super().__init__(
            f"submit of a {request.model} task (prompt {_short_repr(request.prompt)}) was sent "
            f"at unix time {submitted_at:.0f} but its answer was lost ({why}); a task may "
            "exist and be billed. It was not resubmitted: check the gateway's task list, or "
            "resubmit yourself if a duplicate is acceptable"
        )


class StatusUnavailable(WanError):
    """A task's status checks kept failing for ``PollPolicy.give_up_after`` seconds.

    The gateway was unreachable, failing or answering what cannot be read for that long. The
    task itself may still run upstream: attach to its id later. ``cause`` is the last error.
    """

    def __init__(self, *, task_id: str, failing_for: float, cause: WanError) -> None:
        self.task_id = task_id
        self.failing_for = failing_for
        self.cause = cause
        super().__init__(
            f"the status of task {task_id} could not be checked for {failing_for:.0f} s "
            f"(last error: {cause}); the task may still run upstream: attach to it later, "
            "once the gateway answers again"
        )


class DownloadError(WanError):
    """A video could not be fetched from the storage host and saved; nothing was written."""


class VideoURLExpired(DownloadError):
    """The storage host refused the signed video URL: expired (24 h) or no longer valid."""

    def __init__(
        self,
        *,
        task_id: str | None,
        status: int,
        code: str | None,
        message: str | None,
        request_id: str | None,
    ) -> None:
        self.task_id = task_id
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        said = " ".join(
            part
            for part in (
                f"HTTP {status}",
                f"code={code}" if code else "",
                f"message={_short_repr(message, 200)}" if message else "",
                f"request_id={request_id}" if request_id else "",
            )
            if part
        )
        again = f"get_task({task_id!r})" if task_id else "get_task(task_id)"
        super().__init__(
            f"the signed video URL{f' of task {task_id}' if task_id else ''} was refused by the "
            f"storage host ({said}): video URLs are valid for 24 h after the task finished; "
            f"call {again} for a fresh URL if the gateway provides one, or generate the video "
            "again"
        )


class IncompleteDownload(DownloadError):
    """The video's body ended at another length than its ``Content-Length`` declared."""

    def __init__(self, *, url: str, expected: int, received: int) -> None:
        #: The storage URL without its query string.
        self.url = url
        self.expected = expected
        self.received = received
        super().__init__(
            f"GET {url}: received {received} bytes of a body declared as {expected}; "
            "retrying may work"
        )

    @property
    def retryable(self) -> bool:
        return True


class TransportError(WanError):
    """No usable HTTP answer: the connection failed or timed out."""

    def __init__(self, message: str, *, method: str, path: str, task_may_exist: bool) -> None:
        self.method = method
        self.path = path
        self.task_may_exist = task_may_exist
        super().__init__(f"{method} {path}: {message}")

    @property
    def retryable(self) -> bool:
        return True


class WanConnectionError(TransportError):
    """The connection could not be opened, or broke before an answer arrived."""


class WanTimeoutError(TransportError):
    """Connecting or reading the answer took longer than the configured timeout."""


class APIError(WanError):
    """An HTTP answer that is an error, from the gateway or a proxy in front of it."""

    def __init__(
        self,
        *,
        method: str,
        path: str,
        status: int,
        code: str | None = None,
        message: str | None = None,
        request_id: str | None = None,
        snippet: str | None = None,
        retry_after: float | None = None,
        task_may_exist: bool = False,
        hint: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.snippet = snippet
        self.retry_after = retry_after
        self.task_may_exist = task_may_exist
        parts = [f"{method} {path} -> HTTP {status}"]
        if code:
            parts.append(f"code={code}")
        if message:
            parts.append(f"message={_short_repr(message, 300)}")
        if snippet and not message:
            parts.append(f"body={_short_repr(snippet, 200)}")
        if request_id:
            parts.append(f"request_id={request_id}")
        if retry_after is not None:
            parts.append(f"retry_after={retry_after:g}s")
        text = " ".join(parts)
        super().__init__(f"{text}; {hint}" if hint else text)


class AuthenticationError(APIError):
    """401: the API key is missing or invalid; set WAN_API_KEY or pass api_key=."""


class PermissionDeniedError(APIError):
    """403: the key may not do this (IP, group or model not allowed)."""


class QuotaExceededError(PermissionDeniedError):
    """403: the account has not enough quota left; top it up."""


class BadRequestError(APIError):
    """4xx: the gateway or upstream refused the request as it stands."""


class TaskNotFound(BadRequestError):
    """The gateway knows no task with this id (wrong id, another key's task, or expired)."""


class ModelNotFoundError(APIError):
    """503 model_not_found: the gateway has no channel serving this model."""


class RateLimitedError(APIError):
    """429: the gateway or upstream asks to slow down."""

    @property
    def retryable(self) -> bool:
        return True


class ServerError(APIError):
    """5xx (or 408): the gateway, upstream or a proxy failed; retrying later may work."""

    @property
    def retryable(self) -> bool:
        return True


class UnexpectedRedirect(APIError):
    """3xx: something in front of the gateway redirects; redirects are never followed.

    Following one could carry the API key to another address. Every request would get the same
    answer: set ``base_url`` to the address it redirects to. For a submit the outcome is
    unknown (SPEC §2: the answer is not the gateway's own).
    """


class DecodeError(APIError):
    """A success status whose body is not what the API sends (HTML, truncated, wrong shape)."""

    @property
    def retryable(self) -> bool:
        return True


class StorageError(DownloadError, APIError):
    """The storage host answered a download with an error (404, 5xx, ...); nothing was saved.

    Carries the HTTP status, and the storage host's own ``code`` and ``message`` when its XML
    body gave them. 408, 429 and 5xx are retried by the client before this is raised.
    """

    @property
    def retryable(self) -> bool:
        return self.status in (408, 429) or self.status >= 500


def reraise(error: BaseException, traceback: TracebackType | None) -> NoReturn:
    """Raise a stored error again with the traceback it was stored with.

    A plain ``raise error`` adds the raising frames to the same traceback object on every
    await of a settled handle, which then grows without bound.
    """
    raise error.with_traceback(traceback)


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
