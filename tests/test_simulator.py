"""The simulator (wan_async.testing) behaves like the gateway of SPEC.md, over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from wan_async.testing import (
    FakeGateway,
    Fault,
    ScaledClock,
    default_processing_time,
)

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent / "gateway_examples"
SUBMIT_PATH = "/v1/video/generations"
KEY = "sk-test"
EPOCH = 1_765_328_779.0
PROMPT = "A marble statue in a shallow pool"


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No test may make aiohttp log an error (a traceback from a handler or a fault)."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


class ManualClock:
    """A clock that moves only when a test says so; the refresh loop never wakes up."""

    scale = 1.0

    def __init__(self, epoch: float = EPOCH) -> None:
        self._epoch = epoch
        self._elapsed = 0.0

    def time(self) -> float:
        return self._epoch + self._elapsed

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep_forever()

    def advance(self, seconds: float) -> None:
        self._elapsed += seconds


def fixed(seconds: float) -> Any:
    """A processing_time callable that always answers ``seconds``."""
    return lambda body, rng: seconds


class Api:
    """Raw HTTP helpers against one gateway."""

    def __init__(self, gw: FakeGateway, session: aiohttp.ClientSession) -> None:
        self.gw = gw
        self.session = session
        self.auth = {"Authorization": f"Bearer {KEY}"}

    async def post(
        self,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        data = raw if raw is not None else json.dumps(body).encode()
        hdrs = self.auth if headers is None else headers
        async with self.session.post(self.gw.base_url + SUBMIT_PATH, data=data, headers=hdrs) as r:
            return r.status, r.headers, await r.read()

    async def submit(self, prompt: str = PROMPT, **fields: Any) -> str:
        status, _, body = await self.post({"prompt": prompt, "model": "wan2.6-t2v", **fields})
        assert status == 200, body
        task_id: str = json.loads(body)["id"]
        return task_id

    async def get_raw(
        self, task_id: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        url = f"{self.gw.base_url}{SUBMIT_PATH}/{task_id}"
        async with self.session.get(url, headers=self.auth if headers is None else headers) as r:
            return r.status, r.headers, await r.read()

    async def get(self, task_id: str) -> dict[str, Any]:
        status, _, body = await self.get_raw(task_id)
        assert status == 200, body
        data: dict[str, Any] = json.loads(body)["data"]
        return data

    async def download(
        self, url: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        async with self.session.get(url, headers=headers or {}) as r:
            return r.status, r.headers, await r.read()


@contextlib.asynccontextmanager
async def serve(**kwargs: Any) -> AsyncIterator[tuple[FakeGateway, Api]]:
    """A started gateway (manual clock unless one is given) and a raw client for it."""
    kwargs.setdefault("clock", ManualClock())
    async with FakeGateway(**kwargs) as gw, aiohttp.ClientSession() as session:
        yield gw, Api(gw, session)


def advance(gw: FakeGateway, seconds: float) -> None:
    """Move the manual clock of ``gw`` on by ``seconds``."""
    clock = gw.clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)


def example(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return result


def missing_keys(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Keys of ``expected`` (recursively) that ``actual`` lacks."""
    if not isinstance(expected, dict):
        return []
    if not isinstance(actual, dict):
        return [path or "."]
    out = []
    for key, value in expected.items():
        if key not in actual:
            out.append(f"{path}.{key}")
        else:
            out.extend(missing_keys(value, actual[key], f"{path}.{key}"))
    return out


# -- submit ------------------------------------------------------------------------------------


async def test_submit_answers_like_the_documented_example() -> None:
    """A valid submit answers 200 with exactly the documented keys, and a request id header."""
    async with serve() as (_, api):
        status, headers, body = await api.post(example("submit_request.json"))
    answer = json.loads(body)
    assert status == 200
    assert set(answer) == set(example("submit_response.json"))
    assert answer["object"] == "video"
    assert answer["model"] == "wan2.5-t2v-preview"
    assert (answer["status"], answer["progress"]) == ("queued", 0)
    assert answer["created_at"] == int(EPOCH)
    assert re.fullmatch(r"task_[A-Za-z0-9]{32}", answer["id"])
    assert headers["X-Oneapi-Request-Id"]


