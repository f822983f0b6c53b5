"""The web examples as several worker processes on one port, sharing a real Redis store:
every worker answers for every task (none 404), as a user's ``uvicorn --workers N`` runs."""

from __future__ import annotations

import os
import socket
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import anyio
import anyio.abc
import pytest

from wan_async.testing import FakeGateway

from .conftest import RedisServer, fixed_processing

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parents[1] / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def _run_against(
    command: list[str], gw: FakeGateway, redis_server: RedisServer, port: int
) -> tuple[Counter[int], set[str], list[str]]:
    """Start ``command`` (N workers on ``port``), submit 6 videos and ask for their status on
    fresh connections until all ended and two workers answered. Returns the status codes
    of the status answers, the workers seen, and the task ids."""
    env = {
        **os.environ,
        "WAN_API_KEY": gw.api_key,
        "WAN_BASE_URL": gw.base_url,
        "WAN_REDIS_URL": redis_server.url,
    }
    base = f"http://127.0.0.1:{port}"
    process = await anyio.open_process(command, env=env, stdout=None, stderr=None)
    codes: Counter[int] = Counter()
    workers: set[str] = set()
    try:
        connector = aiohttp.TCPConnector(force_close=True)  # one connection per request
        async with aiohttp.ClientSession(connector=connector) as http:
            with anyio.fail_after(60):
                while True:  # until the app answers
                    try:
                        async with http.get(f"{base}/videos/task_nope") as r:
                            if r.status == 404:
                                break
                    except aiohttp.ClientError:
                        pass
                    await anyio.sleep(0.1)
                ids = []
                for i in range(6):
                    body = {"prompt": f"a paper boat {i}", "size": "1280*720"}
                    async with http.post(f"{base}/videos", json=body) as r:
                        assert r.status == 202, await r.text()
                        ids.append((await r.json())["task_id"])
                ended: set[str] = set()
                while len(ended) < len(ids) or len(workers) < 2:
                    for task_id in ids:
                        async with http.get(f"{base}/videos/{task_id}") as r:
                            codes[r.status] += 1
                            workers.add(r.headers.get("X-Worker", "?"))
                            if r.status == 200 and (await r.json())["done"]:
                                ended.add(task_id)
                    await anyio.sleep(0.05)
    finally:
        process.terminate()
        with anyio.move_on_after(20):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    return codes, workers, ids


async def test_the_fastapi_app_under_two_uvicorn_workers(redis_server: RedisServer) -> None:
    port = free_port()
    async with FakeGateway(tick=1.0, processing_time=fixed_processing(2.0)) as gw:
        codes, workers, _ = await _run_against(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(EXAMPLES),
                "fastapi_app:app",
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            gw,
            redis_server,
            port,
        )
        assert gw.stats.tasks_created == 6
        assert max(gw.stats.tasks_per_prompt.values()) == 1
    assert set(codes) == {200}  # every status answered, on whichever worker
    assert len(workers) == 2


async def test_the_aiohttp_example_as_two_workers_on_one_port(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    async with FakeGateway(tick=1.0, processing_time=fixed_processing(2.0)) as gw:
        codes, workers, _ = await _run_against(
            [
                sys.executable,
                str(EXAMPLES / "webapp.py"),
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--store",
                str(tmp_path / "ids"),
            ],
            gw,
            redis_server,
            port,
        )
        assert gw.stats.tasks_created == 6
    assert set(codes) == {200}  # every status answered, on whichever worker
    assert len(workers) == 2
