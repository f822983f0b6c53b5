"""Bodies and responses exactly as the gateway (SPEC §4) and a proxy in front of it send them."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

REQUEST_ID_HEADER = "X-Oneapi-Request-Id"

#: What nginx in front of the gateway answers when the gateway is down.
BAD_GATEWAY_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

#: What nginx's ``limit_req`` in front of the gateway answers to too many requests.
TOO_MANY_REQUESTS_PAGE = (
    "<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
    "<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
#: The page a single-sign-on proxy in front sends a redirected request to.
LOGIN_PATH = "/login"
LOGIN_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>\n"
    '<form method="post" action="/login"><input name="user"><input name="password" '
    'type="password"><button>Sign in</button></form>\n</body></html>\n'
)
#: A 200 page that is not the gateway's JSON (a captive portal, a misrouted proxy).
NOT_JSON_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Welcome</title></head><body>\n"
    "<h1>It works!</h1>\n</body></html>\n"
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


def too_many_requests_html(retry_after: str | None) -> web.Response:
    """A 429 page from the nginx in front, not JSON, with ``Retry-After`` if given."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return web.Response(
        status=429, text=TOO_MANY_REQUESTS_PAGE, content_type="text/html", headers=headers
    )


#: What a web application firewall in front answers when a rule blocks one request.
FORBIDDEN_PAGE = (
    "<html>\n<head><title>403 Forbidden</title></head>\n<body>\n"
    "<center><h1>403 Forbidden</h1></center>\n<center>Request blocked.</center>\n"
    "</body>\n</html>\n"
)


def forbidden_html() -> web.Response:
    """A 403 page from a WAF in front, not the gateway's JSON."""
    return web.Response(status=403, text=FORBIDDEN_PAGE, content_type="text/html")


def redirect_to_login(base_url: str, path: str) -> web.Response:
    """A 302 from a single-sign-on proxy: to its login page, with a short HTML body."""
    location = f"{base_url}{LOGIN_PATH}?{urlencode({'next': path})}"
    body = f'<html><body>Redirecting to <a href="{location}">sign in</a>.</body></html>\n'
    return web.Response(
        status=302, text=body, content_type="text/html", headers={"Location": location}
    )


def login_page() -> web.Response:
    """The login page a redirect leads to: 200, HTML."""
    return web.Response(status=200, text=LOGIN_PAGE, content_type="text/html")


def not_json_page() -> web.Response:
    """A 200 answer whose body is an HTML page, not JSON."""
    return web.Response(status=200, text=NOT_JSON_PAGE, content_type="text/html")


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