async def test_uuid_task_ids() -> None:
    """task_id_style="uuid" gives the older gateways' UUID ids."""
    async with serve(task_id_style="uuid") as (_, api):
        task_id = await api.submit()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", task_id)


async def test_new_task_is_not_refreshed_until_a_pass_and_gets_advance_nothing() -> None:
    """Until a refresh pass, a task reads NOT_START / "0%" however much time passes."""
    async with serve(processing_time=fixed(10)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 100)
        first = await api.get(task_id)
        second = await api.get(task_id)
        gw.refresh_now()
        after = await api.get(task_id)
    assert first == second
    assert (first["status"], first["progress"]) == ("NOT_START", "0%")
    assert first["data"]["output"]["task_status"] == "PENDING"
    assert after["status"] == "SUCCESS"


# -- progression and queueing ------------------------------------------------------------------


async def test_statuses_follow_the_spec_table_with_few_slots() -> None:
    """With one slot, the second task is QUEUED while the first runs, then runs and ends."""
    async with serve(slots=1, processing_time=fixed(100)) as (gw, api):
        first, second = await api.submit("one"), await api.submit("two")
        advance(gw, 15)
        gw.refresh_now()
        a, b = await api.get(first), await api.get(second)
        assert (a["status"], a["progress"], a["start_time"]) == ("IN_PROGRESS", "30%", EPOCH + 15)
        assert (b["status"], b["progress"], b["start_time"]) == ("QUEUED", "20%", 0)
        assert a["data"]["output"]["task_status"] == "RUNNING"
        assert b["data"]["output"]["task_status"] == "PENDING"
        assert a["updated_at"] == b["updated_at"] == EPOCH + 15
        advance(gw, 90)
        gw.refresh_now()
        a, b = await api.get(first), await api.get(second)
        assert (a["status"], a["progress"], a["finish_time"]) == ("SUCCESS", "100%", EPOCH + 105)
        assert (b["status"], b["start_time"]) == ("IN_PROGRESS", EPOCH + 105)
        advance(gw, 200)
        gw.refresh_now()
        b = await api.get(second)
        assert (b["status"], b["finish_time"]) == ("SUCCESS", EPOCH + 305)
        info = gw.task(second)
    assert info.upstream_start == EPOCH + 100
    assert info.upstream_end == EPOCH + 200
    assert gw.peak_running == 1


async def test_statuses_progress_on_the_refresh_loop_with_a_scaled_clock() -> None:
    """On a fast clock the loop alone walks a task NOT_START -> QUEUED -> IN_PROGRESS -> SUCCESS."""
    clock = ScaledClock(200)
    async with serve(clock=clock, tick=15, slots=1, processing_time=fixed(45)) as (gw, api):
        await api.submit("first")
        task_id = await api.submit("second")
        seen: list[str] = []
        with anyio.fail_after(5):
            while not seen or seen[-1] != "SUCCESS":
                status = (await api.get(task_id))["status"]
                if not seen or seen[-1] != status:
                    seen.append(status)
                await anyio.sleep(0.005)
    assert seen == ["NOT_START", "QUEUED", "IN_PROGRESS", "SUCCESS"]
    assert gw.stats.refresh_passes >= 4


async def test_fifo_queue_runs_slots_tasks_at_once_in_order() -> None:
    """A freed slot goes at once to the oldest queued task."""
    async with serve(slots=2, processing_time=fixed(100)) as (gw, api):
        for i in range(5):
            await api.submit(f"p{i}")
        advance(gw, 1000)
        gw.refresh_now()
        starts = [t.upstream_start for t in gw.tasks()]
    assert starts == [EPOCH, EPOCH, EPOCH + 100, EPOCH + 100, EPOCH + 200]
    assert gw.peak_running == 2


async def test_shared_queue_delays_freed_slots_randomly() -> None:
    """On a shared account a freed slot comes back after a delay within shared_delay."""
    async with serve(
        slots=1, queue="shared", shared_delay=(10, 20), processing_time=fixed(100)
    ) as (gw, api):
        for i in range(4):
            await api.submit(f"p{i}")
        advance(gw, 10_000)
        gw.refresh_now()
        tasks = gw.tasks()
    assert all(t.status == "SUCCESS" for t in tasks)
    runs = sorted((t.upstream_start or 0, t.upstream_end or 0) for t in tasks)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(runs)]
    assert all(10 <= gap <= 20 for gap in gaps), gaps


