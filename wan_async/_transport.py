"""The only module that imports aiohttp: one HTTP exchange in, JSON or a WanError out.

Every aiohttp exception and every non-2xx answer is translated here, once, into the tree of
:mod:`wan_async._exceptions`. Each translated error knows whether a failed submit may still have
created a task (``task_may_exist``, SPEC §2):

* certainly not created, an allow-list: the connection could not be opened, or the request was
  provably never written (a wait for a pooled connection or for DNS that timed out: aiohttp's
  request trace says whether the headers went out); the gateway's own JSON errors that it only
  sends before or instead of creating a task (see :func:`certainly_not_created`); and any 429;
* outcome unknown: everything else. The request was sent and then the connection broke or timed
  out; the answer is not the gateway's own (a proxy's HTML page, a truncated body, a 3xx); a
  gateway error sent after upstream accepted the task (``do_request_failed``,
  ``read_response_body_failed``, ``insert_task_failed``, ...) or with a code we do not know.

:meth:`Transport.stream` fetches a finished video from the object-storage host (SPEC §3.3)
through the same session: without the gateway's key, and logging the URL without its query
string, which is the signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import SimpleNamespace
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp
import attrs

from ._config import Secret, Timeouts
from ._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    DecodeError,
    ModelNotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    StorageError,
    TaskNotFound,
    TransportError,
    UnexpectedRedirect,
    WanConnectionError,
    WanTimeoutError,
)
from ._serde import ErrorBody, parse_error_body
from ._version import __version__

logger = logging.getLogger("wan_async")

_SNIPPET = 200
_REQUEST_ID_HEADERS = ("X-Oneapi-Request-Id", "X-Request-Id")
_STORAGE_REQUEST_ID_HEADERS = ("x-oss-request-id", "x-amz-request-id", *_REQUEST_ID_HEADERS)
#: Enough of a storage error body to find the XML's <Code> and <Message>.
_ERROR_BODY_LIMIT = 4096
#: The largest gateway answer read (decompressed); the API's are a few KiB.
MAX_ANSWER_BYTES = 4 * 2**20
_XML_FIELD = {
    name: re.compile(rf"<{name}>([^<]{{0,300}})</{name}>") for name in ("Code", "Message")
}
_QUOTA_CODES = frozenset({"quota_not_enough", "insufficient_user_quota"})
#: Task-shape codes the gateway sends only before or instead of calling upstream (SPEC §2 b):
#: upstream refused the task, the relay's own validation, the account's quota.
_NOT_CREATED_CODES = frozenset(
    {"fail_to_fetch_task", "invalid_json", "missing_model", "invalid_request", *_QUOTA_CODES}
)
#: Codes the gateway sends after upstream may have accepted the task: it failed to reach,
#: read or store upstream's answer. Never "certainly not created", whatever the HTTP status.
_AFTER_CREATE_CODES = frozenset(
    {
        "do_request_failed",
        "read_response_body_failed",
        "unmarshal_response_body_failed",
        "invalid_response",
        "insert_task_failed",
    }
)
#: Statuses of the middleware's ``{"error": ...}`` shape, which answers before the relay runs:
#: no key or a bad one, a key not allowed, the key's rate limit, no channel for the model.
_MIDDLEWARE_NOT_CREATED = frozenset({401, 403, 429, 503})


def certainly_not_created(status: int, error: ErrorBody) -> bool:
    """Whether an error answer to a submit proves that no task was created (SPEC §2 b).

    An allow-list: what is not on it leaves the outcome unknown. Any 429 is on it, the
    gateway's or a proxy's page alike: whoever answers 429 refuses the request instead of
    forwarding it (nginx ``limit_req``, a CDN's or API gateway's rate limit), and the gateway's
    own 429s all come before upstream is called.
    """
    if status == 429:
        return True
    if error.shape == "middleware":
        return status in _MIDDLEWARE_NOT_CREATED or error.code in _QUOTA_CODES
    if error.shape == "task":
        if error.code in _AFTER_CREATE_CODES:
            return False
        if error.code in _NOT_CREATED_CODES:
            return True
        # Any other 400 of the gateway's own comes from the relay's checks before upstream.
        return status == 400 and error.code is not None
    return False


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
        self._min_rate = (timeouts.download_min_rate, timeouts.download_window)
        # ``connect`` bounds everything before the request is written (a pooled connection,
        # DNS, the TCP and TLS handshakes): it fails as ConnectionTimeoutError, which proves
        # nothing was sent, before ``total`` could fire and leave that in doubt.
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total,
            connect=timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=timeouts.read,
        )
        # No total for a stream: a big video on a slow link may rightly take longer than any
        # one API exchange; a stalled one still trips the per-read limit.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=timeouts.read,
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
                trace_configs=[_SENT_TRACE],
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
        # Told by _SENT_TRACE when the request's headers go out; a session passed in has no
        # such trace, and then only a failure to connect proves nothing was sent.
        sent = _Sent(traced=_SENT_TRACE in session.trace_configs)
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
                trace_request_ctx=sent,
            ) as response:
                raw = await _read_at_most(response, MAX_ANSWER_BYTES)
                status = response.status
                headers = response.headers
        except aiohttp.ConnectionTimeoutError:
            raise WanTimeoutError(
                "timed out before the request was sent (waiting for a connection, DNS or "
                "the handshake)",
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
            if not sent.maybe:
                raise WanTimeoutError(
                    "timed out before the request was sent",
                    method=method,
                    path=path,
                    task_may_exist=False,
                ) from None
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
            when = "after the request was sent" if sent.maybe else "before the request was sent"
            raise WanConnectionError(
                f"the connection broke {when} ({type(exc).__name__}: {exc})",
                method=method,
                path=path,
                task_may_exist=sent.maybe,
            ) from None
        elapsed = time.monotonic() - started
        request_id = _header_request_id(headers)
        if raw is None:
            raise DecodeError(
                method=method,
                path=path,
                status=status,
                request_id=request_id,
                task_may_exist=method == "POST",
                hint=f"the answer is larger than the API ever sends "
                f"({MAX_ANSWER_BYTES // 2**20} MiB, decompressed): not read",
            )
        logger.debug(
            "%s %s -> %d in %.3fs (request id %s)", method, path, status, elapsed, request_id
        )
        return _decode(method, path, status, raw, headers, request_id)

    @contextlib.asynccontextmanager
    async def stream(self, url: str) -> AsyncIterator[Stream]:
        """GET an absolute URL on another host (the video storage) and stream its 2xx body.

        The gateway's ``Authorization`` header is never sent: the signed URL is its own
        credential, and the key must not leak to another host. Redirects are followed (they
        cannot carry a header that was never set). Logs and errors show the URL without its
        query string, which holds the signature.

        Use as ``async with transport.stream(url) as stream:`` and read the body with
        :meth:`Stream.read`; leaving the block releases the connection.

        Raises:
            WanConnectionError, WanTimeoutError: no answer, or the body broke off or stalled
                (also from :meth:`Stream.read`).
            APIError: (a subclass of) for a non-2xx answer, with what the storage host said.
            ClientClosedError: the transport was closed.
            ConfigurationError: a session passed in sends credentials with every request.
        """
        session = self._get_session()
        shown = redact_url(url)
        if "Authorization" in session.headers or session.auth is not None:
            # Our own session has neither; a caller's would hand them to the storage host.
            msg = (
                "the session sends credentials with every request; they must not reach the "
                "video storage host: set Authorization per request, not on the session"
            )
            raise ConfigurationError(msg)
        started = time.monotonic()
        with _translated(shown):
            response = await session.get(
                url,
                # Identity, so the bytes received are the bytes Content-Length declares.
                headers={"Accept-Encoding": "identity"},
                timeout=self._stream_timeout,
                allow_redirects=True,
            )
        try:
            request_id = _header_request_id(response.headers, _STORAGE_REQUEST_ID_HEADERS)
            logger.debug(
                "GET %s -> %d in %.3fs (request id %s)",
                shown,
                response.status,
                time.monotonic() - started,
                request_id,
            )
            if not 200 <= response.status < 300:
                with _translated(shown):
                    raw = await response.content.read(_ERROR_BODY_LIMIT)
                raise _storage_error(shown, response.status, raw, response.headers, request_id)
            yield Stream(response, shown, min_rate=self._min_rate)
        finally:
            # Hands a fully read connection back to the pool and closes one cut short.
            response.release()


class _Sent:
    """Whether a request may have reached the wire, as its trace tells."""

    __slots__ = ("headers_sent", "traced")

    def __init__(self, *, traced: bool) -> None:
        self.traced = traced
        self.headers_sent = False

    @property
    def maybe(self) -> bool:
        """False only when the trace proves the request was never written."""
        return self.headers_sent or not self.traced


async def _on_headers_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    sent = context.trace_request_ctx
    if isinstance(sent, _Sent):
        sent.headers_sent = True


def _sent_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    trace.freeze()
    return trace


#: One frozen trace config, shared by the sessions this module creates.
_SENT_TRACE = _sent_trace()


class Stream:
    """A 2xx answer from the storage host whose body is being read, chunk by chunk."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        shown: str,
        *,
        min_rate: tuple[float | None, float] = (None, 30.0),
    ) -> None:
        self._response = response
        self._rate, self._window = min_rate
        self._window_start = time.monotonic()
        self._window_bytes = 0
        #: The URL as it may be shown: ``scheme://host/path``, never the signature.
        self.url = shown
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    @property
    def content_length(self) -> int | None:
        """The body's declared length in bytes, or ``None`` when not declared."""
        return self._response.content_length

    @property
    def encoded(self) -> bool:
        """Whether the body came with a ``Content-Encoding`` (its length is then not the file's)."""
        return self.headers.get("Content-Encoding", "identity").lower() != "identity"

    async def read(self, size: int) -> bytes:
        """Return the next chunk of at most ``size`` bytes; ``b""`` at the end of the body.

        Raises:
            WanConnectionError: the connection broke before the body was complete.
            WanTimeoutError: no data arrived within the read timeout.
        """
        with _translated(self.url):
            chunk = await self._response.content.read(size)
        self._paced(len(chunk))
        return chunk

    def _paced(self, received: int) -> None:
        """Fail a body that comes slower than the slowest pace tolerated, per window."""
        if self._rate is None:
            return
        self._window_bytes += received
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < self._window:
            return
        if self._window_bytes < self._rate * elapsed:
            _raise_transport(
                WanTimeoutError,
                f"the download came at {self._window_bytes / elapsed:.0f} bytes/s over "
                f"{elapsed:.0f} s, slower than Timeouts.download_min_rate "
                f"({self._rate:.0f} bytes/s)",
                self.url,
            )
        self._window_start, self._window_bytes = now, 0


