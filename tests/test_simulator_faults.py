"""Faults for the client's reliability work: errors after create, keys, proxies, outages."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anyio
import pytest

from wan_async.testing import Fault, ScaledClock

from .test_simulator import (
    EPOCH,
    GOOD,
    KEY,
    PROMPT,
    SUBMIT_PATH,
    Api,
    _no_server_errors,  # noqa: F401 - the autouse fixture applies here too
    advance,
    fixed,
    serve,
)

pytestmark = pytest.mark.anyio

AFTER_UPSTREAM = [
    (Fault.DO_REQUEST_FAILED_AFTER_CREATE, "do_request_failed"),
    (Fault.READ_RESPONSE_BODY_FAILED, "read_response_body_failed"),
    (Fault.UNMARSHAL_RESPONSE_BODY_FAILED, "unmarshal_response_body_failed"),
    (Fault.INVALID_RESPONSE, "invalid_response"),
    (Fault.INSERT_TASK_FAILED, "insert_task_failed"),
]


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


async def fresh_post(url: str, body: Any, headers: dict[str, str]) -> int:
    """POST on a new connection (no keep-alive pool) and return the status."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        return response.status


# -- errors after upstream accepted the task ---------------------------------------------------


@pytest.mark.parametrize(("fault", "code"), AFTER_UPSTREAM)
async def test_error_after_upstream_creates_an_unrecorded_billed_task(
    fault: Fault, code: str
) -> None:
    """A 500 sent after upstream accepted: no id, no row, yet the task runs and is billed."""
    async with serve(slots=1, processing_time=fixed(100)) as (gw, api):
        gw.inject(fault, on="submit")
        status, _, text = await api.post(GOOD)
        answer = json.loads(text)
        assert status == 500
        assert answer == {"code": code, "message": answer["message"], "data": None}
        assert answer["message"]
        assert gw.stats.tasks_per_prompt == {PROMPT: 1}
        assert gw.tasks() == []
        (ghost,) = gw.unrecorded_tasks()
        assert not ghost.recorded
        # No GET finds it: the gateway has no row for the id it would have had.
        status, _, text = await api.get_raw(ghost.task_id)
        assert (status, json.loads(text)["code"]) == (400, "task_not_exist")
        # It holds upstream's only slot: the next task waits for it.
        second = await api.submit("second")
        advance(gw, 50)
        gw.refresh_now()
        assert (await api.get(second))["status"] == "QUEUED"
        advance(gw, 100)
        gw.refresh_now()
        assert (await api.get(second))["status"] == "IN_PROGRESS"
        (ghost,) = gw.unrecorded_tasks()
    assert (ghost.upstream_status, ghost.status) == ("SUCCEEDED", "NOT_START")
    assert gw.stats.requests[("submit", "500")] == 1
    assert gw.stats.tasks_created == 2


async def test_snapshots_show_upstream_now_without_a_refresh() -> None:
    """unrecorded_tasks() and task() report upstream's state at the clock's time."""
    async with serve(processing_time=fixed(10)) as (gw, api):
        gw.inject(Fault.INSERT_TASK_FAILED)
        await api.post(GOOD)
        task_id = await api.submit("stored")
        advance(gw, 20)
        (ghost,) = gw.unrecorded_tasks()
        stored = gw.task(task_id)
    assert (ghost.upstream_status, ghost.upstream_end) == ("SUCCEEDED", EPOCH + 10)
    # The gateway's own view waits for a refresh.
    assert (stored.upstream_status, stored.status) == ("SUCCEEDED", "NOT_START")


async def test_server_error_still_creates_nothing() -> None:
    """SERVER_ERROR keeps its meaning: do_request_failed before upstream took the task."""
    async with serve() as (gw, api):
        gw.inject(Fault.SERVER_ERROR, on="submit")
        status, _, text = await api.post(GOOD)
    assert (status, json.loads(text)["code"]) == (500, "do_request_failed")
    assert gw.stats.tasks_created == 0
    assert gw.unrecorded_tasks() == []


async def test_no_task_id_answers_200_without_id_and_the_task_runs() -> None:
    """NO_TASK_ID: a 200 whose body lacks the id; the task is stored, refreshed and billed."""
    async with serve(processing_time=fixed(30)) as (gw, api):
        gw.inject(Fault.NO_TASK_ID)
        status, _, text = await api.post(GOOD)
        advance(gw, 40)
        gw.refresh_now()
        (task,) = gw.tasks()
    answer = json.loads(text)
    assert status == 200
    assert "id" not in answer
    assert (answer["object"], answer["status"]) == ("video", "queued")
    assert (task.recorded, task.status) == (True, "SUCCESS")
    assert gw.stats.tasks_per_prompt == {PROMPT: 1}


