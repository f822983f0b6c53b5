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

Proxies: the session this module creates sends every request (API calls and downloads alike)
through the proxy ``HTTP_PROXY`` / ``HTTPS_PROXY`` name, except to the hosts ``NO_PROXY``
exempts, unless ``trust_env=False`` (see :class:`EnvProxies`). A session passed in keeps its own
``trust_env``. Errors name a proxy as ``scheme://host:port``, never with its credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import SimpleNamespace
from typing import Any, NoReturn
from urllib.parse import SplitResult, unquote, urlsplit
from urllib.request import getproxies_environment

import aiohttp
import attrs

from ._config import Secret, Timeouts, _is_loopback
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
    own 429s all come before upstream is called. So is any 407: only a forward proxy sends it,
    asking for its own credentials before it forwards anything (RFC 9110 §15.5.8).
    """
    if status in (407, 429):
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
class Proxy:
    """One proxy from the environment: its URL as shown, and as given to aiohttp."""

    #: ``scheme://host[:port]``: what messages show, never the credentials.
    url: str
    host: str
    #: ``scheme://[user:password@]host[:port]``, for aiohttp alone: it sends the credentials
    #: as ``Proxy-Authorization`` to the proxy only (on the request for a plain-http URL, on
    #: the ``CONNECT`` for https). Not ``proxy_auth=``, deprecated in aiohttp 3.14, nor
    #: ``proxy_headers=``, which 3.14 sends on the ``CONNECT`` only.
    given: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class EnvProxies:
    """The proxies ``HTTP_PROXY`` / ``HTTPS_PROXY`` name and the hosts ``NO_PROXY`` exempts.

    Read once, when the client is created, as httpx does; lower-case names win over upper-case
    ones (and an empty lower-case one unsets), ``HTTP_PROXY`` is ignored under CGI
    (``REQUEST_METHOD`` set): :func:`urllib.request.getproxies_environment`'s rules. ``NO_PROXY``
    is a comma-separated list matched on the host (see :func:`_exempt`).

    Unlike aiohttp's own ``trust_env``, ``~/.netrc`` is never read: aiohttp would send its
    entry for a host as Basic auth, which clashes with the key's ``Authorization`` on a gateway
    request and hands the storage host credentials that a signed URL never needs.
    """

    by_scheme: Mapping[str, Proxy] = attrs.field(factory=dict)
    no_proxy: str | None = None

    @classmethod
    def from_env(cls) -> EnvProxies:
        """The proxies of the environment now.

        Raises:
            ConfigurationError: a proxy is not an ``http://`` or ``https://`` URL.
        """
        found = getproxies_environment()
        return cls(
            by_scheme={
                scheme: _parse_proxy(scheme, found[scheme])
                for scheme in ("http", "https")
                if found.get(scheme, "").strip()
            },
            no_proxy=found.get("no"),
        )

    def for_url(self, url: str) -> Proxy | None:
        """The proxy to send a request for ``url`` through, or ``None`` to connect directly.

        A loopback host goes through a proxy only when that proxy is on loopback too: a proxy
        elsewhere cannot reach this machine's loopback, and a plain-http request to it (allowed
        for loopback only) would carry the key across the network in clear.
        """
        parts = urlsplit(url)
        proxy = self.by_scheme.get(parts.scheme)
        host = parts.hostname
        if proxy is None or host is None:
            return None
        if self.no_proxy and _exempt(host, self.no_proxy):
            return None
        if _is_loopback(host) and not _is_loopback(proxy.host):
            return None
        return proxy


def _exempt(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``host``: ``*``; the host itself (``localhost``,
    ``127.0.0.1``, ``[::1]``); a domain it is in (``example.com`` or ``.example.com`` exempt
    ``api.example.com``); a network it is in (``10.0.0.0/8``). A port in an entry is ignored.
    """
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.lower().split(","):
        name = entry.strip()
        if name == "*":
            return True
        if name.startswith("["):  # [::1] or [::1]:8080
            name = name[1:].partition("]")[0]
        elif name.count(":") == 1:  # host:port
            name = name.partition(":")[0]
        name = name.lstrip("*").lstrip(".").rstrip(".")
        if not name:
            continue
        if host == name or host.endswith(f".{name}"):
            return True
        if address is not None and "/" in name:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(name, strict=False):
                    return True
    return False


