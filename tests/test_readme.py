"""The README's code examples run as written, against the simulator over loopback."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import wan_async
from wan_async import PollPolicy, VideoRequest
from wan_async.testing import FakeGateway, ScaledClock

from .conftest import SCALE, RedisServer, fixed_processing

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def python_block(after: str) -> str:
    """The first ```python block after the heading ``after`` in the README."""
    start = README.index(after)
    match = re.search(r"```python\n(.*?)```", README[start:], re.DOTALL)
    assert match is not None, f"no python block after {after!r}"
    return match.group(1)


async def test_quickstart_generates_and_downloads_a_video(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart, verbatim, against a simulator named by WAN_API_KEY and WAN_BASE_URL."""
    code = python_block("## Quickstart")
    async with FakeGateway(tick=1.0, processing_time=fixed_processing(2.0)) as gw:
        monkeypatch.setenv("WAN_API_KEY", gw.api_key)
        monkeypatch.setenv("WAN_BASE_URL", gw.base_url)
        monkeypatch.chdir(tmp_path)
        # anyio.run() needs a thread without a running event loop.
        await anyio.to_thread.run_sync(exec, compile(code, "README quickstart", "exec"), {})
        (task,) = gw.tasks()
    assert task.prompt == "A paper boat on a rainy street"
    assert (tmp_path / "boat.mp4").stat().st_size > 0


async def test_sync_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync example, verbatim, from a thread with no event loop (as a script runs)."""
    code = python_block("### Without async")
    printed: list[tuple[Any, ...]] = []
    async with FakeGateway(tick=1.0, processing_time=fixed_processing(2.0)) as gw:
        monkeypatch.setenv("WAN_API_KEY", gw.api_key)
        monkeypatch.setenv("WAN_BASE_URL", gw.base_url)
        namespace: dict[str, Any] = {"print": lambda *a: printed.append(a)}
        await anyio.to_thread.run_sync(exec, compile(code, "README sync", "exec"), namespace)
        assert gw.stats.tasks_created == 4
    assert str(printed[0][0]).startswith("http://127.0.0.")  # the video URL
    assert printed[-1] == (3, "of", 3, "ended")
    assert all(o.ok for o in namespace["outcomes"])


async def test_batch_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch example (a fragment: it needs ``requests``) runs against a compressed clock."""
    code = python_block("## Batches and the journal")
    body = "async def example(requests, WanClient, print):\n" + textwrap.indent(code, "    ")
    clock = ScaledClock(SCALE)
    async with FakeGateway(clock=clock, processing_time=fixed_processing(60)) as gw:
        monkeypatch.setenv("WAN_API_KEY", gw.api_key)
        monkeypatch.setenv("WAN_BASE_URL", gw.base_url)
        monkeypatch.chdir(tmp_path)
        namespace: dict[str, Any] = {}
        exec(compile(body, "README batch example", "exec"), namespace)
        printed: list[tuple[Any, ...]] = []
        client = functools.partial(
            wan_async.WanClient, clock=clock, poll_policy=PollPolicy(refresh_period=gw.tick)
        )
        requests = [VideoRequest(prompt=f"scene {i}", model="wan2.6-t2v") for i in range(3)]
        await namespace["example"](requests, client, lambda *a: printed.append(a))
    assert [p[0] for p in printed] == [0, 1, 2]
    assert all(isinstance(p[-1], Path) for p in printed)
    assert (tmp_path / "batch.jsonl").exists()
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 3


async def test_as_completed_example_runs() -> None:
    """The as_completed example stops its batch at the first failed item."""
    code = python_block("yields the same outcomes as")
    body = "async def example(requests, WanClient, print):\n" + textwrap.indent(code, "    ")
    clock = ScaledClock(SCALE)
    async with FakeGateway(clock=clock, slots=2, processing_time=fixed_processing(60)) as gw:
        namespace: dict[str, Any] = {}
        exec(compile(body, "README as_completed example", "exec"), namespace)
        printed: list[tuple[Any, ...]] = []
        client = functools.partial(
            wan_async.WanClient,
            api_key=gw.api_key,
            base_url=gw.base_url,
            clock=clock,
            poll_policy=PollPolicy(refresh_period=gw.tick),
        )
        prompts = ["[fail] moderated", *(f"scene {i}" for i in range(30))]
        requests = [VideoRequest(prompt=p, model="wan2.6-t2v") for p in prompts]
        await namespace["example"](requests, client, lambda *a: printed.append(a))
        await clock.sleep(600)
    assert printed[-1][2] is False
    assert gw.stats.tasks_created < 31


async def test_progress_example_runs() -> None:
    """The progress example prints a line per move, ending with every item ended."""
    code = python_block("### Progress")
    body = "async def example(requests, WanClient, print):\n" + textwrap.indent(code, "    ")
    clock = ScaledClock(SCALE)
    async with FakeGateway(clock=clock, slots=2, processing_time=fixed_processing(60)) as gw:
        namespace: dict[str, Any] = {}
        exec(compile(body, "README progress example", "exec"), namespace)
        printed: list[str] = []
        client = functools.partial(
            wan_async.WanClient,
            api_key=gw.api_key,
            base_url=gw.base_url,
            clock=clock,
            poll_policy=PollPolicy(refresh_period=gw.tick),
        )
        requests = [VideoRequest(prompt=f"scene {i}", model="wan2.6-t2v") for i in range(4)]
        await namespace["example"](requests, client, lambda *a: printed.append(" ".join(a)))
    assert printed[0].startswith("0/4 ended")
    assert printed[0].endswith("ETA None")
    assert "not yet checked" in printed[0]
    assert printed[-1].startswith("4/4 ended")
    assert printed[-1].endswith("ETA 0.0")


def test_testing_example_passes_as_a_pytest_file(tmp_path: Path) -> None:
    """The "Testing your own code" example, saved as a test file, passes under plain pytest."""
    test_file = tmp_path / "test_readme_example.py"
    test_file.write_text(python_block("## Testing your own code"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def reliability_bullets() -> list[str]:
    """The bullets of the README's reliability section, each as one string."""
    start = README.index("## Reliability")
    end = README.index("\n## ", start + 1)
    bullets: list[str] = []
    for line in README[start:end].splitlines():
        if line.startswith("- "):
            bullets.append(line)
        elif line.startswith("  ") and bullets:
            bullets[-1] += " " + line.strip()
    return bullets


async def test_fleet_example_runs(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    """The fleet example, verbatim: WAN_REDIS_URL makes both clients members; the second
    follows the task from the store and asks the gateway nothing."""
    code = python_block("### Many workers, many hosts")
    printed: list[tuple[Any, ...]] = []
    async with FakeGateway(tick=1.0, processing_time=fixed_processing(2.0)) as gw:
        monkeypatch.setenv("WAN_API_KEY", gw.api_key)
        monkeypatch.setenv("WAN_BASE_URL", gw.base_url)
        monkeypatch.setenv("WAN_REDIS_URL", redis_server.url)
        namespace = {"print": lambda *args: printed.append(args)}
        await anyio.to_thread.run_sync(exec, compile(code, "README fleet", "exec"), namespace)
        assert gw.stats.tasks_created == 1
    assert printed == [(True, "SUCCESS", 0)]


def test_every_reliability_promise_names_tests_that_exist() -> None:
    """Each bullet of the reliability contract names the tests that check it, and they exist."""
    bullets = reliability_bullets()
    assert len(bullets) >= 10
    defined = set(
        re.findall(
            r"^(?:async )?def (test_\w+)\(",
            "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py")),
            re.MULTILINE,
        )
    )
    for bullet in bullets:
        match = re.search(r"<!-- tests: ([\w, ]+) -->", bullet)
        assert match is not None, f"no tests named for: {bullet[:80]}"
        named = [name.strip() for name in match.group(1).split(",")]
        assert set(named) <= defined, (bullet[:80], set(named) - defined)