def redact_url(url: str) -> str:
    """``url`` as ``scheme://host[:port]/path``: no credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


@contextlib.contextmanager
def _translated(shown: str) -> Iterator[None]:
    """Translate aiohttp's errors while talking to the storage host (a GET: nothing to create).

    Messages name the exception type and never its text: aiohttp's texts may carry the full
    URL, signature included.
    """
    try:
        yield
    except aiohttp.ConnectionTimeoutError:
        _raise_transport(WanTimeoutError, "timed out opening the connection", shown)
    except aiohttp.ClientConnectorError as exc:
        why = exc.os_error.strerror or type(exc.os_error).__name__
        _raise_transport(WanConnectionError, f"could not connect: {why}", shown)
    except asyncio.TimeoutError:
        _raise_transport(WanTimeoutError, "timed out waiting for data", shown)
    except aiohttp.ClientPayloadError as exc:
        _raise_transport(
            WanConnectionError, f"the body was cut short ({type(exc).__name__})", shown
        )
    except (aiohttp.ClientError, OSError) as exc:
        _raise_transport(WanConnectionError, f"the connection broke ({type(exc).__name__})", shown)


def _raise_transport(cls: type[TransportError], message: str, shown: str) -> NoReturn:
    raise cls(message, method="GET", path=shown, task_may_exist=False) from None


def _storage_error(
    shown: str, status: int, raw: bytes, headers: Mapping[str, str], request_id: str | None
) -> StorageError:
    """The error for a non-2xx answer of the storage host, with its own hint."""
    text = raw.decode("utf-8", "replace")
    fields = {name: pattern.search(text) for name, pattern in _XML_FIELD.items()}
    code = fields["Code"].group(1).strip() if fields["Code"] else None
    message = fields["Message"].group(1).strip() if fields["Message"] else None
    return StorageError(
        method="GET",
        path=shown,
        status=status,
        code=code or None,
        message=message or None,
        request_id=request_id,
        # An error body we could read needs no snippet (and OSS echoes the signature in some).
        snippet=None if code or message else text[:_SNIPPET],
        retry_after=parse_retry_after(headers.get("Retry-After")),
        task_may_exist=False,
        hint=_storage_hint(status),
    )


def _storage_hint(status: int) -> str:
    if status in (401, 403):
        return "the storage host refused the signed URL"
    if status == 404:
        return "the storage host has no such video (removed after expiry, or a wrong URL)"
    if status == 429:
        return "the storage host asks to slow down; retry later"
    if status == 408 or status >= 500:
        return "the storage host failed; retrying later may work"
    return "the storage host refused the download"


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole (decompressed) body, or None once it proves longer than ``limit`` bytes (the
    rest is never read: the connection is dropped, not drained)."""
    if response.content_length is not None and response.content_length > limit:
        response.close()
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            response.close()
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
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
        # Some gateway versions answer a failed query with 200 and a task-shape error. A
        # cheap look first: this runs on every poll, and successes carry "success" or no code.
        failed = isinstance(parsed.get("error"), dict) or parsed.get("code") not in (
            None,
            "",
            "success",
        )
        if failed and parsed.get("data") is None:
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
    if 300 <= status < 400:
        hint = _redirect_hint(headers.get("Location"))
    return cls(
        method=method,
        path=path,
        status=status,
        code=error.code,
        message=error.message,
        request_id=request_id or error.request_id,
        snippet=None if error.from_gateway else snippet,
        retry_after=parse_retry_after(headers.get("Retry-After")),
        task_may_exist=not certainly_not_created(status, error),
        hint=hint,
    )


def _redirect_hint(location: str | None) -> str:
    where = f" to {redact_url(location)}" if location else ""
    return (
        f"the base URL redirects{where}; redirects are not followed (the key must not travel "
        "elsewhere): set base_url to the gateway's own address"
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
    if 300 <= status < 400:
        return UnexpectedRedirect, ""
    if 400 <= status < 500:
        if not from_gateway:
            return BadRequestError, "not the gateway's own answer: check the base URL"
        return BadRequestError, "the request was refused as it stands; fix it before retrying"
    return ServerError, "unexpected HTTP status from the gateway"


def _header_request_id(
    headers: Mapping[str, str], names: tuple[str, ...] = _REQUEST_ID_HEADERS
) -> str | None:
    for name in names:
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
