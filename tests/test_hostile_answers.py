"""Answers no gateway should send, from a small server on loopback: each becomes a typed
:class:`~wan_async.WanError` of the one item it concerns, never a bare Python error."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from wan_async import (
    DecodeError,
    RetryPolicy,
    SubmitOutcomeUnknown,
    Timeouts,
    VideoRequest,
    WanClient,
    WanTimeoutError,
)
from wan_async._transport import MAX_ANSWER_BYTES

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).with_name("gateway_examples")
REQUEST = VideoRequest(prompt="a boat", model="wan2.6-t2v")
#: Nested far deeper than Python's recursion limit (json.loads raises RecursionError).
DEEP = "[" * 200_000 + "]" * 200_000


def success_with_usage(task_id: str, video_count: str) -> str:
    """The documented success answer, with ``usage.video_count`` as raw JSON text."""
    body = json.loads((EXAMPLES / "get_success.json").read_text())
    body["data"]["task_id"] = task_id
    body["data"]["fail_reason"] = "https://storage.example/v.mp4"
    body["data"]["data"]["output"]["video_url"] = "https://storage.example/v.mp4"
    body["data"]["data"]["usage"]["video_count"] = "@COUNT@"
    return json.dumps(body).replace('"@COUNT@"', video_count)


@pytest.fixture
async def hostile() -> AsyncIterator[TestServer]:
    """POST answers a 200 nested 200,000 deep; GET answers SUCCESS with absurd usage."""

    async def submit(request: web.Request) -> web.Response:
        return web.Response(text=DEEP, content_type="application/json")

    async def status(request: web.Request) -> web.Response:
        text = success_with_usage(request.match_info["task_id"], "1e999")
        return web.Response(text=text, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/video/generations", submit)
    app.router.add_get("/v1/video/generations/{task_id}", status)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server


def client_for(server: TestServer, **options: Any) -> WanClient:
    """A client of ``server``, which is on loopback."""
    url = str(server.make_url("")).rstrip("/")
    return WanClient(api_key="sk-test", base_url=url, **options)


async def test_a_submit_answer_nested_too_deep_is_an_unknown_outcome(hostile: TestServer) -> None:
    """It ended the item with RecursionError and ``task_id=None`` (read as "never sent")."""
    async with client_for(hostile) as client:
        (outcome,) = await client.generate_many([REQUEST], return_outcomes=True)
        with pytest.raises(SubmitOutcomeUnknown) as caught:
            await client.create_task(REQUEST)
    assert isinstance(outcome.error, SubmitOutcomeUnknown)
    assert isinstance(caught.value.cause, DecodeError)


async def test_an_absurd_usage_figure_does_not_fail_a_succeeded_task(hostile: TestServer) -> None:
    """``video_count: 1e999`` failed a succeeded task with OverflowError."""
    async with client_for(hostile) as client:
        snapshot = await client.get_task("task_1")
        result = await client.attach("task_1")
    assert snapshot.usage is not None
    assert snapshot.usage.video_count is None
    assert result.video_url == "https://storage.example/v.mp4"


#: 64 MiB of JSON whitespace around an object, gzipped to about 64 KiB.
HUGE_GZIPPED = gzip.compress(b" " * (64 * 2**20) + b"{}", compresslevel=9)


@pytest.fixture
async def huge() -> AsyncIterator[TestServer]:
    """Every answer is 64 MiB once decompressed (a 400 MiB one raised peak RSS by 1.2 GiB)."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(
            body=HUGE_GZIPPED,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    app = web.Application()
    app.router.add_post("/v1/video/generations", answer)
    app.router.add_get("/v1/video/generations/{task_id}", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server


async def test_an_answer_larger_than_the_api_sends_is_not_read(huge: TestServer) -> None:
    """Capped at MAX_ANSWER_BYTES decompressed: a DecodeError, and for a submit an unknown
    outcome (the gateway answered, so a task may exist)."""
    async with client_for(huge, retry=RetryPolicy.no_wait(attempts=2)) as client:
        with pytest.raises(DecodeError, match="larger than the API ever sends"):
            await client.get_task("task_1")
        with pytest.raises(SubmitOutcomeUnknown):
            await client.create_task(REQUEST)
    assert len(HUGE_GZIPPED) < MAX_ANSWER_BYTES < 64 * 2**20


@pytest.fixture
async def trickle() -> AsyncIterator[TestServer]:
    """A storage host that declares 1 MiB and sends one byte every 20 ms, inside any read
    timeout, for ever."""

    async def video(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(2**20)})
        await response.prepare(request)
        while True:
            await response.write(b"x")
            await asyncio.sleep(0.02)

    app = web.Application()
    app.router.add_get("/videos/{name}", video)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server


async def test_a_download_that_trickles_fails_and_frees_its_slot(
    trickle: TestServer, tmp_path: Path
) -> None:
    """One byte a second within the read timeout never ended and held its slot. Below the
    slowest tolerated pace it fails as a timeout, is retried, then raised; nothing is saved."""
    timeouts = Timeouts(download_min_rate=1000, download_window=0.3)
    url = str(trickle.make_url("/videos/v.mp4"))
    async with client_for(
        trickle,
        timeouts=timeouts,
        retry=RetryPolicy.no_wait(attempts=2),
        max_concurrent_downloads=1,
    ) as client:
        error = await _within(5.0, lambda: client.download(url, tmp_path / "v.mp4"))
        assert isinstance(error, WanTimeoutError), error
        assert "slower than Timeouts.download_min_rate" in str(error)
        again = await _within(5.0, lambda: client.download(url, tmp_path / "w.mp4"))
        assert isinstance(again, WanTimeoutError)  # the slot was given back
    assert files(tmp_path) == []


def files(folder: Path) -> list[Path]:
    """What ``folder`` holds."""
    return list(folder.iterdir())


async def _within(seconds: float, call: Callable[[], Awaitable[object]]) -> object:
    """The result or exception of ``call``, which must end within ``seconds`` real seconds."""
    with anyio.fail_after(seconds):
        try:
            return await call()
        except Exception as exc:
            return exc