@pytest.mark.parametrize("queue", ["fifo", "shared"])
async def test_upstream_schedule_does_not_depend_on_how_often_it_is_advanced(queue: str) -> None:
    """Refreshing every 10 s or once at the end yields the same upstream start and end times."""
    schedules = []
    for step in (10, 5000):
        async with serve(slots=2, queue=queue, seed=7) as (gw, api):
            for i in range(6):
                await api.submit(f"p{i}")
            for _ in range(5000 // step):
                advance(gw, step)
                gw.refresh_now()
            schedules.append([(t.upstream_start, t.upstream_end) for t in gw.tasks()])
    assert schedules[0] == schedules[1]
    assert all(end is not None for _, end in schedules[0])


async def test_a_pass_refreshes_at_most_max_refresh_per_tick_tasks_in_rotation() -> None:
    """With more unfinished tasks than the limit, each pass takes the next ones in turn."""
    async with serve(max_refresh_per_tick=2, processing_time=fixed(1000)) as (gw, api):
        ids = [await api.submit(f"p{i}") for i in range(5)]
        refreshed = []
        for _ in range(3):
            advance(gw, 15)
            gw.refresh_now()
            refreshed.append([(await api.get(i))["updated_at"] for i in ids])
    t1, t2, t3 = (int(EPOCH) + 15 * n for n in (1, 2, 3))
    c = int(EPOCH)
    assert refreshed[0] == [t1, t1, c, c, c]
    assert refreshed[1] == [t1, t1, t2, t2, c]
    assert refreshed[2] == [t3, t1, t2, t2, t3]
    assert gw.stats.task_refreshes == 6


async def test_gateway_fails_tasks_unfinished_after_task_ttl() -> None:
    """A task still unfinished task_ttl after submit is failed by the gateway itself."""
    async with serve(task_ttl=600, processing_time=fixed(900)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 600)
        gw.refresh_now()
        data = await api.get(task_id)
    assert (data["status"], data["progress"], data["fail_reason"]) == (
        "FAILURE",
        "100%",
        "task timeout",
    )


def test_default_processing_time_follows_size_and_duration() -> None:
    """Medians: 150 s for 1080P 5 s, x0.6 for 720P, x0.4 for 480P, linear in duration."""
    import random
    import statistics

    def median(size: str, duration: int) -> float:
        rng = random.Random(1)
        body = {"metadata": {"parameters": {"size": size, "duration": duration}}}
        return statistics.median(default_processing_time(body, rng) for _ in range(2001))

    assert median("1920*1080", 5) == pytest.approx(150, rel=0.05)
    assert median("1280*720", 5) == pytest.approx(90, rel=0.05)
    assert median("832*480", 5) == pytest.approx(60, rel=0.05)
    assert median("1920*1080", 10) == pytest.approx(300, rel=0.05)
    draws = [default_processing_time({}, random.Random(i)) for i in range(500)]
    assert all(30 <= d <= 900 for d in draws)
    short = {"metadata": {"parameters": {"size": "832*480", "duration": 1}}}
    assert min(default_processing_time(short, random.Random(i)) for i in range(50)) == 30


# -- success and failure shapes ----------------------------------------------------------------


@pytest.mark.parametrize("url_field", ["fail_reason", "result_url", "output"])
async def test_success_looks_like_the_documented_example(url_field: str) -> None:
    """A success has every key of get_success.json, with the URL where the version puts it."""
    async with serve(url_field=url_field, processing_time=fixed(50)) as (gw, api):
        task_id = await api.submit(metadata={"parameters": {"size": "1280*720", "duration": 10}})
        advance(gw, 60)
        gw.refresh_now()
        status, _, body = await api.get_raw(task_id)
    envelope = json.loads(body)
    assert status == 200
    assert missing_keys(example("get_success.json"), envelope) == []
    data = envelope["data"]
    output = data["data"]["output"]
    url = output["video_url"]
    assert url.startswith(gw.storage_url + f"/videos/{task_id}.mp4?Expires=")
    assert {"Expires", "OSSAccessKeyId", "Signature"} <= set(
        p.split("=")[0] for p in url.split("?")[1].split("&")
    )
    assert data["fail_reason"] == ("" if url_field == "output" else url)
    assert data.get("result_url") == (url if url_field == "result_url" else None)
    assert (output["orig_prompt"], output["actual_prompt"]) == (PROMPT, PROMPT + " (extended)")
    assert data["data"]["usage"] == {
        "video_count": 1,
        "video_duration": 10,
        "video_ratio": "1280*720",
    }
    for key in ("id", "created_at", "updated_at", "platform", "properties", "user_id", "group"):
        assert key in data


async def test_prompt_extend_off_gives_no_actual_prompt() -> None:
    """Without prompt_extend, upstream reports no rewritten prompt."""
    async with serve(processing_time=fixed(50)) as (gw, api):
        task_id = await api.submit(metadata={"parameters": {"prompt_extend": False}})
        advance(gw, 60)
        gw.refresh_now()
        output = (await api.get(task_id))["data"]["output"]
    assert "actual_prompt" not in output
    assert output["orig_prompt"] == PROMPT


@pytest.mark.parametrize(
    ("style", "reason"),
    [
        ("short", "task failed"),
        (
            "full",
            "task failed, code: DataInspectionFailed , message: "
            "Input data may contain inappropriate content.",
        ),
    ],
)
async def test_moderation_failure_fields(style: str, reason: str) -> None:
    """A "[fail]" prompt ends FAILURE with the code and message in data.data.output."""
    async with serve(fail_reason_style=style, processing_time=fixed(50)) as (gw, api):
        task_id = await api.submit("a [fail] prompt")
        advance(gw, 60)
        gw.refresh_now()
        envelope = json.loads((await api.get_raw(task_id))[2])
    data = envelope["data"]
    assert missing_keys(example("get_failure.json"), envelope) == []
    assert (data["status"], data["progress"], data["fail_reason"]) == ("FAILURE", "100%", reason)
    output = data["data"]["output"]
    assert output["task_status"] == "FAILED"
    assert output["code"] == "DataInspectionFailed"
    assert output["message"] == "Input data may contain inappropriate content."


async def test_failure_rate_fails_tasks_with_internal_error() -> None:
    """failure_rate=1 fails every task upstream with InternalError."""
    async with serve(failure_rate=1.0, processing_time=fixed(50)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 60)
        gw.refresh_now()
        output = (await api.get(task_id))["data"]["output"]
    assert (output["code"], output["message"]) == (
        "InternalError",
        "An internal error has occured, please try again later",
    )


async def test_finish_now_ends_a_task_at_once() -> None:
    """finish_now() ends a task upstream now; the next pass reports it."""
    async with serve(processing_time=fixed(500)) as (gw, api):
        ok, bad = await api.submit("ok"), await api.submit("bad")
        advance(gw, 5)
        gw.finish_now(ok)
        gw.finish_now(bad, success=False, code="InvalidParameter", message="nope")
        assert (await api.get(ok))["status"] == "NOT_START"
        gw.refresh_now()
        a, b = await api.get(ok), await api.get(bad)
        with pytest.raises(ValueError, match="already ended"):
            gw.finish_now(ok)
    assert a["status"] == "SUCCESS"
    assert gw.task(ok).upstream_end == EPOCH + 5
    assert (b["status"], b["data"]["output"]["code"]) == ("FAILURE", "InvalidParameter")


# -- errors (SPEC §4) --------------------------------------------------------------------------

GOOD = {"prompt": PROMPT, "model": "wan2.6-t2v"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        pytest.param(GOOD, {}, 401, None, id="missing-key"),
        pytest.param(GOOD, {"Authorization": "Bearer sk-wrong"}, 401, None, id="wrong-key"),
        pytest.param(b"{not json", None, 400, "invalid_json", id="malformed-json"),
        pytest.param({"prompt": PROMPT}, None, 400, "missing_model", id="missing-model"),
        pytest.param({**GOOD, "model": "wan-secret"}, None, 403, None, id="forbidden-model"),
        pytest.param({**GOOD, "model": "wan9"}, None, 503, "model_not_found", id="unknown-model"),
        pytest.param({**GOOD, "prompt": "  "}, None, 400, "invalid_request", id="empty-prompt"),
    ],
)
async def test_submit_error_rows(
    body: Any, headers: dict[str, str] | None, status: int, code: str | None
) -> None:
    """Each error row of SPEC §4 has its status and shape; middleware ones cite the request id."""
    models = ["wan2.6-t2v", "wan-secret"]
    async with serve(forbidden_models=["wan-secret"], models=models) as (gw, api):
        raw = body if isinstance(body, bytes) else None
        got, hdrs, text = await api.post(body, raw=raw, headers=headers)
    answer = json.loads(text)
    request_id = hdrs["X-Oneapi-Request-Id"]
    assert got == status
    if status in (401, 403) or code == "model_not_found":
        assert set(answer) == {"error"}
        assert answer["error"]["type"] == "new_api_error"
        assert answer["error"]["code"] == (code or "")
        assert answer["error"]["message"].endswith(f"(request id: {request_id})")
    else:
        assert answer == {"code": code, "message": answer["message"], "data": None}
    if status == 400 and code == "invalid_request":
        assert answer["message"] == "prompt is required"
    assert gw.stats.tasks_created == 0


