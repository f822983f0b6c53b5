"""Where the CLI's client points: the gateway given by options, or an embedded simulator."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import attrs

from .._client import WanClient
from .._clock import Clock

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
    simulate: bool = False
    time_scale: float = DEFAULT_TIME_SCALE
    #: The client's clock (tests share a ScaledClock with their FakeGateway).
    clock: Clock | None = None


@contextlib.asynccontextmanager
async def open_client(connection: Connection) -> AsyncIterator[WanClient]:
    """A running client for ``connection``; under ``simulate`` with a simulator around it.

    Raises:
        ConfigurationError: no API key (and not simulating), or a bad base URL.
    """
    if not connection.simulate:
        client = WanClient(
            api_key=connection.api_key, base_url=connection.base_url, clock=connection.clock
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
