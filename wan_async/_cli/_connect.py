"""Where the CLI's client points: the gateway given by options, or an embedded simulator."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import attrs

from .._client import WanClient
from .._clock import Clock
from .._config import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, _is_loopback
from ._errors import CLIError, ExitCode

#: Simulated seconds per real second under ``--simulate``: minutes of work in seconds.
DEFAULT_TIME_SCALE = 60.0
#: Upstream slots of the embedded simulator (a real account runs a few tasks at a time).
SIMULATED_SLOTS = 4
#: A fixed seed, so a newcomer's first run looks the same every time.
SIMULATED_SEED = 7


@attrs.frozen(kw_only=True)
class Connection:
    """How to reach a gateway: a real one, or a simulator started for this command."""

    api_key: str | None = attrs.field(default=None, repr=False)
    base_url: str | None = None
    allow_insecure_http: bool = False
    simulate: bool = False
    time_scale: float = DEFAULT_TIME_SCALE
    #: The client's clock (tests share a ScaledClock with their FakeGateway).
    clock: Clock | None = None


@contextlib.asynccontextmanager
async def open_client(connection: Connection) -> AsyncIterator[WanClient]:
    """A running client for ``connection``; under ``simulate`` with a simulator around it.

    Raises:
        CLIError: (exit 4) no API key (and not simulating), or an unusable base URL.
    """
    if not connection.simulate:
        check_settings(connection)
        client = WanClient(
            api_key=connection.api_key,
            base_url=connection.base_url,
            allow_insecure_http=connection.allow_insecure_http,
            clock=connection.clock,
        )
        async with client:
            yield client
        return
    # Imported here: the simulator (and its aiohttp server) is only needed offline.
    from ..testing import FakeGateway, ScaledClock

    clock = connection.clock or ScaledClock(connection.time_scale)
    gateway = FakeGateway(
        api_key=f"sk-sim-{secrets.token_hex(8)}",
        clock=clock,
        slots=SIMULATED_SLOTS,
        seed=SIMULATED_SEED,
    )
    async with (
        gateway,
        WanClient(api_key=gateway.api_key, base_url=gateway.base_url, clock=clock) as client,
    ):
        yield client


def check_settings(connection: Connection) -> None:
    """Refuse a missing key or an unusable base URL in the command line's words.

    The client checks the same and says it to Python callers (``api_key=``); checked here
    first, the advice names ``--api-key``, ``--base-url`` and the environment variables.

    Raises:
        CLIError: (exit 4) what is wrong and which flag or variable to fix.
    """
    key = connection.api_key if connection.api_key is not None else os.environ.get(API_KEY_ENV)
    key_source = "--api-key" if connection.api_key is not None else f"${API_KEY_ENV}"
    if not key or not key.strip():
        msg = (
            f"no API key: pass --api-key KEY or set the {API_KEY_ENV} environment variable "
            "(or try it offline with --simulate)"
        )
        if key is not None:
            msg = f"the API key given by {key_source} is empty; " + msg.removeprefix("no API key: ")
        raise CLIError(msg, code=ExitCode.CONFIG)
    if any(c in key for c in "\r\n"):
        msg = f"the API key given by {key_source} contains a line break; check how it was set"
        raise CLIError(msg, code=ExitCode.CONFIG)
    url = connection.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    source = f"--base-url {url!r}" if connection.base_url else f"${BASE_URL_ENV} ({url!r})"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"{source} is not an http(s) URL such as {DEFAULT_BASE_URL}; fix it"
        raise CLIError(msg, code=ExitCode.CONFIG)
    if parts.query or parts.fragment:
        msg = f"{source} must not have a query (?...) or a fragment (#...)"
        raise CLIError(msg, code=ExitCode.CONFIG)
    if (
        parts.scheme == "http"
        and not connection.allow_insecure_http
        and not _is_loopback(parts.hostname)
    ):
        msg = (
            f"refusing plain http to {parts.hostname} ({source}): the API key would cross the "
            "network unencrypted; use an https:// URL, or add --allow-insecure-http if you "
            "mean it"
        )
        raise CLIError(msg, code=ExitCode.CONFIG)