@pytest.mark.parametrize(
    "metadata",
    [
        {"parameters": {"size": "832*480"}},
        {"parameters": {"duration": 7, "seed": -1}},
        {"input": {"negative_prompt": "x" * 501}},
        {"parameters": "not an object"},
    ],
)
async def test_upstream_rejects_bad_parameters(metadata: dict[str, Any]) -> None:
    """Bad parameters: 400 fail_to_fetch_task, the message being upstream's JSON as a string."""
    async with serve() as (gw, api):
        status, _, text = await api.post({**GOOD, "metadata": metadata})
    answer = json.loads(text)
    assert (status, answer["code"], answer["data"]) == (400, "fail_to_fetch_task", None)
    upstream = json.loads(answer["message"])
    assert upstream["code"] == "InvalidParameter"
    assert upstream["message"]
    assert gw.stats.tasks_created == 0


async def test_auth_is_checked_before_the_body() -> None:
    """A wrong key with a malformed body is a 401, not a 400."""
    async with serve() as (_, api):
        status, _, _ = await api.post(raw=b"{", headers={"Authorization": "Bearer nope"})
    assert status == 401


async def test_quota_exhausted() -> None:
    """Past the quota, submits get 403 quota_not_enough in the task shape."""
    async with serve(quota=1) as (gw, api):
        await api.submit()
        status, _, text = await api.post(GOOD)
    assert (status, json.loads(text)["code"]) == (403, "quota_not_enough")
    assert gw.stats.tasks_created == 1


