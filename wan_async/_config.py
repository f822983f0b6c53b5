"""Client settings: where the gateway is, the key, and how long to wait for it."""

from __future__ import annotations

import inspect
import ipaddress
import os
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._exceptions import ConfigurationError

#: The documented service (SPEC §2); any deployment of the same gateway works the same.
DEFAULT_BASE_URL = "https://computevault.unodetech.xyz"
API_KEY_ENV = "WAN_API_KEY"
BASE_URL_ENV = "WAN_BASE_URL"


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        msg = f"{attribute.name} must be a positive number of seconds or None, got {value!r}"
        raise ValueError(msg)


def check_seconds(name: str, value: object) -> float | None:
    """``value`` as clock seconds to wait (``None``: no limit; ``inf`` is no limit too).

    Raises:
        ValueError: not a number, NaN (every comparison with it is false: taken as 0, it
            billed a batch then timed every item out "within nan s"), or negative.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        msg = f"{name} must be a number of seconds, 0 or more, or None; got {value!r}"
        raise ValueError(msg)
    return float(value)


def awaited_only(callback: object) -> bool:
    """Whether ``callback`` is a coroutine function (or has an async ``__call__``): calling
    it only makes a coroutine, which a callback's caller never awaits."""
    return inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
        getattr(callback, "__call__", None)  # noqa: B004 - an async __call__
    )


def check_count(name: str, value: object) -> int:
    """``value`` as a whole number, at least 1.

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a whole number, at least 1; got {value!r}"
        raise ValueError(msg)
    return value


def check_rate(name: str, value: object) -> float | None:
    """``value`` as requests per second (``None``: no cap).

    Raises:
        ValueError: not a positive, finite number (0 divided by zero in the budget and a
            negative rate busy-spun).
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value < float("inf")
    ):
        msg = (
            f"{name} must be a positive, finite number of requests per second or None; "
            f"got {value!r}"
        )
        raise ValueError(msg)
    return float(value)


@attrs.frozen(kw_only=True)
class Timeouts:
    """How long one HTTP exchange with the gateway may take, in real seconds.

    ``None`` disables a limit. A submit whose read times out has an unknown outcome (the task
    may exist), so keep ``read`` generous: the gateway calls upstream before it answers.
    """

    #: Opening the connection (including TLS).
    connect: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    #: Waiting for the answer once the request is sent, between any two reads.
    read: float | None = attrs.field(default=60.0, validator=_positive_or_none)
    #: The whole exchange.
    total: float | None = attrs.field(default=120.0, validator=_positive_or_none)
    #: A video download's slowest tolerated pace, in bytes per second averaged over
    #: ``download_window``: a storage host that trickles a byte at a time inside the read
    #: timeout would otherwise hold the download (and its slot) for ever. A download this slow
    #: fails as a timeout (and is retried by the retry policy). ``None`` for no limit.
    download_min_rate: float | None = attrs.field(default=16 * 1024, validator=_positive_or_none)
    #: Seconds over which ``download_min_rate`` is measured.
    download_window: float = attrs.field(default=30.0, validator=_positive_or_none)


class Secret:
    """An API key that never shows itself in a repr, str, log or traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the key itself: only for building the Authorization header (and hashing
        it into a task store's namespace)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        msg = "an API key is not to be pickled"
        raise TypeError(msg)


def resolve_api_key(api_key: str | None) -> Secret:
    """Take the key from the argument, else from ``WAN_API_KEY``.

    Raises:
        ConfigurationError: neither gives a usable key.
    """
    value = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if not value or not value.strip():
        msg = f"no API key: pass api_key= or set the {API_KEY_ENV} environment variable"
        raise ConfigurationError(msg)
    if any(c in value for c in "\r\n"):
        msg = "the API key contains a line break; check how it was read"
        raise ConfigurationError(msg)
    return Secret(value.strip())


def resolve_base_url(base_url: str | None, *, allow_insecure_http: bool = False) -> str:
    """Take the base URL from the argument, else ``WAN_BASE_URL``, else the documented service.

    Plain ``http://`` is accepted for loopback only, unless ``allow_insecure_http`` says so:
    the API key travels in every request.

    Raises:
        ConfigurationError: the URL is not an http(s) URL, or is plain http to a remote host.
    """
    value = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"base URL must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {value!r}"
        raise ConfigurationError(msg)
    if parts.query or parts.fragment:
        msg = f"base URL must not have a query or fragment, got {value!r}"
        raise ConfigurationError(msg)
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        msg = (
            f"refusing plain http to {parts.hostname}: the API key would cross the network "
            "unencrypted; use https, or pass allow_insecure_http=True if you mean it"
        )
        raise ConfigurationError(msg)
    return value.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
