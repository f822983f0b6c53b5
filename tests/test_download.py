"""Downloads from the simulator's storage host: whole, keyless, atomic, retried, bounded."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import aiohttp
import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from wan_async import (
    BadRequestError,
    ConfigurationError,
    DeadlineExceeded,
    DownloadError,
    IncompleteDownload,
    PollPolicy,
    RetryPolicy,
    ScaledClock,
    StorageError,
    VideoRequest,
    VideoResult,
    VideoURLExpired,
    WanClient,
)
from wan_async._download import _copy, _PartFile
from wan_async._transport import Stream
from wan_async.testing import FakeGateway, Fault
from wan_async.testing._storage import video_content

from .conftest import SCALE, fixed_processing, make_client

pytestmark = pytest.mark.anyio

REQUEST = VideoRequest(prompt="a lighthouse at dusk", model="wan2.6-t2v", size="1280*720")
#: FakeGateway's default video: the bundled playable clip (``video_bytes=None``).
VIDEO_BYTES = None
ROOT = Path(__file__).resolve().parents[1]


async def finished(gw: FakeGateway, client: WanClient, count: int = 1) -> list[VideoResult]:
    """Create ``count`` tasks, end them upstream at once, and return their results."""
    ids = [(await client.create_task(REQUEST)).task_id for _ in range(count)]
    for task_id in ids:
        gw.finish_now(task_id)
    gw.refresh_now()
    return [(await client.get_task(task_id)).result() for task_id in ids]


def leftovers(folder: Path) -> list[str]:
    """Temporary files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