def _parse_proxy(scheme: str, value: str) -> Proxy:
    """A proxy URL of the environment (``host:port`` alone means ``http://host:port``)."""
    raw = value.strip()
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    where = f"{scheme.upper()}_PROXY ({_shown_proxy(parts)})"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError
        if ":" in unquote(parts.username or ""):
            raise ValueError  # Basic auth cannot carry it (RFC 7617)
    except ValueError:
        msg = (
            f"{where} is not an http:// or https:// proxy URL (http://[user:password@]host:port):"
            " fix it, or pass trust_env=False to ignore the environment's proxies"
        )
        raise ConfigurationError(msg) from None
    return Proxy(
        url=_shown_proxy(parts), host=parts.hostname, given=f"{parts.scheme}://{parts.netloc}"
    )


def _no_userinfo(exc: BaseException) -> str:
    """``str(exc)`` without the ``user:password@`` of any URL in it: aiohttp's texts may name
    the proxy URL it was given, credentials included."""
    return _USERINFO.sub("//", str(exc))


_USERINFO = re.compile(r"//[^/@\s'\"]*@")


def _shown_proxy(parts: SplitResult) -> str:
    """``scheme://host[:port]`` of a proxy URL: never its credentials (nor a path)."""
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def trace_config() -> aiohttp.TraceConfig:
    """The aiohttp trace config to put in a session you pass to :class:`~wan_async.WanClient`.

    With it, the client tells a request that was provably never sent (it timed out waiting for
    a pooled connection, say) from one that may have reached the gateway. Without it, such a
    failure reads as "outcome unknown": for a submit, :class:`~wan_async.SubmitOutcomeUnknown`,
    which says a billed task may exist although nothing was sent. Use it as::

        session = aiohttp.ClientSession(trace_configs=[wan_async.trace_config()])

    It is one frozen trace config, the same object at every call: it keeps no state of its
    own (what it learns goes into each request's own context), so any number of sessions may
    share it, beside trace configs of your own.
    """
    return _SENT_TRACE


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
            use (inside the running loop) and closed by :meth:`aclose`. Without
            :func:`trace_config` in its ``trace_configs``, a warning is logged (once, here).
        trust_env: send our own session's requests through the environment's proxies
            (:class:`EnvProxies`); a session passed in keeps its own ``trust_env``.

    Raises:
        ConfigurationError: ``trust_env`` and an environment proxy that is not an http(s) URL.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Secret,
        timeouts: Timeouts,
        session: aiohttp.ClientSession | None = None,
        trust_env: bool = True,
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
        # Ours only: a session passed in is never changed, its own trust_env applies.
        self._proxies = EnvProxies.from_env() if trust_env and session is None else EnvProxies()
        if session is not None and _SENT_TRACE not in session.trace_configs:
            # Once per client, when it is created: before anything is sent, and not again for
            # each request. A client is long-lived (it owns a poller), so this is rare.
            logger.warning(
                "the aiohttp session given to WanClient has no wan_async.trace_config(): a "
                "request that fails before it is sent (a wait for a pooled connection that "
                "times out) will read as outcome unknown, and a submit as SubmitOutcomeUnknown. "
                "Create the session with trace_configs=[wan_async.trace_config()]"
            )

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
        url = self._base_url + path
        proxy = self._proxies.for_url(url)
        via = f" (through the proxy {proxy.url})" if proxy is not None else ""
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        # Told by _SENT_TRACE when the request's headers go out; a session passed in has no
        # such trace, and then only a failure to connect proves nothing was sent.
        sent = _Sent(traced=_SENT_TRACE in session.trace_configs)
        started = time.monotonic()
        try:
            async with session.request(
                method,
                url,
                data=data,
                headers=self._headers()
                | ({"Content-Type": "application/json"} if data is not None else {}),
                timeout=self._timeout,
                allow_redirects=False,
                trace_request_ctx=sent,
                proxy=None if proxy is None else proxy.given,
            ) as response:
                raw = await _read_at_most(response, MAX_ANSWER_BYTES)
                status = response.status
                headers = response.headers
        except aiohttp.ConnectionTimeoutError:
            raise WanTimeoutError(
                "timed out before the request was sent (waiting for a connection, DNS or "
                f"the handshake){via}",
                method=method,
                path=path,
                task_may_exist=False,
            ) from None
        except aiohttp.ClientProxyConnectionError as exc:
            raise WanConnectionError(
                f"could not connect to the proxy {exc.host}:{exc.port}: {exc.os_error}",
                method=method,
                path=path,
                task_may_exist=False,
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise WanConnectionError(
                f"could not connect: {exc.os_error or exc}{via}",
                method=method,
                path=path,
                task_may_exist=False,
            ) from None
        except aiohttp.ClientHttpProxyError as exc:
            # The proxy refused the tunnel (CONNECT, for https): nothing reached the gateway.
            raise _proxy_refused(method, path, exc.status, exc.message, via) from None
        except asyncio.TimeoutError:
            # The total timeout, which may also end a wait for a pooled connection (when it
            # comes before ``connect``, or there is none): only the trace tells.
            if not sent.maybe:
                raise WanTimeoutError(
                    f"timed out before the request was sent (waiting for a connection){via}",
                    method=method,
                    path=path,
                    task_may_exist=False,
                ) from None
            raise WanTimeoutError(
                "timed out waiting for the answer after the request was sent"
                + ("" if sent.traced else " (or before: the session has no trace_config())")
                + via,
                method=method,
                path=path,
                task_may_exist=True,
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise WanConnectionError(
                f"the answer was cut off ({type(exc).__name__}){via}",
                method=method,
                path=path,
                task_may_exist=True,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            when = "after the request was sent" if sent.maybe else "before the request was sent"
            raise WanConnectionError(
                f"the connection broke {when} ({type(exc).__name__}: {_no_userinfo(exc)}){via}",
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
        proxy = self._proxies.for_url(url)
        with _translated(shown):
            response = await session.get(
                url,
                # Identity, so the bytes received are the bytes Content-Length declares.
                headers={"Accept-Encoding": "identity"},
                timeout=self._stream_timeout,
                allow_redirects=True,
                # Chosen for the first URL: a redirect elsewhere keeps the same proxy.
                proxy=None if proxy is None else proxy.given,
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
    except aiohttp.ClientProxyConnectionError as exc:
        why = exc.os_error.strerror or type(exc.os_error).__name__
        where = f"{exc.host}:{exc.port}"
        _raise_transport(
            WanConnectionError, f"could not connect to the proxy {where}: {why}", shown
        )
    except aiohttp.ClientHttpProxyError as exc:
        hint = f": {_PROXY_AUTH_HINT}" if exc.status == 407 else ""
        _raise_transport(
            WanConnectionError, f"the proxy refused the tunnel (HTTP {exc.status}){hint}", shown
        )
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
    if status == 407:
        return _PROXY_AUTH_HINT
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


#: What to do about a 407, whoever asked (the gateway never sends one).
_PROXY_AUTH_HINT = (
    "a proxy asks for credentials (407 Proxy Authentication Required): put them in the proxy "
    "URL (HTTPS_PROXY / HTTP_PROXY=http://user:password@host:port), or bypass the proxy "
    "(NO_PROXY, or trust_env=False)"
)


def _proxy_refused(method: str, path: str, status: int, reason: str, via: str) -> APIError:
    """The error for a proxy's refusal to open a tunnel: nothing reached the gateway."""
    if status == 407:
        cls: type[APIError] = BadRequestError
        hint = _PROXY_AUTH_HINT
    else:
        cls = (
            ServerError
            if status == 408 or status >= 500
            else RateLimitedError
            if status == 429
            else BadRequestError
        )
        hint = "the proxy refused to open a tunnel to the gateway: check its settings"
    return cls(
        method=method,
        path=path,
        status=status,
        message=reason or None,
        task_may_exist=False,
        hint=f"{hint}{via}",
    )


def _classify(status: int, code: str | None, *, from_gateway: bool) -> tuple[type[APIError], str]:
    """Pick the error class and the what-to-do hint for an error answer."""
    if status == 407:
        return BadRequestError, _PROXY_AUTH_HINT
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
