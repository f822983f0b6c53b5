"""The web backend example (examples/webapp.py) against a simulated gateway."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import anyio
import pytest
from aiohttp import test_utils, web

from wan_async.testing import FakeGateway, ScaledClock

pytestmark = pytest.mark.anyio

AppFactory = Callable[..., web.Application]
EXAMPLE = Path(__file__).parents[1] / "examples" / "webapp.py"
STORE_WORKER = Path(__file__).with_name("_webapp_store_worker.py")
#: The gateway forgets a task after a day; the store drops ids as old as that.
DAY = 24 * 3600.0


@pytest.fixture(scope="module")
def webapp() -> ModuleType:
    """The example module (examples/ is not a package: load it by path)."""
    name = "wan_async_example_webapp"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def create_app(webapp: ModuleType) -> AppFactory:
    """The example's app factory."""
    return cast("AppFactory", webapp.create_app)


@pytest.fixture
def make_app(create_app: AppFactory, gateway: FakeGateway, tmp_path: Path) -> AppFactory:
    """A fresh app for the ``gateway`` fixture, all sharing one task store (as restarts and
    the workers of one host do); keyword arguments go to ``create_app``."""
    store = tmp_path / "tasks.json"
    return lambda **options: create_app(
        store_path=store,
        base_url=gateway.base_url,
        api_key=gateway.api_key,
        clock=gateway.clock,
        **options,
    )


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[test_utils.TestClient[Any, Any]]:
    """Run ``app`` on a loopback port (start-up and cleanup included) and talk to it."""
    async with test_utils.TestClient(test_utils.TestServer(app)) as http:
        yield http


def strict_json(text: str) -> Any:
    """Parse ``text`` as JSON proper: ``NaN`` and ``Infinity`` are refused."""

    def refuse(name: str) -> Any:
        msg = f"{name} is not JSON"
        raise ValueError(msg)

    return json.loads(text, parse_constant=refuse)


async def poll_until_done(
    http: test_utils.TestClient[Any, Any], task_id: str
) -> tuple[dict[str, Any], int]:
    """GET the video every 10 ms until it is done; return the last answer and the GETs sent."""
    gets = 0
    with anyio.fail_after(10):
        while True:
            response = await http.get(f"/videos/{task_id}")
            gets += 1
            assert response.status == 200
            body = cast("dict[str, Any]", await response.json())
            if body["done"]:
                return body, gets
            await anyio.sleep(0.01)