async def test_per_key_rate_limit_counts_submits_and_gets() -> None:
    """The middleware's token bucket answers 429 in its own shape (not upstream's task-shaped
    429, which on a submit means upstream is saturated), without Retry-After, then refills."""
    async with serve(rate_limit=1, rate_burst=2) as (gw, api):
        task_id = await api.submit()
        await api.get(task_id)
        status, headers, text = await api.get_raw(task_id)
        assert status == 429
        assert "Too many requests" in json.loads(text)["error"]["message"]
        assert "Retry-After" not in headers
        status, _, _ = await api.post(GOOD)
        assert status == 429
        advance(gw, 1)
        assert (await api.get_raw(task_id))[0] == 200


async def test_unknown_task_id_is_400_task_not_exist() -> None:
    """An unknown id is a 400 (not 404) with code task_not_exist."""
    async with serve() as (_, api):
        status, headers, text = await api.get_raw("task_doesnotexist")
        no_key, _, _ = await api.get_raw("task_doesnotexist", headers={})
    assert (status, json.loads(text)) == (
        400,
        {"code": "task_not_exist", "message": "task_not_exist", "data": None},
    )
    assert headers["X-Oneapi-Request-Id"]
    assert no_key == 401


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (Fault.RATE_LIMIT, 429, "fail_to_fetch_task"),
        (Fault.RATE_LIMIT_RETRY_AFTER, 429, "fail_to_fetch_task"),
        (Fault.SERVER_ERROR, 500, "do_request_failed"),
        (Fault.UNAVAILABLE, 503, "fail_to_fetch_task"),
    ],
)
async def test_error_faults_on_submit_create_nothing(fault: Fault, status: int, code: str) -> None:
    """Injected JSON errors answer in the task shape and create no task."""
    async with serve() as (gw, api):
        gw.inject(fault, on="submit", retry_after=7)
        got, headers, text = await api.post(GOOD)
        after, _, _ = await api.post(GOOD)
    assert (got, json.loads(text)["code"]) == (status, code)
    assert headers.get("Retry-After") == ("7" if fault is Fault.RATE_LIMIT_RETRY_AFTER else None)
    assert after == 200
    assert gw.stats.tasks_created == 1
    assert gw.stats.requests[("submit", str(status))] == 1
    assert gw.stats.faults[("submit", fault)] == 1