# -- the key -----------------------------------------------------------------------------------


async def auth_statuses(api: Api, task_id: str) -> tuple[int, int]:
    """The status of a submit and of a GET with the session's key."""
    return (await api.post(GOOD))[0], (await api.get_raw(task_id))[0]


async def test_revoked_key_gets_401_on_every_request_until_restored() -> None:
    """revoke_key(): 401 in the middleware shape for submits and GETs; downloads still work."""
    async with serve(processing_time=fixed(10)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 15)
        gw.refresh_now()
        url = (await api.get(task_id))["fail_reason"]
        gw.revoke_key()
        assert gw.key_state == "revoked"
        status, headers, text = await api.get_raw(task_id)
        answer = json.loads(text)
        assert status == 401
        assert set(answer) == {"error"}
        assert answer["error"]["message"].endswith(
            f"(request id: {headers['X-Oneapi-Request-Id']})"
        )
        assert await auth_statuses(api, task_id) == (401, 401)
        assert (await api.download(url))[0] == 200
        gw.restore_key()
        assert await auth_statuses(api, task_id) == (200, 200)
    assert gw.stats.tasks_created == 2


async def test_rotated_key_refuses_the_old_one() -> None:
    """rotate_key(new): the old key gets 401 from then on, the new one is accepted."""
    async with serve() as (gw, api):
        task_id = await api.submit()
        gw.rotate_key("sk-rotated")
        assert gw.api_key == "sk-rotated"
        assert await auth_statuses(api, task_id) == (401, 401)
        api.auth = {"Authorization": "Bearer sk-rotated"}
        assert await auth_statuses(api, task_id) == (200, 200)
        with pytest.raises(ValueError, match="new_key"):
            gw.rotate_key("")


async def test_forbidden_key_gets_403_until_restored() -> None:
    """forbid_key(): 403 in the middleware shape on every request; restore_key() ends it."""
    async with serve() as (gw, api):
        task_id = await api.submit()
        gw.forbid_key()
        status, _, text = await api.post(GOOD)
        assert (status, set(json.loads(text))) == (403, {"error"})
        assert await auth_statuses(api, task_id) == (403, 403)
        gw.restore_key()
        assert await auth_statuses(api, task_id) == (200, 200)
    assert gw.stats.tasks_created == 2


# -- proxies in front --------------------------------------------------------------------------


async def test_rate_limit_html_is_a_proxy_page_on_any_kind() -> None:
    """RATE_LIMIT_HTML: 429 with nginx's HTML page; Retry-After only when injected with one."""
    async with serve(processing_time=fixed(10)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 15)
        gw.refresh_now()
        url = (await api.get(task_id))["fail_reason"]
        gw.inject(Fault.RATE_LIMIT_HTML, on="submit")
        gw.inject(Fault.RATE_LIMIT_HTML, on="get", retry_after=3)
        gw.inject(Fault.RATE_LIMIT_HTML, on="download")
        answers = [await api.post(GOOD), await api.get_raw(task_id), await api.download(url)]
    for status, headers, body in answers:
        assert status == 429
        assert headers["Content-Type"].startswith("text/html")
        assert b"<h1>429 Too Many Requests</h1>" in body
    assert [a[1].get("Retry-After") for a in answers] == [None, "3", None]
    assert gw.stats.tasks_created == 1


@pytest.mark.parametrize("kind", ["submit", "get", "download"])
async def test_redirect_leads_to_an_html_login_page(kind: str) -> None:
    """REDIRECT: 302 to a login page on the same host, which answers 200 HTML; nothing made."""
    async with serve(processing_time=fixed(10)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 15)
        gw.refresh_now()
        video = (await api.get(task_id))["fail_reason"]
        gw.inject(Fault.REDIRECT, on=kind)  # type: ignore[arg-type]
        url, method = {
            "submit": (gw.base_url + SUBMIT_PATH, "POST"),
            "get": (f"{gw.base_url}{SUBMIT_PATH}/{task_id}", "GET"),
            "download": (video, "GET"),
        }[kind]
        headers = {} if kind == "download" else api.auth
        async with api.session.request(
            method,
            url,
            json=GOOD if method == "POST" else None,
            headers=headers,
            allow_redirects=False,
        ) as response:
            status, location = response.status, response.headers["Location"]
            body = await response.text()
        host = gw.storage_url if kind == "download" else gw.base_url
        async with api.session.get(location) as page:
            login = (page.status, page.content_type, await page.text())
    assert status == 302
    assert location.startswith(host + "/login?next=")
    assert "sign in" in body
    assert login[:2] == (200, "text/html")
    assert "password" in login[2]
    assert gw.stats.tasks_created == 1
    # One 302 and, for the gateway, the 200s that made and read the task.
    expected = {"302": 1} if kind == "download" else {"302": 1, "200": 1}
    assert gw.stats.outcomes(kind) == expected  # type: ignore[arg-type]


