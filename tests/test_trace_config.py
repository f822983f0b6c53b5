"""``wan_async.trace_config()``: a session passed in can tell "never sent" from "maybe sent".

aiohttp bounds a wait for a pooled connection by ``ClientTimeout.connect`` and reports it as
``ConnectionTimeoutError``, which proves nothing was sent, trace or not. But when the total
timeout comes first (``Timeouts(connect=None)``, or ``total`` below ``connect``), the wait ends
as a bare ``asyncio.TimeoutError``, the same as a read that timed out after the request was
written: only the request trace tells the two apart. These tests hold a session's only
connection with a slow answer and time a submit out while it waits for it, over real HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import pytest

import wan_async
from wan_async import (
    RetryPolicy,
    SubmitOutcomeUnknown,
    Timeouts,
    VideoRequest,
    WanClient,
    WanTimeoutError,
)
from wan_async.testing import FakeGateway, Fault

from .conftest import make_client

pytestmark = pytest.mark.anyio

REQUEST = VideoRequest(prompt="a lighthouse at dusk", model="wan2.6-t2v", size="1280*720")
#: Real seconds the slow answer holds the only connection; well past the submit's timeout.
HOLD = 1.5


class Queued:
    """A trace config of the test's own: counts waits for a pooled connection, and tells when
    a request first went out (so holds the only connection)."""

    def __init__(self) -> None:
        self.count = 0
        self.sent = asyncio.Event()
        self.config = aiohttp.TraceConfig()
        self.config.on_connection_queued_start.append(self._queued)
        self.config.on_request_headers_sent.append(self._sent)

    async def _sent(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestHeadersSentParams,
    ) -> None:
        self.sent.set()

    async def _queued(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceConnectionQueuedStartParams,
    ) -> None:
        self.count += 1


@pytest.fixture
def queued() -> Queued:
    return Queued()


async def user_session(*trace_configs: aiohttp.TraceConfig) -> aiohttp.ClientSession:
    """A caller's own session with one connection in all."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), trace_configs=list(trace_configs)
    )


async def submit_while_held(
    gateway: FakeGateway, session: aiohttp.ClientSession, queued: Queued, timeouts: Timeouts
) -> BaseException:
    """Hold ``session``'s only connection with a slow GET of the caller's own, submit through
    a client on the same session, and return what the submit raised."""
    gateway.inject(Fault.SLOW, on="get", delay=HOLD)
    client = make_client(gateway, session=session, timeouts=timeouts, retry=RetryPolicy(attempts=1))

    async def hold() -> None:
        async with session.get(
            f"{gateway.base_url}/v1/video/generations/task_held",
            headers={"Authorization": f"Bearer {gateway.api_key}"},
        ) as response:
            await response.read()

    holder = asyncio.create_task(hold())
    try:
        await queued.sent.wait()  # the slow GET holds the only connection
        with pytest.raises(wan_async.WanError) as info:
            await client.create_task(REQUEST)
        return info.value
    finally:
        await holder
        await client.aclose()


@pytest.fixture
async def session_with_trace(queued: Queued) -> AsyncIterator[aiohttp.ClientSession]:
    async with await user_session(wan_async.trace_config(), queued.config) as session:
        yield session


@pytest.fixture
async def session_without_trace(queued: Queued) -> AsyncIterator[aiohttp.ClientSession]:
    async with await user_session(queued.config) as session:
        yield session


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "wan_async" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "timeouts",
    [Timeouts(connect=None, total=0.4), Timeouts(connect=5.0, total=0.4)],
    ids=["no-connect-limit", "total-below-connect"],
)
async def test_pool_wait_timeout_in_a_traced_session_is_nothing_sent(
    gateway: FakeGateway,
    session_with_trace: aiohttp.ClientSession,
    queued: Queued,
    timeouts: Timeouts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With trace_config(), a submit that timed out waiting for the pool is certainly not
    created: a plain error the caller may retry, no SubmitOutcomeUnknown, no warning."""
    caplog.set_level(logging.DEBUG, logger="wan_async")
    error = await submit_while_held(gateway, session_with_trace, queued, timeouts)
    assert queued.count == 1  # the submit did wait for the pooled connection
    assert type(error) is WanTimeoutError
    assert not error.task_may_exist
    assert "before the request was sent" in str(error)
    assert gateway.stats.tasks_per_prompt == {}
    assert gateway.stats.requests.get(("submit", "200"), 0) == 0
    assert warnings_of(caplog) == []


async def test_pool_wait_timeout_in_an_untraced_session_is_unknown_and_warned(
    gateway: FakeGateway,
    session_without_trace: aiohttp.ClientSession,
    queued: Queued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without it the same wait reads as outcome unknown (the pessimistic reading: nothing
    was sent, yet nothing proves it), and the client said so once, when it was created."""
    caplog.set_level(logging.DEBUG, logger="wan_async")
    error = await submit_while_held(
        gateway, session_without_trace, queued, Timeouts(connect=None, total=0.4)
    )
    assert queued.count == 1
    assert isinstance(error, SubmitOutcomeUnknown)
    assert isinstance(error.cause, WanTimeoutError)
    assert error.cause.task_may_exist
    assert "trace_config()" in str(error.cause)
    assert gateway.stats.tasks_per_prompt == {}  # nothing was sent, indeed
    (warning,) = warnings_of(caplog)
    assert "wan_async.trace_config()" in warning.getMessage()
    assert gateway.api_key not in caplog.text


async def test_pool_wait_bounded_by_connect_is_nothing_sent_even_untraced(
    gateway: FakeGateway, session_without_trace: aiohttp.ClientSession, queued: Queued
) -> None:
    """With the default ``connect`` limit below ``total``, aiohttp ends the wait with
    ConnectionTimeoutError, which proves nothing was sent without any trace."""
    error = await submit_while_held(
        gateway, session_without_trace, queued, Timeouts(connect=0.4, total=30.0)
    )
    assert queued.count == 1
    assert type(error) is WanTimeoutError
    assert not error.task_may_exist


async def test_one_trace_config_serves_many_sessions(gateway: FakeGateway) -> None:
    """trace_config() is one frozen object; sessions sharing it each get their own answers,
    and a client on each raises no warning."""
    config = wan_async.trace_config()
    assert wan_async.trace_config() is config
    with pytest.raises(RuntimeError):  # frozen: nobody can add a callback to it
        config.on_request_start.append(lambda *args: None)  # type: ignore[arg-type,return-value]
    async with (
        aiohttp.ClientSession(trace_configs=[config]) as first,
        aiohttp.ClientSession(trace_configs=[config]) as second,
    ):
        clients = [make_client(gateway, session=s) for s in (first, second)]
        try:
            created = await asyncio.gather(*(c.create_task(REQUEST) for c in clients))
            assert len({t.task_id for t in created}) == 2
        finally:
            for client in clients:
                await client.aclose()


def test_a_traced_session_is_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """The warning names the untraced session only (checked when the client is created)."""
    caplog.set_level(logging.WARNING, logger="wan_async")

    async def build(traced: bool) -> None:
        configs = [wan_async.trace_config()] if traced else []
        async with aiohttp.ClientSession(trace_configs=configs) as session:
            WanClient(api_key="sk-test", base_url="http://127.0.0.1:9", session=session)

    asyncio.run(build(traced=True))
    assert warnings_of(caplog) == []
    asyncio.run(build(traced=False))
    assert len(warnings_of(caplog)) == 1
