"""``wan_async.sync``: blocking calls for scripts, refused inside a running event loop."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from wan_async import TaskFailed, VideoRequest
from wan_async.sync import generate, generate_many
from wan_async.testing import FakeGateway, ScaledClock

from .conftest import SCALE, fixed_processing

pytestmark = pytest.mark.anyio


async def test_a_plain_script_generates_through_the_sync_facade(gateway: FakeGateway) -> None:
    """A script with no event loop: ``generate`` and ``generate_many`` return their results
    (one task each, by the simulator's own counters)."""
    clock = gateway.clock
    done = await anyio.run_process(
        [
            sys.executable,
            str(Path(__file__).with_name("_sync_script.py")),
            gateway.base_url,
            gateway.api_key,
            str(clock.scale),
            repr(clock.epoch),
            repr(clock.origin),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    ids = done.stdout.decode().split()
    assert len(ids) == 4
    assert sorted(ids) == sorted(t.task_id for t in gateway.tasks())
    assert gateway.stats.tasks_created == 4


async def test_the_sync_facade_is_refused_inside_a_running_loop(gateway: FakeGateway) -> None:
    """Called from async code it would block the loop: a RuntimeError naming the async API,
    and nothing sent."""
    request = VideoRequest(prompt="inside a loop", model="wan2.6-t2v")
    with pytest.raises(RuntimeError, match=r"await client\.generate\(request\)"):
        generate(request, base_url=gateway.base_url, api_key=gateway.api_key)
    with pytest.raises(RuntimeError, match=r"await client\.generate_many"):
        generate_many([request], base_url=gateway.base_url, api_key=gateway.api_key)
    assert gateway.stats.tasks_created == 0


async def test_sync_generate_many_from_a_thread_returns_outcomes_and_raises_failures(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """From a thread without a loop: outcomes in input order with the batch's options
    (journal) applied; ``generate`` raises the task's failure as the async call does."""
    options = {"base_url": gateway.base_url, "api_key": gateway.api_key, "clock": gateway.clock}
    requests = [VideoRequest(prompt=f"threaded {i}", model="wan2.6-t2v") for i in range(3)]
    journal = tmp_path / "batch.jsonl"

    def run() -> list[bool]:
        outcomes = generate_many(requests, return_outcomes=True, journal=journal, **options)
        return [o.ok for o in outcomes]

    assert await anyio.to_thread.run_sync(run) == [True, True, True]
    assert journal.exists()

    def fail() -> None:
        generate(VideoRequest(prompt="[fail] refused", model="wan2.6-t2v"), **options)

    with pytest.raises(TaskFailed):
        await anyio.to_thread.run_sync(fail)


async def test_ctrl_c_stops_a_sync_call_cleanly() -> None:
    """SIGINT while ``generate`` waits: the script ends with KeyboardInterrupt, soon, with
    its own loop closed (no "Task was destroyed", no unclosed session)."""
    async with FakeGateway(
        clock=ScaledClock(SCALE), processing_time=fixed_processing(100_000.0)
    ) as gateway:
        await _interrupt(gateway)


async def _interrupt(gateway: FakeGateway) -> None:
    clock = gateway.clock
    script = str(Path(__file__).with_name("_sync_script.py"))
    args = [gateway.base_url, gateway.api_key, str(clock.scale), repr(clock.epoch)]
    async with await anyio.open_process(
        [sys.executable, script, *args, repr(clock.origin), "wait"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    ) as process:
        with anyio.fail_after(20):
            while gateway.stats.tasks_created == 0:  # noqa: ASYNC110 - another process
                await anyio.sleep(0.02)
            process.send_signal(signal.SIGINT)
            await process.wait()
        assert process.stderr is not None
        errors = b"".join([chunk async for chunk in process.stderr]).decode()
    assert process.returncode != 0
    assert "KeyboardInterrupt" in errors
    assert "destroyed" not in errors
    assert "Unclosed" not in errors
