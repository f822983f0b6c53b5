"""The only module that imports aiohttp: one HTTP exchange in, JSON or a WanError out.

Every aiohttp exception and every non-2xx answer is translated here, once, into the tree of
:mod:`wan_async._exceptions`. Each translated error knows whether a failed submit may still have
created a task (``task_may_exist``, SPEC §2):

* certainly not created: the connection could not be opened, or the gateway itself answered
  with one of its JSON error shapes (except ``do_request_failed``);
* outcome unknown: the request was sent and then the connection broke or timed out, or the
  answer is not the gateway's own (a proxy's HTML page, a truncated body).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs

from ._config import Secret, Timeouts
from ._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    DecodeError,
    ModelNotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    TaskNotFound,
    WanConnectionError,
    WanTimeoutError,
)
from ._serde import parse_error_body
from ._version import __version__

logger = logging.getLogger("wan_async")

_SNIPPET = 200
_REQUEST_ID_HEADERS = ("X-Oneapi-Request-Id", "X-Request-Id")
#: Upstream's own call broke mid-way: the gateway cannot tell whether upstream made the task.
_UNKNOWN_OUTCOME_CODES = frozenset({"do_request_failed"})
_QUOTA_CODES = frozenset({"quota_not_enough", "insufficient_user_quota"})


@attrs.frozen(kw_only=True)
class Answer:
    """A successful exchange: the HTTP status and the decoded JSON body."""

    status: int
    body: Any
    request_id: str | None


class Transport:
    """Sends requests to the gateway with the key, and translates every failure.

    Args:
        base_url: the gateway, without a trailing slash.
        api_key: sent as ``Authorization: Bearer`` on gateway requests only.
        timeouts: per-exchange limits.
        session: an aiohttp session to use and never close; by default one is created on first
            use (inside the running loop) and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Secret,
        timeouts: Timeouts,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._session = session
        self._owns_session = session is None
        self._closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            msg = "the client is closed; create a new WanClient"
            raise ClientClosedError(msg)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": f"wan-async/{__version__}"},
                connector=aiohttp.TCPConnector(limit=100),
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        # Built per request, never stored on the session: a video download through the same
        # session must not carry the gateway's key to the storage host.
        return {"Authorization": f"Bearer {self._api_key.reveal()}", "Accept": "application/json"}

    async def aclose(self) -> None:
        """Close the session if this transport created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    async def request(self, method: str, path: str, *, body: object = None) -> Answer:
        """Exchange one request with the gateway and return its decoded JSON answer.

        Raises:
            WanConnectionError, WanTimeoutError: no answer arrived.
            APIError: (a subclass of) for every non-2xx answer and every undecodable one.
            ClientClosedError: the transport was closed.
        """
        session = self._get_session()
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        started = time.monotonic()
        try:
            async with session.request(
                method,
                self._base_url + path,
                data=data,
                headers=self._headers()
                | ({"Content-Type": "application/json"} if data is not None else {}),
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
        except aiohttp.ConnectionTimeoutError as exc:
            raise WanTimeoutError(
                f"timed out opening the connection ({exc})",
                method=method,
                path=path,
                task_may_exist=False,
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise WanConnectionError(
                f"could not connect: {exc.os_error or exc}",
                method=method,
                path=path,
                task_may_exist=False,
            ) from None
        except asyncio.TimeoutError:
            raise WanTimeoutError(
                "timed out waiting for the answer after the request was sent",
                method=method,
                path=path,
                task_may_exist=True,
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise WanConnectionError(
                f"the answer was cut off ({type(exc).__name__})",
                method=method,
                path=path,
                task_may_exist=True,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise WanConnectionError(
                f"the connection broke after the request was sent ({type(exc).__name__}: {exc})",
                method=method,
                path=path,
                task_may_exist=True,
            ) from None
        elapsed = time.monotonic() - started
        request_id = _header_request_id(headers)
        logger.debug(
            "%s %s -> %d in %.3fs (request id %s)", method, path, status, elapsed, request_id
        )
        return _decode(method, path, status, raw, headers, request_id)


def _decode(
    method: str,
    path: str,
    status: int,
    raw: bytes,
    headers: Mapping[str, str],
    request_id: str | None,
) -> Answer:
    snippet = raw[:_SNIPPET].decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = _NOT_JSON
    if 200 <= status < 300:
        if parsed is _NOT_JSON or not isinstance(parsed, dict):
            raise DecodeError(
                method=method,
                path=path,
                status=status,
                request_id=request_id,
                snippet=snippet,
                task_may_exist=True,
                hint="the answer is not the API's JSON (truncated, or a proxy's page)",
            )
        error = parse_error_body(parsed)
        # Some gateway versions answer a failed query with 200 and a task-shape error.
        if error.code not in (None, "success") and parsed.get("data") is None:
            raise _api_error(method, path, status, headers, snippet, parsed, request_id)
        return Answer(status=status, body=parsed, request_id=request_id)
    raise _api_error(method, path, status, headers, snippet, parsed, request_id)


class _NotJson:
    pass


_NOT_JSON: Any = _NotJson()


def _api_error(
    method: str,
    path: str,
    status: int,
    headers: Mapping[str, str],
    snippet: str,
    parsed: Any,
    request_id: str | None,
) -> APIError:
    error = parse_error_body(parsed)
    cls, hint = _classify(status, error.code, from_gateway=error.from_gateway)
    return cls(
        method=method,
        path=path,
        status=status,
        code=error.code,
        message=error.message,
        request_id=request_id or error.request_id,
        snippet=None if error.from_gateway else snippet,
        retry_after=parse_retry_after(headers.get("Retry-After")),
        task_may_exist=not error.from_gateway or error.code in _UNKNOWN_OUTCOME_CODES,
        hint=hint,
    )


def _classify(status: int, code: str | None, *, from_gateway: bool) -> tuple[type[APIError], str]:
    """Pick the error class and the what-to-do hint for an error answer."""
    if code == "task_not_exist":
        return TaskNotFound, "the id is unknown to this gateway and key, or has expired (24 h)"
    if code in _QUOTA_CODES:
        return QuotaExceededError, "the account is out of quota; top it up"
    if code == "model_not_found":
        return ModelNotFoundError, "the gateway serves no such model; check the model name"
    if status == 401:
        return AuthenticationError, "check the API key (api_key= or WAN_API_KEY)"
    if status == 403:
        return PermissionDeniedError, "the key may not do this (IP, group or model not allowed)"
    if status == 429:
        return RateLimitedError, "too many requests; slow down and retry later"
    if status == 408 or status >= 500:
        where = "the gateway or upstream" if from_gateway else "a proxy in front of the gateway"
        return ServerError, f"{where} failed; retrying later may work"
    if 400 <= status < 500:
        if not from_gateway:
            return BadRequestError, "not the gateway's own answer: check the base URL"
        return BadRequestError, "the request was refused as it stands; fix it before retrying"
    return ServerError, "unexpected HTTP status from the gateway"


def _header_request_id(headers: Mapping[str, str]) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Read a ``Retry-After`` header: delay-seconds or an HTTP-date. Garbage reads as ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)
