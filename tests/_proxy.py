"""A small forward HTTP proxy on loopback, for tests: relays, counts, and misbehaves on demand.

It handles absolute-form requests (``GET http://127.0.0.1:8080/path HTTP/1.1``: what a client
sends through a proxy for a plain-http URL) by forwarding each to its target on a connection of
its own and relaying the answer, and ``CONNECT host:port`` (for https URLs) by tunnelling bytes
both ways. It only ever connects to loopback targets: anything else is answered 403.

Modes: ``"relay"`` (the default); ``"auth"``, which answers 407 unless the request carries
``Proxy-Authorization`` for ``credentials``; ``"close"``, which reads the request and closes
the connection without a word.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

import attrs

Mode = Literal["relay", "auth", "close"]
#: Headers meant for the proxy alone, never forwarded (RFC 9110 §7.6.1).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "upgrade"}
)


@attrs.frozen(kw_only=True)
class Seen:
    """One request the proxy received: its request line's method and target, and headers."""

    method: str
    target: str
    headers: dict[str, str]


class ForwardProxy:
    """Use as ``async with ForwardProxy() as proxy:``; point ``HTTP_PROXY`` at ``proxy.url``.

    Args:
        mode: how it answers (see the module's docstring).
        credentials: ``(user, password)`` that mode ``"auth"`` accepts.
    """

    def __init__(self, *, mode: Mode = "relay", credentials: tuple[str, str] = ("", "")) -> None:
        self.mode = mode
        self._expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        #: Every request received, in order (whether relayed or refused).
        self.seen: list[Seen] = []
        #: Requests relayed to their target (CONNECT tunnels included).
        self.relayed = 0
        self._server: asyncio.Server | None = None
        self._url: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (still known once closed)."""
        assert self._url is not None, "not started"
        return self._url

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = line.split(" ", 2)
        headers = {
            name.strip(): value.strip()
            for name, _, value in (h.partition(":") for h in header_lines if h)
        }
        self.seen.append(Seen(method=method, target=target, headers=headers))
        lower = {name.lower(): value for name, value in headers.items()}
        body = await reader.readexactly(int(lower.get("content-length", "0")))
        if self.mode == "close":
            return
        if self.mode == "auth" and lower.get("proxy-authorization") != self._expected:
            await _answer(writer, 407, "Proxy Authentication Required", 'Basic realm="test"')
            return
        if method == "CONNECT":
            await self._tunnel(target, reader, writer)
            return
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname or not _loopback(parts.hostname):
            await _answer(writer, 403, "Forbidden")
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(
            parts.hostname, parts.port or 80
        )
        try:
            path = parts.path or "/"
            request = [f"{method} {path}{'?' + parts.query if parts.query else ''} HTTP/1.1"]
            request += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in _HOP_BY_HOP]
            request.append("Connection: close")
            upstream_writer.write(("\r\n".join(request) + "\r\n\r\n").encode("latin-1") + body)
            await upstream_writer.drain()
            self.relayed += 1
            # One request per connection: the answer (which says Connection: close) runs to EOF.
            while chunk := await upstream_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        finally:
            upstream_writer.close()

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        if not _loopback(host) or not port.isdigit():
            await _answer(writer, 403, "Forbidden")
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await _answer(writer, 502, "Bad Gateway")
            return
        self.relayed += 1
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            if dst.can_write_eof():
                with contextlib.suppress(OSError):
                    dst.write_eof()

        try:
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()


async def _answer(
    writer: asyncio.StreamWriter, status: int, reason: str, authenticate: str | None = None
) -> None:
    body = f"<html><body>{status} {reason}</body></html>".encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/html",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if authenticate is not None:
        lines.append(f"Proxy-Authenticate: {authenticate}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
