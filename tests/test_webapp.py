"""The web backend example (examples/webapp.py) against a simulated gateway."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from aiohttp import test_utils, web

from wan_async.testing import FakeGateway

pytestmark = pytest.mark.anyio

AppFactory = Callable[..., web.Application]
EXAMPLE = Path(__file__).parents[1] / "examples" / "webapp.py"


@pytest.fixture(scope="module")
def create_app() -> AppFactory:
    """The example's app factory (examples/ is not a package: load it by path)."""
    name = "wan_async_example_webapp"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return cast("AppFactory", module.create_app)


@pytest.fixture
def make_app(
    create_app: AppFactory, gateway: FakeGateway, tmp_path: Path
) -> Callable[[], web.Application]:
    """A fresh app for the ``gateway`` fixture, all sharing one task store (as restarts do)."""
    store = tmp_path / "tasks.json"
    return lambda: create_app(
        store_path=store, base_url=gateway.base_url, api_key=gateway.api_key, clock=gateway.clock
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