async def test_bad_gateway_html() -> None:
    """BAD_GATEWAY_HTML answers 502 with nginx's HTML page."""
    async with serve() as (gw, api):
        gw.inject(Fault.BAD_GATEWAY_HTML)
        status, headers, body = await api.post(GOOD)
    assert status == 502
    assert headers["Content-Type"].startswith("text/html")
    assert b"<center><h1>502 Bad Gateway</h1></center>" in body
    assert gw.stats.tasks_created == 0


async def test_reset_before_create_drops_the_connection_and_creates_nothing() -> None:
    """RESET_BEFORE_CREATE: the client sees the server disconnect; no task exists."""
    async with serve() as (gw, api):
        gw.inject(Fault.RESET_BEFORE_CREATE, on="submit")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.post(GOOD)
    assert gw.stats.tasks_created == 0
    assert gw.stats.requests[("submit", "reset")] == 1


async def test_drop_after_create_creates_the_task_then_drops() -> None:
    """DROP_AFTER_CREATE: the task exists (billed) but the client gets no answer."""
    async with serve() as (gw, api):
        gw.inject(Fault.DROP_AFTER_CREATE)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.post(GOOD)
    assert gw.stats.tasks_per_prompt[PROMPT] == 1
    assert gw.stats.requests[("submit", "drop_after_create")] == 1


async def test_truncated_submit_creates_the_task() -> None:
    """TRUNCATED_JSON on a submit: a 200 whose body is half a JSON; the task exists."""
    async with serve() as (gw, api):
        gw.inject(Fault.TRUNCATED_JSON, on="submit")
        status, _, body = await api.post(GOOD)
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    assert body.startswith(b'{"id":"task_')
    assert gw.stats.tasks_created == 1
    assert gw.stats.requests[("submit", "truncated")] == 1


async def test_slow_waits_real_seconds_then_answers() -> None:
    """SLOW delays the answer by real seconds, then answers normally."""
    async with serve() as (gw, api):
        gw.inject(Fault.SLOW, delay=0.2)
        started = time.monotonic()
        status, _, _ = await api.post(GOOD)
        elapsed = time.monotonic() - started
    assert status == 200
    assert elapsed >= 0.2
    assert gw.stats.faults[("submit", Fault.SLOW)] == 1


async def test_slow_answer_to_a_client_that_gave_up_still_creates_the_task() -> None:
    """A submit whose client timed out during a SLOW answer still creates its task."""
    async with serve() as (gw, api):
        gw.inject(Fault.SLOW, delay=0.2)
        # aiohttp raises asyncio.TimeoutError: the builtin TimeoutError only from Python 3.11.
        with pytest.raises(asyncio.TimeoutError):
            async with api.session.post(
                gw.base_url + SUBMIT_PATH,
                json=GOOD,
                headers=api.auth,
                timeout=aiohttp.ClientTimeout(total=0.05),
            ):
                pass
        with anyio.fail_after(2):
            # The simulator offers no event for "task created": poll its counter.
            while gw.stats.tasks_created == 0:  # noqa: ASYNC110
                await anyio.sleep(0.02)


async def test_get_faults_change_one_answer_only() -> None:
    """STATUS_REGRESSION and UNKNOWN_STATUS distort one GET; the stored view is unchanged."""
    async with serve(processing_time=fixed(100)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 15)
        gw.refresh_now()
        gw.inject(Fault.STATUS_REGRESSION, on="get")
        gw.inject(Fault.UNKNOWN_STATUS, on="get")
        regressed = await api.get(task_id)
        mystery = await api.get(task_id)
        normal = await api.get(task_id)
    assert (regressed["status"], regressed["progress"]) == ("QUEUED", "20%")
    assert mystery["status"] == "MYSTERY_STATE"
    assert (normal["status"], normal["progress"]) == ("IN_PROGRESS", "30%")


