"""A faithful simulator of the gateway, for tests and benchmarks over real loopback HTTP.

Example::

    from wan_async.testing import FakeGateway, Fault, ScaledClock

    async with FakeGateway(clock=ScaledClock(100), tick=15, slots=2) as gw:
        gw.inject(Fault.RATE_LIMIT, on="submit")
        ...  # point a client at gw.base_url with gw.api_key

The real gateway's refresh loop, with other tenants and a client clock 7 s ahead::

    clock = ScaledClock(300)
    async with FakeGateway(
        clock=clock, refresh="sequential", tick=15, refresh_cost=0.05, other_tenants=200
    ) as gw:
        client = WanClient(api_key=gw.api_key, base_url=gw.base_url, clock=clock.shifted(7))

Run it stand-alone with ``python -m wan_async.testing --help``.
"""

from __future__ import annotations

from .._clock import Clock, ScaledClock, SystemClock
from ._faults import Fault, RequestKind, Target
from ._gateway import FakeGateway
from ._stats import GatewayStats, RefreshPass, RequestRecord, TaskFinish, TaskInfo
from ._storage import sample_video
from ._upstream import default_processing_time

__all__ = [
    "Clock",
    "FakeGateway",
    "Fault",
    "GatewayStats",
    "RefreshPass",
    "RequestKind",
    "RequestRecord",
    "ScaledClock",
    "SystemClock",
    "Target",
    "TaskFinish",
    "TaskInfo",
    "default_processing_time",
    "sample_video",
]
