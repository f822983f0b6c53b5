"""The simulator serves a real, playable MP4 by default, and sized bodies on request."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import anyio
import imageio_ffmpeg
import pytest

from wan_async.testing import sample_video
from wan_async.testing._storage import video_content

from .test_simulator import (
    _no_server_errors,  # noqa: F401 - the autouse fixture applies here too
    advance,
    fixed,
    serve,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[str, int, int]]:
    """The MP4 boxes laid end to end in ``data[start:end]``: ``(type, offset, size)``."""
    end = len(data) if end is None else end
    offset = start
    while offset < end:
        assert end - offset >= 8, f"a box header is cut short at {offset}"
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", data[offset + 8 : offset + 16])
        elif size == 0:
            size = end - offset
        assert size >= 8, f"box {kind!r} at {offset} has size {size}"
        assert offset + size <= end, f"box {kind!r} at {offset} overruns its parent"
        yield kind.decode("latin-1"), offset, size
        offset += size


def child(data: bytes, parent: tuple[str, int, int], kind: str) -> list[tuple[str, int, int]]:
    """The children of ``parent`` (a plain container box) of type ``kind``."""
    _, offset, size = parent
    return [b for b in boxes(data, offset + 8, offset + size) if b[0] == kind]


async def decode_errors(path: Path) -> tuple[int, str]:
    """Decode ``path`` fully with ffmpeg: its exit status and what it printed as errors."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "null", "-"]
    done = await anyio.run_process(command, check=False)
    return done.returncode, done.stderr.decode(errors="replace")


def test_bundled_clip_is_a_complete_fast_start_mp4() -> None:
    """ftyp, then moov before mdat; the top-level boxes tile the file; 160x90, 2 s, H.264."""
    data = sample_video()
    top = list(boxes(data))
    kinds = [kind for kind, _, _ in top]
    assert kinds[0] == "ftyp"
    assert {"moov", "mdat"} <= set(kinds)
    assert kinds.index("moov") < kinds.index("mdat")
    assert sum(size for _, _, size in top) == len(data)
    assert len(data) < 100_000
    moov = top[kinds.index("moov")]
    (mvhd,) = child(data, moov, "mvhd")
    timescale, duration = struct.unpack(">II", data[mvhd[1] + 20 : mvhd[1] + 28])
    assert duration / timescale == pytest.approx(2.0, abs=0.05)
    sizes = []
    for trak in child(data, moov, "trak"):
        (tkhd,) = child(data, trak, "tkhd")
        width, height = struct.unpack(">II", data[tkhd[1] + tkhd[2] - 8 : tkhd[1] + tkhd[2]])
        sizes.append((width >> 16, height >> 16))
    assert (160, 90) in sizes
    assert b"avc1" in data[moov[1] : moov[1] + moov[2]]


async def test_bundled_clip_decodes_without_error(tmp_path: Path) -> None:
    """ffmpeg decodes every frame of the bundled clip without a single error."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(sample_video())
    assert await decode_errors(path) == (0, "")


async def test_downloaded_video_is_the_playable_clip_by_default(tmp_path: Path) -> None:
    """A finished task's URL serves the bundled clip, which decodes cleanly, whole or in ranges."""
    async with serve(processing_time=fixed(100)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 200)
        gw.refresh_now()
        url = (await api.get(task_id))["fail_reason"]
        status, headers, body = await api.download(url)
        part = await api.download(url, headers={"Range": "bytes=1000-"})
    assert (status, headers["Content-Type"]) == (200, "video/mp4")
    assert body == sample_video() == video_content(task_id)
    assert int(headers["Content-Length"]) == len(body)
    assert (part[0], part[2]) == (206, body[1000:])
    path = tmp_path / f"{task_id}.mp4"
    path.write_bytes(body)
    assert await decode_errors(path) == (0, "")


async def test_video_bytes_serves_sized_deterministic_bodies(tmp_path: Path) -> None:
    """video_bytes=N: N bytes of each task's own, the same on every download, not a video."""
    async with serve(processing_time=fixed(100), video_bytes=5000) as (gw, api):
        ids = [await api.submit(f"p{i}") for i in range(2)]
        advance(gw, 300)
        gw.refresh_now()
        bodies = []
        for task_id in ids:
            url = (await api.get(task_id))["fail_reason"]
            bodies.append((await api.download(url))[2])
            assert (await api.download(url))[2] == bodies[-1]
    assert [len(b) for b in bodies] == [5000, 5000]
    assert bodies[0] != bodies[1]
    assert bodies == [video_content(task_id, 5000) for task_id in ids]
    path = tmp_path / "sized.mp4"
    path.write_bytes(bodies[0])
    returncode, errors = await decode_errors(path)
    # The decode check above is not a formality: random bytes fail it.
    assert returncode != 0
    assert errors