async def test_truncated_get_does_not_count_as_seen() -> None:
    """A truncated terminal answer is not a detection; the next full one is."""
    async with serve(processing_time=fixed(10)) as (gw, api):
        task_id = await api.submit()
        advance(gw, 15)
        gw.refresh_now()
        gw.inject(Fault.TRUNCATED_JSON, on="get")
        status, _, body = await api.get_raw(task_id)
        assert status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        assert gw.task(task_id).first_terminal_get is None
        advance(gw, 3)
        await api.get(task_id)
    assert gw.detection_lags() == [3.0]


async def test_get_reset_is_retried_once_by_aiohttp() -> None:
    """aiohttp retries an idempotent GET once after a disconnect: two resets are needed."""
    async with serve() as (gw, api):
        task_id = await api.submit()
        gw.inject(Fault.RESET_BEFORE_CREATE, on="get")
        assert (await api.get_raw(task_id))[0] == 200
        gw.inject(Fault.RESET_BEFORE_CREATE, on="get", times=2)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.get_raw(task_id)
    assert gw.stats.outcomes("get") == {"reset": 3, "200": 1}


async def test_inject_matches_only_applicable_requests() -> None:
    """A fault queued for "any" waits for a request it applies to; bad targets are refused."""
    async with serve() as (gw, api):
        with pytest.raises(ValueError, match="never applies"):
            gw.inject(Fault.DROP_AFTER_CREATE, on="get")
        task_id = await api.submit()
        gw.inject(Fault.STATUS_REGRESSION)
        gw.inject(Fault.RATE_LIMIT, times=2)
        assert (await api.post(GOOD))[0] == 429
        assert (await api.get_raw(task_id))[0] == 200
        assert gw.pending_faults == 1
        assert (await api.post(GOOD))[0] == 429
        assert gw.pending_faults == 0
    assert gw.stats.faults[("get", Fault.STATUS_REGRESSION)] == 1


