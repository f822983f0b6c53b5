"""Shared fixtures: the asyncio backend, a simulated gateway, and a client talking to it."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
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


# -- a real redis-server -------------------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server")


@dataclass
class RedisServer:
    """A ``redis-server`` of the tests' own, on a unix socket in a temporary folder (and a
    free loopback port), configured as the batch journal requires (AOF, fsync always)."""

    process: subprocess.Popen[bytes]
    socket: Path
    port: int

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(folder: Path) -> RedisServer:
    """Start a ``redis-server`` in ``folder``; skipped where the binary is missing, except
    under ``CI=true`` (where ``.ci/run`` installs it), where that fails the test."""
    if REDIS_SERVER is None:
        message = "redis-server is not installed (apt-get install -y redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    path = folder / "redis.sock"
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--unixsocket",
            str(path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    server = RedisServer(process=process, socket=path, port=port)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited at start with {process.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail("redis-server did not answer within 20 s")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the session (each test works in a namespace of its own:
    namespaces follow the gateway's URL, which has a port of its own per test)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
