"""The client: its settings, its lifecycle (open -> closed) and the calls it offers."""

from __future__ import annotations

import enum
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

from ._clock import Clock, SystemClock
from ._config import Timeouts, resolve_api_key, resolve_base_url
from ._exceptions import ClientClosedError, DecodeError, SubmitOutcomeUnknown, WanError
from ._models import TaskCreated, TaskSnapshot, VideoRequest
from ._serde import created_from_wire, request_to_wire, snapshot_from_wire
from ._transport import Answer, Transport

if TYPE_CHECKING:
    import aiohttp

SUBMIT_PATH = "/v1/video/generations"

_T = TypeVar("_T")


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class WanClient:
    """An async client for the Wan text-to-video gateway.

    Use it as ``async with WanClient() as client:``, or call :meth:`aclose` when done. A closed
    client cannot be reopened. One client is safe to share between many concurrent callers.

    Args:
        api_key: the gateway key; default ``$WAN_API_KEY``.
        base_url: the gateway; default ``$WAN_BASE_URL``, else the documented service.
        timeouts: limits of one HTTP exchange.
        session: an aiohttp session to use (and never close); default: one of our own.
        clock: where time is read (a :class:`~wan_async.testing.ScaledClock` in tests).
        allow_insecure_http: permit plain ``http://`` to a host that is not loopback.

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
        clock: Clock | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        self.base_url = resolve_base_url(base_url, allow_insecure_http=allow_insecure_http)
        self.clock: Clock = clock or SystemClock()
        self._transport = Transport(
            base_url=self.base_url,
            api_key=resolve_api_key(api_key),
            timeouts=timeouts,
            session=session,
        )
        self._state = _State.OPEN

    def __repr__(self) -> str:
        return f"<WanClient base_url={self.base_url!r} {self._state.value}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._state is _State.CLOSED

    async def __aenter__(self) -> WanClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client and its HTTP session (unless the session was passed in). Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._transport.aclose()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            msg = "this WanClient is closed and cannot be reused; create a new one"
            raise ClientClosedError(msg)

    async def create_task(self, request: VideoRequest) -> TaskCreated:
        """Submit one task, once: never retried here, since a retry may bill twice.

        Returns:
            The created task's id and status.

        Raises:
            SubmitOutcomeUnknown: the request was sent but its answer was lost; a task may
                exist. Its ``cause`` is the transport or API error.
            WanError: any other failure, in which case no task was created.
        """
        self._check_open()
        if not isinstance(request, VideoRequest):
            msg = f"create_task() takes a VideoRequest, got {type(request).__name__}"
            raise TypeError(msg)
        submitted_at = self.clock.time()
        try:
            body = request_to_wire(request)
            answer = await self._transport.request("POST", SUBMIT_PATH, body=body)
            return _decoded(answer, SUBMIT_PATH, "POST", created_from_wire)
        except WanError as exc:
            if exc.task_may_exist:
                raise SubmitOutcomeUnknown(
                    request=request, submitted_at=submitted_at, cause=exc
                ) from exc
            raise

    async def get_task(self, task_id: str) -> TaskSnapshot:
        """Fetch a task's status as the gateway last refreshed it (one GET).

        Raises:
            TaskNotFound: the gateway knows no such task.
            WanError: the query failed.
        """
        self._check_open()
        if not isinstance(task_id, str) or not task_id.strip():
            msg = f"task_id must be a non-empty string, got {task_id!r}"
            raise ValueError(msg)
        path = f"{SUBMIT_PATH}/{quote(task_id, safe='')}"
        answer = await self._transport.request("GET", path)
        return _decoded(answer, path, "GET", snapshot_from_wire)


def _decoded(answer: Answer, path: str, method: str, parse: Callable[[object], _T]) -> _T:
    try:
        return parse(answer.body)
    except ValueError as exc:
        raise DecodeError(
            method=method,
            path=path,
            status=answer.status,
            message=str(exc),
            request_id=answer.request_id,
            snippet=repr(answer.body)[:200],
            task_may_exist=method == "POST",
            hint="the answer's JSON is not shaped like the API's",
        ) from None