@contextlib.contextmanager
def store_workers(
    store: Path, names: list[str], count: int, *options: str
) -> Iterator[Callable[[], None]]:
    """Start one ``tests/_webapp_store_worker.py`` process per name, each loading the example
    and storing ``count`` ids in ``store``; yield ``go``, which sets them all appending at once.
    On leaving, wait for them all (and require a clean exit and ``done``)."""
    processes: list[subprocess.Popen[str]] = []
    try:
        for name in names:
            argv = [sys.executable, str(STORE_WORKER), str(EXAMPLE), str(store), name, str(count)]
            processes.append(
                subprocess.Popen(
                    [*argv, *options],
                    env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"

        def go() -> None:
            for process in processes:
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()

        yield go
        for process in processes:
            out, _ = process.communicate(timeout=10)
            assert (process.returncode, out) == (0, "done\n")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()


async def eventually(condition: Callable[[], Awaitable[bool]]) -> None:
    """Check ``condition`` every 10 ms until it holds (for 5 s at most)."""
    with anyio.fail_after(5):
        while True:
            if await condition():
                return
            await anyio.sleep(0.01)


def records(store: Path) -> list[dict[str, Any]]:
    """Every record of the store file, each of which must be a whole JSON line."""
    return [json.loads(line) for line in store.read_text(encoding="utf-8").splitlines() if line]


def test_workers_sharing_the_store_lose_no_id(webapp: ModuleType, tmp_path: Path) -> None:
    """4 worker processes storing 150 ids each in one file at once: all 600 are there after.

    (The old store rewrote the whole file from each process's own ids, through one temporary
    name: the last writer's ids only, or a crash in ``os.replace``.)"""
    store = tmp_path / "tasks.json"
    names = [f"worker{n}" for n in range(4)]
    with store_workers(store, names, 150) as go:
        go()
    expected = {f"{name}-{i}" for name in names for i in range(150)}
    assert set(webapp.TaskStore(store).read()) == expected
    assert sorted(record["task_id"] for record in records(store)) == sorted(expected)
    # Task ids of paying users: the owner's only, lock file included.
    assert store.stat().st_mode & 0o777 == 0o600
    assert store.with_name("tasks.json.lock").stat().st_mode & 0o777 == 0o600


def test_compaction_while_workers_append_drops_only_expired_ids(
    webapp: ModuleType, tmp_path: Path
) -> None:
    """Compacting over and over while 3 processes append: every young id is kept, every
    expired one dropped, and a POST's line never lands in a file renamed away."""
    path = tmp_path / "tasks.json"
    store = webapp.TaskStore(path)
    now = time.time()
    for i in range(20):
        store.append(f"seed-young-{i}", now - DAY + 3600)
        store.append(f"seed-expired-{i}", now - DAY - 1)
    names = [f"worker{n}" for n in range(3)]
    compactions = 0
    with store_workers(path, names, 100, "expired") as go:
        go()
        # Each worker stores expired ids too: every compaction has a file to replace.
        while compactions < 200:
            kept = store.compact(time.time())
            compactions += 1
            if len(kept) >= 20 + 3 * 100:
                break
    kept = store.compact(time.time())
    young = {f"seed-young-{i}" for i in range(20)} | {
        f"{name}-{i}" for name in names for i in range(100)
    }
    assert set(kept) == young
    assert set(store.read()) == young
    assert {record["task_id"] for record in records(path)} == young
    assert path.stat().st_mode & 0o777 == 0o600
    assert compactions > 1
    # Each compaction wrote a temporary file of its own and renamed it: none is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.json", "tasks.json.lock"]


def test_the_store_reads_the_old_format_and_skips_torn_records(
    webapp: ModuleType, tmp_path: Path
) -> None:
    """A store of the old format is read and rewritten as records; a record torn by a crash
    is skipped, and spoils neither the record after it nor a compaction."""
    path = tmp_path / "tasks.json"
    now = time.time()
    old_format = {"tasks": {"before-upgrade": now - 60, "expired": now - DAY - 60}}
    path.write_text(json.dumps(old_format, indent=1), encoding="utf-8")
    store = webapp.TaskStore(path)
    store.append("after-upgrade", now)
    with path.open("ab") as file:
        file.write(b'\n{"task_id": "torn", "submitt')  # a crash mid-write
    store.append("after-the-crash", now)
    expected = {"before-upgrade", "after-upgrade", "after-the-crash"}
    assert set(store.read()) == expected | {"expired"}
    assert set(store.compact(now)) == expected
    assert [record["task_id"] for record in records(path)] == [
        "before-upgrade",
        "after-upgrade",
        "after-the-crash",
    ]
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("failing", ["append", "add"])
async def test_a_store_failure_after_the_submit_still_answers_202(
    make_app: AppFactory,
    gateway: FakeGateway,
    webapp: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    """The task exists and is billed: a full disk gets its caller the 202 anyway (a 500 would
    make it retry and pay twice), and an ERROR names the task that will not be re-attached."""

    def no_space(*args: object) -> None:
        raise OSError(28, "No space left on device")

    async def no_space_async(*args: object) -> None:
        no_space()

    monkeypatch.setattr(webapp.TaskStore, failing, no_space_async if failing == "add" else no_space)
    caplog.set_level(logging.ERROR)
    async with serve(make_app()) as http:
        response = await http.post("/videos", json={"prompt": "a paper boat"})
        assert response.status == 202
        task_id = strict_json(await response.text())["task_id"]
        # This worker still answers for it until it stops.
        assert (await http.get(f"/videos/{task_id}")).status == 200
    assert gateway.stats.tasks_created == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert task_id in errors[0]
    assert "will not be re-attached after a restart" in errors[0]
    assert "No space left on device" in caplog.text


async def test_a_restart_reattaches_the_ids_of_every_worker(
    make_app: AppFactory, gateway: FakeGateway
) -> None:
    """Two workers sharing the store, taking POSTs in turn; after a restart one app answers
    for every task either took, watched by its poller, without a second submit."""
    async with serve(make_app()) as first, serve(make_app()) as second:
        ids = []
        for i in range(3):
            for worker in (first, second):
                response = await worker.post("/videos", json={"prompt": f"video {i}"})
                assert response.status == 202
                ids.append((await response.json())["task_id"])
        # Each worker answers for its own tasks only (a shared live store would be needed).
        assert (await second.get(f"/videos/{ids[0]}")).status == 404
    gets_before = {task_id: gateway.stats.gets_per_task[task_id] for task_id in ids}
    async with serve(make_app()) as http:

        async def all_checked() -> bool:
            # Re-attached (not a 404) and checked at the gateway since the restart: watched.
            for task_id in ids:
                response = await http.get(f"/videos/{task_id}")
                assert response.status == 200
                if gateway.stats.gets_per_task[task_id] == gets_before[task_id]:
                    return False
            return True

        await eventually(all_checked)
    assert gateway.stats.tasks_created == 6


async def test_a_running_app_compacts_its_store_and_forgets_expired_tasks(
    make_app: AppFactory, gateway: FakeGateway, webapp: ModuleType, tmp_path: Path
) -> None:
    """While the app runs, ids past the gateway's day are dropped from the store (another
    worker's too) and a finished task stops being answered for once the gateway forgot it."""
    store = webapp.TaskStore(tmp_path / "tasks.json")
    async with serve(make_app(compact_every=15.0)) as http:  # 50 ms of the test's clock
        response = await http.post("/videos", json={"prompt": "a paper boat"})
        task_id = (await response.json())["task_id"]
        await poll_until_done(http, task_id)
        # Another worker's id, stored a day and a minute ago.
        store.append("task_expired_elsewhere", gateway.clock.time() - DAY - 60)

        async def compacted() -> bool:
            return "task_expired_elsewhere" not in store.read()

        await eventually(compacted)
        assert set(store.read()) == {task_id}
        assert (await http.get(f"/videos/{task_id}")).status == 200
        cast("ScaledClock", gateway.clock).step(DAY)

        async def forgotten() -> bool:
            gone = (await http.get(f"/videos/{task_id}")).status == 404
            return gone and store.read() == {}

        await eventually(forgotten)


async def test_submit_then_poll_costs_the_gateway_almost_nothing(
    make_app: Callable[[], web.Application], gateway: FakeGateway
) -> None:
    """POST answers 202 at once; GETs to the app are answered from the shared poller's handle."""
    async with serve(make_app()) as http:
        response = await http.post("/videos", json={"prompt": "a paper boat", "size": "1280*720"})
        assert response.status == 202
        task_id = (await response.json())["task_id"]
        assert response.headers["Location"] == f"/videos/{task_id}"
        body, app_gets = await poll_until_done(http, task_id)
        while_running = gateway.stats.gets_per_task[task_id]
        for _ in range(50):
            again = await http.get(f"/videos/{task_id}")
            assert (await again.json())["video_url"] == body["video_url"]
    assert body["status"] == "SUCCESS"
    assert body["video_url"].startswith(gateway.storage_url)
    # While it ran, the gateway saw the poller's pace, not the app's...
    assert while_running < app_gets
    # ...and a finished video costs the gateway nothing at all.
    assert gateway.stats.gets_per_task[task_id] == while_running


async def test_invalid_requests_get_400_with_every_problem(
    make_app: Callable[[], web.Application], gateway: FakeGateway
) -> None:
    """Bad fields, a missing prompt or a body that is not JSON: 400, and nothing is sent."""
    async with serve(make_app()) as http:
        response = await http.post(
            "/videos", json={"prompt": "x", "size": "1*1", "duration": 7, "seed": -1}
        )
        assert response.status == 400
        body = await response.json()
        assert body["error"] == "invalid_request"
        assert {p["field"] for p in body["problems"]} == {"size", "duration", "seed"}
        assert (await http.post("/videos", json={"size": "1280*720"})).status == 400
        assert (await http.post("/videos", json={"prompt": "x", "colour": "red"})).status == 400
        assert (await http.post("/videos", data=b"not json")).status == 400
        assert (await http.get("/videos/task_never_submitted")).status == 404
    assert gateway.stats.tasks_created == 0


async def test_a_restarted_app_reattaches_the_stored_tasks(
    make_app: Callable[[], web.Application], gateway: FakeGateway
) -> None:
    """Tasks submitted before a restart are answered after it, without a second submit."""
    async with serve(make_app()) as http:
        ids = []
        for prompt in ("before the deploy", "[fail] also before"):
            response = await http.post("/videos", json={"prompt": prompt})
            assert response.status == 202
            ids.append((await response.json())["task_id"])
        still_running = await (await http.get(f"/videos/{ids[0]}")).json()
        assert still_running["done"] is False
    # The first app is gone (its client closed); a new one starts from the same store.
    async with serve(make_app()) as http:
        ok, _ = await poll_until_done(http, ids[0])
        failed, _ = await poll_until_done(http, ids[1])
    assert ok["status"] == "SUCCESS"
    assert ok["video_url"]
    assert failed["status"] == "FAILURE"
    assert failed["error"]["code"] == "DataInspectionFailed"
    assert gateway.stats.tasks_created == 2


async def test_nan_and_infinity_in_a_body_are_refused_in_strict_json(
    make_app: Callable[[], web.Application], gateway: FakeGateway
) -> None:
    """NaN, Infinity and -Infinity are not JSON: 400, answered in strict JSON, nothing sent."""
    async with serve(make_app()) as http:
        for constant in ("NaN", "Infinity", "-Infinity"):
            response = await http.post(
                "/videos",
                data=f'{{"prompt": "a cat", "seed": {constant}}}',
                headers={"Content-Type": "application/json"},
            )
            assert response.status == 400
            body = strict_json(await response.text())
            assert body["error"] == "invalid_json"
            assert constant in body["message"]
    assert gateway.stats.tasks_created == 0


async def test_every_answer_is_json_even_aiohttps_own_errors(
    make_app: Callable[[], web.Application],
) -> None:
    """An unknown route (404) and a wrong method (405) answer in JSON like the app's errors."""
    async with serve(make_app()) as http:
        missing = await http.get("/nowhere")
        assert missing.status == 404
        assert strict_json(await missing.text())["error"] == "http_error"
        wrong = await http.get("/videos")
        assert wrong.status == 405
        assert strict_json(await wrong.text())["error"] == "http_error"
        assert wrong.headers["Allow"] == "POST"


async def test_an_unknown_model_is_a_400_with_the_gateways_message(
    make_app: Callable[[], web.Application], gateway: FakeGateway
) -> None:
    """The gateway's 503 model_not_found is the caller's mistake: 400 carrying its message."""
    async with serve(make_app()) as http:
        response = await http.post("/videos", json={"prompt": "a cat", "model": "wan9-t2v"})
        assert response.status == 400
        body = strict_json(await response.text())
    assert body["error"] == "model_not_found"
    assert body["message"].startswith("No available channel for model wan9-t2v under group")
    assert gateway.stats.tasks_created == 0