async def test_a_get_that_never_parses_for_one_task_until_cleared() -> None:
    """NOT_JSON with task_id and times=None: every GET of that task gets HTML, others JSON."""
    async with serve() as (gw, api):
        stuck, fine = await api.submit("stuck"), await api.submit("fine")
        gw.inject(Fault.NOT_JSON, task_id=stuck, times=None)
        assert gw.pending_faults == 1
        for _ in range(3):
            status, headers, body = await api.get_raw(stuck)
            assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/html")
            with pytest.raises(json.JSONDecodeError):
                json.loads(body)
            assert (await api.get(fine))["task_id"] == fine
        gw.clear_faults(Fault.NOT_JSON)
        assert (await api.get(stuck))["task_id"] == stuck
    assert gw.stats.faults[("get", Fault.NOT_JSON)] == 3


async def test_wrong_shape_for_every_get_until_cleared() -> None:
    """WRONG_SHAPE with times=None: every GET is {"code":"success","data":null}."""
    async with serve() as (gw, api):
        task_id = await api.submit()
        gw.inject(Fault.WRONG_SHAPE, on="get", times=None)
        answers = [json.loads((await api.get_raw(task_id))[2]) for _ in range(3)]
        gw.clear_faults()
        assert (await api.get(task_id))["task_id"] == task_id
    assert answers == [{"code": "success", "data": None}] * 3


def test_bad_injections_are_refused() -> None:
    """task_id= only narrows GET and download faults; times is positive or None."""
    from wan_async.testing import FakeGateway

    gw = FakeGateway()
    with pytest.raises(ValueError, match="task_id"):
        gw.inject(Fault.RATE_LIMIT, on="submit", task_id="task_x")
    with pytest.raises(ValueError, match="task_id"):
        gw.inject(Fault.INSERT_TASK_FAILED, task_id="task_x")
    with pytest.raises(ValueError, match="never applies"):
        gw.inject(Fault.NOT_JSON, on="submit")
    with pytest.raises(ValueError, match="times"):
        gw.inject(Fault.RATE_LIMIT, times=0)


# -- a gateway that is down --------------------------------------------------------------------


async def test_refusing_gateway_refuses_connections_then_comes_back() -> None:
    """go_down(): connections are refused (nothing created); come_back() serves the same URL."""
    async with serve() as (gw, api):
        task_id = await api.submit()
        url = gw.base_url + SUBMIT_PATH
        auth = {"Authorization": f"Bearer {KEY}"}
        await gw.go_down()
        assert gw.is_down
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh_post(url, GOOD, auth)
        await gw.come_back()
        assert not gw.is_down
        assert await fresh_post(url, GOOD, auth) == 200
        assert (await api.get(task_id))["task_id"] == task_id
    assert gw.stats.tasks_created == 2


async def test_bad_gateway_mode_answers_502_html_to_every_gateway_request() -> None:
    """go_down("bad_gateway"): the proxy answers 502 HTML; downloads and upstream go on."""
    async with serve(processing_time=fixed(10)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 15)
        gw.refresh_now()
        url = (await api.get(task_id))["fail_reason"]
        await gw.go_down("bad_gateway")
        answers = [await api.post(GOOD), await api.get_raw(task_id)]
        assert (await api.download(url))[0] == 200
        await gw.come_back()
        assert (await api.post(GOOD))[0] == 200
    assert [(a[0], b"502 Bad Gateway" in a[2]) for a in answers] == [(502, True), (502, True)]
    assert gw.stats.outcomes("submit") == {"200": 2, "502": 1}
    assert gw.stats.tasks_created == 2


async def test_refresh_loop_stops_while_down_and_restarts() -> None:
    """No refresh pass runs while the gateway is down; they resume once it comes back."""
    async with serve(clock=ScaledClock(300), tick=3) as (gw, api):
        await api.submit()
        with anyio.fail_after(5):
            while gw.stats.refresh_passes == 0:  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.005)
        await gw.go_down("bad_gateway")
        passes = gw.stats.refresh_passes
        await anyio.sleep(0.1)  # 30 clock seconds: ten ticks
        assert gw.stats.refresh_passes == passes
        await gw.come_back()
        with anyio.fail_after(5):
            while gw.stats.refresh_passes == passes:  # noqa: ASYNC110
                await anyio.sleep(0.005)
