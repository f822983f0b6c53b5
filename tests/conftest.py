"""Shared fixtures: the asyncio backend, a simulated gateway, and a client talking to it."""

from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from wan_async import PollPolicy, WanClient
from wan_async.testing import FakeGateway, ScaledClock

#: Gateway seconds per real second in tests: a 15 s tick lasts 50 ms.
SCALE = 300.0


def fixed_processing(seconds: float) -> Callable[[Mapping[str, Any], random.Random], float]:
    """A processing-time function giving every task the same duration."""
    return lambda body, rng: seconds


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp is asyncio-only, so every async test runs on asyncio."""
    return "asyncio"


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    """A simulator on loopback with a compressed clock and tasks of 90 s."""
    async with FakeGateway(
        clock=ScaledClock(SCALE), tick=15.0, slots=4, processing_time=fixed_processing(90.0)
    ) as gw:
        yield gw


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def start_batch_worker(
    gw: FakeGateway,
    clock: ScaledClock,
    journal: Path,
    n: int,
    *,
    submits: int = 8,
    download_dir: Path | None = None,
) -> anyio.abc.Process:
    """Run ``tests/_batch_worker.py``'s batch of ``n`` with ``journal`` in another OS process,
    against ``gw`` and sharing its clock."""
    return await anyio.open_process(
        [
            sys.executable,
            str(Path(__file__).with_name("_batch_worker.py")),
            gw.base_url,
            str(clock.scale),
            repr(clock.epoch),
            repr(clock.origin),
            str(journal),
            str(n),
            str(submits),
            str(download_dir or ""),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        stdout=None,
        stderr=None,
    )


def make_client(gw: FakeGateway, **kwargs: object) -> WanClient:
    """A client for ``gw``, sharing its clock, with no request budget unless asked."""
    options: dict[str, object] = {
        "api_key": gw.api_key,
        "base_url": gw.base_url,
        "clock": gw.clock,
        "max_requests_per_second": None,
        "poll_policy": PollPolicy(refresh_period=gw.tick),
    }
    options.update(kwargs)
    return WanClient(**options)  # type: ignore[arg-type]


@pytest.fixture
async def client(gateway: FakeGateway) -> AsyncIterator[WanClient]:
    """A running client (poller started) for the ``gateway`` fixture."""
    async with make_client(gateway) as c:
        yield c