async def test_chaos_rates_are_seeded_and_validated() -> None:
    """fault_rates draws the same faults for the same seed; rates above 1 are refused."""
    with pytest.raises(ValueError, match="add up to"):
        FakeGateway(fault_rates={Fault.RATE_LIMIT: 0.6, Fault.SERVER_ERROR: 0.6})
    runs = []
    for _ in range(2):
        rates = {Fault.RATE_LIMIT: 0.3, Fault.UNKNOWN_STATUS: 0.3}
        async with serve(fault_rates=rates, seed=3) as (_, api):
            runs.append([(await api.post(GOOD))[0] for _ in range(20)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 429}


# -- downloads ---------------------------------------------------------------------------------


async def finished_url(gw: FakeGateway, api: Api) -> tuple[str, str]:
    task_id = await api.submit()
    advance(gw, 200)
    gw.refresh_now()
    url: str = (await api.get(task_id))["fail_reason"]
    return task_id, url


async def test_download_serves_deterministic_bytes_and_records_auth() -> None:
    """The URL serves video_bytes bytes; each download records whether it sent Authorization."""
    async with serve(processing_time=fixed(100), video_bytes=4096) as (gw, api):
        _, url = await finished_url(gw, api)
        status, headers, body = await api.download(url)
        again = (await api.download(url, headers=api.auth))[2]
        part = await api.download(url, headers={"Range": "bytes=100-199"})
        beyond = await api.download(url, headers={"Range": "bytes=5000-"})
    assert (status, len(body), headers["Content-Length"]) == (200, 4096, "4096")
    assert again == body
    assert (part[0], part[1]["Content-Range"]) == (206, "bytes 100-199/4096")
    assert part[2] == body[100:200]
    assert beyond[0] == 416
    assert gw.download_auth_headers == [False, True, False, False]
    assert gw.stats.outcomes("download") == {"200": 2, "206": 1, "416": 1}


async def test_download_url_expires_and_checks_its_signature() -> None:
    """403 XML for a forged signature or once url_ttl has passed; 404 for an unknown video."""
    async with serve(processing_time=fixed(100), url_ttl=3600) as (gw, api):
        task_id, url = await finished_url(gw, api)
        forged = await api.download(url[:-4] + "0000")
        unknown = await api.download(url.replace(task_id, "task_unknown"))
        advance(gw, 3600)
        expired = await api.download(url)
    assert forged[0] == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in forged[2]
    assert unknown[0] == 404
    assert b"<Code>NoSuchKey</Code>" in unknown[2]
    assert expired[0] == 403
    assert b"<Code>AccessDenied</Code>" in expired[2]
    assert b"Request has expired" in expired[2]


async def test_download_faults() -> None:
    """Downloads take their own faults: a 503, and a body cut short by a dropped connection."""
    async with serve(processing_time=fixed(100)) as (gw, api):
        _, url = await finished_url(gw, api)
        gw.inject(Fault.UNAVAILABLE, on="download")
        gw.inject(Fault.TRUNCATED_JSON, on="download")
        assert (await api.download(url))[0] == 503
        with pytest.raises(aiohttp.ClientPayloadError):
            await api.download(url)
        assert (await api.download(url))[0] == 200
    assert gw.stats.outcomes("download") == {"503": 1, "truncated": 1, "200": 1}


# -- counters ----------------------------------------------------------------------------------


async def test_counters_and_detection_lags() -> None:
    """Counters record requests by outcome, tasks per prompt, GETs per task, passes and lags."""
    async with serve(processing_time=fixed(20)) as (gw, api):
        a = await api.submit("same")
        await api.submit("same")
        await api.get(a)
        advance(gw, 30)
        gw.refresh_now()
        advance(gw, 4)
        await api.get(a)
        await api.get(a)
        await api.get_raw("task_missing")
        info = gw.task(a)
    stats = gw.stats
    assert stats.tasks_per_prompt == {"same": 2}
    assert stats.gets_per_task == {a: 3, "task_missing": 1}
    assert stats.outcomes("submit") == {"200": 2}
    assert stats.outcomes("get") == {"200": 3, "400": 1}
    assert stats.refresh_passes == 1
    assert (info.gateway_finish, info.first_terminal_get) == (EPOCH + 30, EPOCH + 34)
    assert (info.upstream_start, info.upstream_end, info.gets) == (EPOCH, EPOCH + 20, 3)
    assert info.get_times == (EPOCH, EPOCH + 34, EPOCH + 34)
    assert gw.detection_lags() == [4.0]


# -- lifecycle and configuration ---------------------------------------------------------------


async def test_lifecycle() -> None:
    """Not usable before start; closing twice is fine; a closed gateway cannot restart."""
    gw = FakeGateway(clock=ScaledClock(100))
    with pytest.raises(RuntimeError, match="not running"):
        _ = gw.base_url
    await gw.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", gw.base_url)
    assert gw.storage_url != gw.base_url
    await gw.aclose()
    await gw.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await gw.start()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host": "0.0.0.0"},
        {"host": "192.168.1.10"},
        {"queue": "lifo"},
        {"tick": 0},
        {"slots": 0},
        {"failure_rate": 1.5},
        {"url_field": "nowhere"},
        {"shared_delay": (5, 1)},
        {"rate_burst": 3},
        {"api_key": ""},
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    """Bad settings fail at construction, with a message naming the argument."""
    with pytest.raises((ValueError, TypeError)):
        FakeGateway(**kwargs)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param([], id="defaults"),
        pytest.param(
            [
                *("--refresh", "sequential", "--refresh-cost", "0.5", "--first-refresh", "1.5"),
                *("--other-tenants", "3", "--start-delay", "1", "2", "--video-bytes", "1000"),
            ],
            id="gateway-models",
        ),
    ],
)
def test_command_line_serves_until_sigterm(options: list[str]) -> None:
    """``python -m wan_async.testing`` prints its URLs, serves, and stops cleanly on SIGTERM."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = [sys.executable, "-m", "wan_async.testing", "--port", "0", "--time-scale", "100"]
    args += options
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().split()[-1]
        storage_url = proc.stdout.readline().split()[-1]
        assert proc.stdout.readline().split()[-1] == KEY
        request = urllib.request.Request(
            base_url + SUBMIT_PATH,
            data=json.dumps(GOOD).encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert json.load(answer)["status"] == "queued"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert storage_url.startswith("http://127.0.0.1:")
    assert "stopped" in out
    assert "Traceback" not in err


def test_command_line_refuses_a_remote_host() -> None:
    """A non-loopback --host needs --allow-remote."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "wan_async.testing", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=10,
        check=False,
    )
    assert proc.returncode == 2
    assert "--allow-remote" in proc.stderr
