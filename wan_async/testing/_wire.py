"""Bodies and responses exactly as the gateway (SPEC §4) and a proxy in front of it send them."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from aiohttp import web

REQUEST_ID_HEADER = "X-Oneapi-Request-Id"

#: What nginx in front of the gateway answers when the gateway is down.
BAD_GATEWAY_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

# Upstream (DashScope) stamps its own times as Beijing wall-clock strings.
_UPSTREAM_TZ = dt.timezone(dt.timedelta(hours=8))


def dumps(body: Any) -> bytes:
    """Serialize ``body`` compactly, as Go's encoder does."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(status: int, body: Any) -> web.Response:
    """A JSON response with ``status``."""
    return web.Response(status=status, body=dumps(body), content_type="application/json")


def middleware_error(status: int, message: str, request_id: str, code: str = "") -> web.Response:
    """The auth/distributor middleware's error shape: ``{"error": {...}}``."""
    body = {
        "error": {
            "message": f"{message} (request id: {request_id})",
            "type": "new_api_error",
            "code": code,
        }
    }
    return json_response(status, body)


def task_error(status: int, code: str, message: str) -> web.Response:
    """The task relay's error shape: ``{"code": ..., "message": ..., "data": null}``."""
    return json_response(status, {"code": code, "message": message, "data": None})


def upstream_error(code: str, message: str) -> str:
    """Upstream's own error JSON, as the string the gateway relays in ``message``."""
    return dumps({"code": code, "message": message}).decode()


def bad_gateway_html() -> web.Response:
    """A 502 page from the nginx in front, not JSON."""
    return web.Response(status=502, text=BAD_GATEWAY_PAGE, content_type="text/html")


def truncated(response: web.Response) -> web.Response:
    """``response`` with only the first half of its body (status and type kept)."""
    body = response.body if isinstance(response.body, bytes) else b""
    return web.Response(
        status=response.status,
        body=body[: len(body) // 2],
        content_type=response.content_type,
        headers={k: v for k, v in response.headers.items() if k.lower() == "retry-after"},
    )


def abort(request: web.BaseRequest) -> web.Response:
    """Drop the connection without answering.

    The returned response is never written: aiohttp finds the transport closed, treats it as a
    client that went away and logs that at debug level only, while the client sees the server
    disconnect.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=200)


def retry_after_value(seconds: float) -> str:
    """Format ``Retry-After``: whole seconds when whole, as HTTP wants; else the decimal."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def upstream_time(unix: float) -> str:
    """Upstream's timestamp format: ``"2025-12-10 09:06:19.731"`` (Beijing time)."""
    moment = dt.datetime.fromtimestamp(unix, tz=_UPSTREAM_TZ)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def unix(seconds: float | None) -> int:
    """Wire timestamps are whole Unix seconds; unset ones are 0."""
    return 0 if seconds is None or not math.isfinite(seconds) else int(seconds)