async def test_download_saves_the_whole_video_without_the_key(
    gateway: FakeGateway, client: WanClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file holds the storage host's exact bytes; no Authorization, no signature logged."""
    caplog.set_level(logging.DEBUG, logger="wan_async")
    (result,) = await finished(gateway, client)
    target = tmp_path / "lighthouse.mp4"
    saved = await client.download(result, target)
    assert saved == target
    assert target.read_bytes() == video_content(result.task_id, VIDEO_BYTES)
    assert target.stat().st_size == len(video_content(result.task_id, VIDEO_BYTES))
    assert gateway.stats.download_auth_headers == [False]
    assert os.listdir(tmp_path) == ["lighthouse.mp4"]
    signature = result.video_url.partition("?")[2]
    assert f"/videos/{result.task_id}.mp4" in caplog.text
    assert signature not in caplog.text
    assert "Signature=" not in caplog.text


async def test_download_into_a_directory_names_the_file_after_the_task(
    gateway: FakeGateway, client: WanClient, tmp_path: Path
) -> None:
    """Given a directory, the file is <task_id>.mp4 in it; a bare URL gives its own file name."""
    first, second = await finished(gateway, client, count=2)
    saved = await client.download(first, tmp_path)
    assert saved == tmp_path / f"{first.task_id}.mp4"
    by_url = await client.download(second.video_url, tmp_path)
    assert by_url == tmp_path / f"{second.task_id}.mp4"
    assert by_url.read_bytes() == video_content(second.task_id, VIDEO_BYTES)


@pytest.mark.parametrize(
    ("fault", "outcome", "times"),
    [
        (Fault.SERVER_ERROR, "500", 1),
        (Fault.BAD_GATEWAY_HTML, "502", 1),
        (Fault.RATE_LIMIT, "429", 1),
        # aiohttp itself resends an idempotent GET once on a dropped connection: a second reset
        # is ours to retry.
        (Fault.RESET_BEFORE_CREATE, "reset", 2),
        (Fault.TRUNCATED_JSON, "truncated", 1),
    ],
)
async def test_transient_failures_are_retried_to_a_complete_file(
    gateway: FakeGateway,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fault: Fault,
    outcome: str,
    times: int,
) -> None:
    """5xx, 429, a reset or a body cut short is retried; the file ends whole, no temp left."""
    caplog.set_level(logging.DEBUG, logger="wan_async")
    async with make_client(gateway, retry=RetryPolicy.no_wait()) as client:
        (result,) = await finished(gateway, client)
        gateway.inject(fault, on="download", times=times)
        saved = await client.download(result, tmp_path)
    assert saved.read_bytes() == video_content(result.task_id, VIDEO_BYTES)
    assert gateway.stats.outcomes("download") == {outcome: times, "200": 1}
    assert leftovers(tmp_path) == []
    assert "retry 1/4" in caplog.text
    assert "Signature=" not in caplog.text


async def test_downloads_spend_nothing_of_the_gateway_budget(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Another host: attempts draw no request budget, and its 429s do not throttle the client."""
    async with make_client(gateway, retry=RetryPolicy.no_wait()) as client:
        (result,) = await finished(gateway, client)
        before = client.stats.rate
        gateway.inject(Fault.RATE_LIMIT, on="download", times=2)
        await client.download(result, tmp_path)
        after = client.stats.rate
    assert gateway.stats.outcomes("download") == {"429": 2, "200": 1}
    assert (after.granted, after.throttles) == (before.granted, before.throttles)


async def test_a_download_that_keeps_failing_leaves_nothing(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """When the attempts run out the last error is raised and no file, whole or part, remains."""
    async with make_client(gateway, retry=RetryPolicy.no_wait(attempts=2)) as client:
        (result,) = await finished(gateway, client)
        gateway.inject(Fault.TRUNCATED_JSON, on="download")
        gateway.inject(Fault.SERVER_ERROR, on="download")
        with pytest.raises(StorageError) as info:
            await client.download(result, tmp_path)
    assert isinstance(info.value, DownloadError)
    assert info.value.status == 500
    assert "Signature=" not in str(info.value)
    assert os.listdir(tmp_path) == []


async def test_an_expired_url_raises_video_url_expired(tmp_path: Path) -> None:
    """Past url_ttl the storage host answers 403: one clear error, not retried, nothing written."""
    async with (
        FakeGateway(
            clock=ScaledClock(SCALE), url_ttl=60.0, processing_time=fixed_processing(30.0)
        ) as gw,
        make_client(gw, retry=RetryPolicy.no_wait()) as client,
    ):
        (result,) = await finished(gw, client)
        await client.clock.sleep(62.0)
        with pytest.raises(VideoURLExpired) as info:
            await client.download(result, tmp_path)
    error = info.value
    assert (error.status, error.code, error.message) == (
        403,
        "AccessDenied",
        "Request has expired.",
    )
    assert error.task_id == result.task_id
    assert "24 h" in str(error)
    assert f"get_task({result.task_id!r})" in str(error)
    assert "Signature=" not in str(error)
    assert gw.stats.outcomes("download") == {"403": 1}
    assert os.listdir(tmp_path) == []


async def test_an_existing_file_is_kept_unless_overwrite(
    gateway: FakeGateway, client: WanClient, tmp_path: Path
) -> None:
    """An existing file is refused before any request; overwrite=True replaces it whole."""
    (result,) = await finished(gateway, client)
    target = tmp_path / f"{result.task_id}.mp4"
    target.write_bytes(b"an older video")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        await client.download(result, tmp_path)
    assert target.read_bytes() == b"an older video"
    assert gateway.stats.download_auth_headers == []
    saved = await client.download(result, target, overwrite=True)
    assert saved.read_bytes() == video_content(result.task_id, VIDEO_BYTES)
    assert leftovers(tmp_path) == []


async def test_a_timeout_stops_the_download_and_cleans_up(
    gateway: FakeGateway, client: WanClient, tmp_path: Path
) -> None:
    """A download past its timeout (clock seconds) raises DeadlineExceeded and writes nothing."""
    (result,) = await finished(gateway, client)
    gateway.inject(Fault.SLOW, on="download", delay=0.5)
    with pytest.raises(DeadlineExceeded) as info:
        await client.download(result, tmp_path, timeout=30.0)
    assert isinstance(info.value, TimeoutError)
    assert info.value.task_id == result.task_id
    assert os.listdir(tmp_path) == []


async def test_concurrent_downloads_are_bounded(gateway: FakeGateway, tmp_path: Path) -> None:
    """No more than max_concurrent_downloads requests to the storage host are ever in flight."""
    in_flight = 0
    peak = 0

    def to_storage(params: aiohttp.TraceRequestStartParams | aiohttp.TraceRequestEndParams) -> bool:
        return params.url.path.startswith("/videos/")

    async def started(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        nonlocal in_flight, peak
        if to_storage(params):
            in_flight += 1
            peak = max(peak, in_flight)

    async def ended(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        nonlocal in_flight
        if to_storage(params):
            in_flight -= 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    trace.on_request_end.append(ended)
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        make_client(gateway, session=session, max_concurrent_downloads=2) as client,
    ):
        results = await finished(gateway, client, count=6)
        # Each answer is held back a while, so unbounded downloads would all overlap.
        gateway.inject(Fault.SLOW, on="download", times=6, delay=0.1)
        async with anyio.create_task_group() as tg:
            for result in results:
                tg.start_soon(client.download, result, tmp_path)
    assert peak == 2
    assert sorted(os.listdir(tmp_path)) == sorted(f"{r.task_id}.mp4" for r in results)


async def test_a_session_that_sends_credentials_is_refused(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A session passed in with a default Authorization header never reaches the storage host."""
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        make_client(gateway, session=session) as client,
    ):
        (result,) = await finished(gateway, client)
        with pytest.raises(ConfigurationError, match="storage host"):
            await client.download(result, tmp_path)
    assert gateway.stats.download_auth_headers == []


@pytest.mark.parametrize(
    "source", ["ftp://videos.example/v.mp4", "videos.example/v.mp4", "https://videos.example/"]
)
async def test_unusable_sources_are_refused_before_any_request(
    client: WanClient, tmp_path: Path, source: str
) -> None:
    """A URL that is not http(s), or names no file for a directory, fails at once."""
    with pytest.raises(ValueError, match=r"URL|file path"):
        await client.download(source, tmp_path)


async def test_a_body_shorter_than_declared_is_an_incomplete_download() -> None:
    """Fewer bytes than Content-Length raise IncompleteDownload, which is worth retrying."""

    class ShortStream:
        url = "http://storage.example/videos/v.mp4"
        content_length = 10
        encoded = False

        def __init__(self) -> None:
            self.chunks = [b"12345", b""]

        async def read(self, size: int) -> bytes:
            return self.chunks.pop(0)

    class Sink:
        async def write(self, chunk: bytes) -> None:
            pass

    stream = cast("Stream", ShortStream())
    with pytest.raises(IncompleteDownload) as info:
        await _copy(stream, cast("_PartFile", Sink()))
    assert (info.value.expected, info.value.received) == (10, 5)
    assert info.value.retryable


# -- memory ------------------------------------------------------------------------------------

#: A FakeGateway with 64 MiB videos in a process of its own, so that its copies of the video do
#: not count in this process's traced memory. It serves until its stdin closes.
_BIG_GATEWAY = """
import asyncio, sys
from wan_async.testing import FakeGateway, ScaledClock

async def main() -> None:
    clock = ScaledClock(float(sys.argv[1]), epoch=float(sys.argv[2]), origin=float(sys.argv[3]))
    async with FakeGateway(
        clock=clock, video_bytes=int(sys.argv[4]), processing_time=lambda body, rng: 30.0
    ) as gw:
        print(gw.base_url, gw.api_key, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


async def test_memory_stays_flat_for_a_large_video(tmp_path: Path) -> None:
    """A 64 MiB video is saved whole while traced memory peaks far below its size."""
    size = 64 * 1024 * 1024
    clock = ScaledClock(SCALE)
    args = [str(SCALE), repr(clock.epoch), repr(clock.origin), str(size)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with await anyio.open_process(
        [sys.executable, "-c", _BIG_GATEWAY, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        with anyio.fail_after(10):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 4096)
        base_url, api_key = line.decode().split()
        async with WanClient(
            api_key=api_key,
            base_url=base_url,
            clock=clock,
            max_requests_per_second=None,
            poll_policy=PollPolicy(refresh_period=15.0),
        ) as client:
            result = await client.generate(REQUEST, timeout=600)
            tracemalloc.start()
            try:
                saved = await client.download(result, tmp_path)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        await process.stdin.aclose()
    assert saved.stat().st_size == size
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak} bytes"
    digest = hashlib.sha256()
    with saved.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    assert digest.digest() == hashlib.sha256(video_content(result.task_id, size)).digest()


async def test_a_missing_video_is_a_download_error(gateway: FakeGateway, tmp_path: Path) -> None:
    """A 404 from the storage host is a DownloadError (StorageError) with its code, not retried."""
    async with make_client(gateway, retry=RetryPolicy.no_wait()) as client:
        (result,) = await finished(gateway, client)
        missing = result.video_url.replace(f"/videos/{result.task_id}.mp4", "/videos/gone.mp4")
        with pytest.raises(DownloadError) as info:
            await client.download(missing, tmp_path / "gone.mp4")
    error = info.value
    assert isinstance(error, StorageError)
    assert not isinstance(error, BadRequestError)
    assert (error.status, error.code) == (404, "NoSuchKey")
    assert not error.retryable
    assert gateway.stats.outcomes("download") == {"404": 1}
    assert os.listdir(tmp_path) == []


async def test_a_missing_folder_is_named_before_any_request(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Saving into a folder that does not exist names that folder, and fetches nothing."""
    async with make_client(gateway) as client:
        (result,) = await finished(gateway, client)
        target = tmp_path / "no" / "such" / "video.mp4"
        with pytest.raises(FileNotFoundError) as info:
            await client.download(result, target)
    assert str(tmp_path / "no" / "such") in str(info.value)
    assert ".part" not in str(info.value)
    assert gateway.stats.outcomes("download") == {}


async def test_leftovers_of_a_killed_download_are_removed(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A stale temporary file of a killed download to the same file is removed; a live one kept."""
    target = tmp_path / "video.mp4"
    stale = tmp_path / ".video.mp4.0123456789ab.part"
    live = tmp_path / ".video.mp4.ba9876543210.part"
    other = tmp_path / ".other.mp4.0123456789ab.part"
    for part in (stale, live, other):
        part.write_bytes(b"half a video")
    hour_ago = time.time() - 3600
    for part in (stale, other):
        os.utime(part, (hour_ago, hour_ago))
    async with make_client(gateway) as client:
        (result,) = await finished(gateway, client)
        await client.download(result, target)
    assert leftovers(tmp_path) == sorted([live.name, other.name])
    assert target.read_bytes() == video_content(result.task_id, VIDEO_BYTES)
