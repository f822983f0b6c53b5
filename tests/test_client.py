"""The low-level calls against the simulator: create_task, get_task, every error row of SPEC §4."""

from __future__ import annotations

import logging
from typing import Literal

import aiohttp
import anyio
import pytest

from wan_async import (
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    DecodeError,
    ModelNotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    SubmitOutcomeUnknown,
    TaskNotFound,
    TaskStatus,
    Timeouts,
    VideoRequest,
    WanClient,
    WanConnectionError,
    WanError,
    WanTimeoutError,
)
from wan_async._client import SUBMIT_PATH
from wan_async.testing import FakeGateway, Fault, ScaledClock

from .conftest import make_client

pytestmark = pytest.mark.anyio

REQUEST = VideoRequest(prompt="a lighthouse at dusk", model="wan2.6-t2v", size="1280*720")
SECRET = "sk-very-secret-key-0123456789"
#: One exchange per call: these tests pin how each single failure is classified.
ONE_TRY = RetryPolicy(attempts=1)


async def poll_until_terminal(client: WanClient, task_id: str) -> list[TaskStatus]:
    """Poll by hand (one GET per gateway tick) and return every status seen."""
    seen: list[TaskStatus] = []
    while True:
        snap = await client.get_task(task_id)
        if not seen or seen[-1] is not snap.status:
            seen.append(snap.status)
        if snap.is_terminal:
            return seen
        await client.clock.sleep(5)


async def test_create_and_query_a_task_to_success(gateway: FakeGateway) -> None:
    """A task goes NOT_START -> ... -> SUCCESS and yields a URL on the storage host."""
    async with make_client(gateway) as client:
        created = await client.create_task(REQUEST)
        assert created.task_id.startswith("task_")
        assert created.status == "queued"
        statuses = await poll_until_terminal(client, created.task_id)
        assert statuses[0] is TaskStatus.NOT_START
        assert statuses[-1] is TaskStatus.SUCCESS
        assert TaskStatus.IN_PROGRESS in statuses
        result = (await client.get_task(created.task_id)).result()
        assert result.video_url.startswith(gateway.storage_url)
        assert result.usage is not None
        assert result.usage.video_ratio == "1280*720"
    assert gateway.stats.tasks_per_prompt[REQUEST.prompt] == 1


@pytest.mark.parametrize("url_field", ["fail_reason", "result_url", "output"])
async def test_url_found_wherever_the_gateway_puts_it(
    url_field: Literal["fail_reason", "result_url", "output"],
) -> None:
    """Old and new gateways place the URL differently; the client finds it in each."""
    async with (
        FakeGateway(
            clock=ScaledClock(300),
            url_field=url_field,
            processing_time=lambda body, rng: 30.0,
        ) as gw,
        make_client(gw) as client,
    ):
        created = await client.create_task(REQUEST)
        await poll_until_terminal(client, created.task_id)
        result = (await client.get_task(created.task_id)).result()
        assert result.video_url.startswith(gw.storage_url)


@pytest.mark.parametrize("style", ["short", "full"])
async def test_failed_task_reports_upstream_code(style: Literal["short", "full"]) -> None:
    """A moderated prompt fails with DataInspectionFailed, whichever fail_reason style."""
    async with (
        FakeGateway(
            clock=ScaledClock(300),
            fail_reason_style=style,
            processing_time=lambda body, rng: 30.0,
        ) as gw,
        make_client(gw) as client,
    ):
        created = await client.create_task(VideoRequest(prompt="[fail] x", model="wan2.6-t2v"))
        statuses = await poll_until_terminal(client, created.task_id)
        assert statuses[-1] is TaskStatus.FAILURE
        snap = await client.get_task(created.task_id)
        assert snap.fail_code == "DataInspectionFailed"
        assert snap.fail_message is not None
        assert "inappropriate" in snap.fail_message


async def test_unknown_task_id(client: WanClient) -> None:
    """The gateway's 400 task_not_exist is TaskNotFound."""
    with pytest.raises(TaskNotFound) as info:
        await client.get_task("task_doesnotexist")
    assert info.value.status == 400
    assert info.value.code == "task_not_exist"


async def test_task_id_is_quoted_into_the_path(client: WanClient) -> None:
    """An id with slashes cannot escape the task path."""
    with pytest.raises(TaskNotFound):
        await client.get_task("../../v1/video/generations")


async def test_bad_key_is_authentication_error_without_the_key(gateway: FakeGateway) -> None:
    """401 middleware shape: the server's message and request id, never the key."""
    async with make_client(gateway, api_key=SECRET) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.create_task(REQUEST)
    err = info.value
    assert err.status == 401
    assert err.request_id
    assert not err.task_may_exist
    for text in (str(err), repr(err), repr(client), repr(client._transport)):
        assert SECRET not in text
    assert gateway.stats.tasks_created == 0


async def test_forbidden_model_and_unknown_model_and_quota() -> None:
    """403 middleware, 503 model_not_found and 403 quota map to their own errors."""
    clock = ScaledClock(300)
    async with (
        FakeGateway(clock=clock, forbidden_models={"wan2.5-t2v-preview"}, quota=1) as gw,
        make_client(gw) as client,
    ):
        with pytest.raises(PermissionDeniedError) as forbidden:
            await client.create_task(VideoRequest(prompt="p", model="wan2.5-t2v-preview"))
        assert forbidden.value.status == 403
        with pytest.raises(ModelNotFoundError) as unknown:
            await client.create_task(VideoRequest(prompt="p", model="wan9-t2v"))
        assert (unknown.value.status, unknown.value.code) == (503, "model_not_found")
        await client.create_task(REQUEST)
        with pytest.raises(QuotaExceededError) as quota:
            await client.create_task(REQUEST)
        assert quota.value.code == "quota_not_enough"
        assert gw.stats.tasks_created == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"prompt": "p"}, "missing_model"),
        ({"prompt": "", "model": "wan2.6-t2v"}, "invalid_request"),
        (
            {"prompt": "p", "model": "wan2.6-t2v", "metadata": {"parameters": {"duration": 7}}},
            "fail_to_fetch_task",
        ),
    ],
)
async def test_gateway_validation_errors(
    client: WanClient, body: dict[str, object], code: str
) -> None:
    """Bodies our own validation would never send still map to BadRequestError."""
    with pytest.raises(BadRequestError) as info:
        await client._transport.request("POST", SUBMIT_PATH, body=body)
    assert (info.value.status, info.value.code) == (400, code)
    assert not info.value.task_may_exist
    if code == "fail_to_fetch_task":
        assert "InvalidParameter" in (info.value.message or "")


# Each submit fault: (fault, the error create_task raises, its cause's type, task created?)
SUBMIT_FAULTS = [
    (Fault.RATE_LIMIT, RateLimitedError, None, False),
    (Fault.RATE_LIMIT_RETRY_AFTER, RateLimitedError, None, False),
    (Fault.UNAVAILABLE, ServerError, None, False),
    (Fault.SERVER_ERROR, SubmitOutcomeUnknown, ServerError, False),
    (Fault.BAD_GATEWAY_HTML, SubmitOutcomeUnknown, ServerError, False),
    (Fault.RESET_BEFORE_CREATE, SubmitOutcomeUnknown, WanConnectionError, False),
    (Fault.DROP_AFTER_CREATE, SubmitOutcomeUnknown, WanConnectionError, True),
    (Fault.TRUNCATED_JSON, SubmitOutcomeUnknown, DecodeError, True),
    (Fault.SLOW, SubmitOutcomeUnknown, WanTimeoutError, True),
]


@pytest.mark.parametrize(("fault", "error", "cause", "created"), SUBMIT_FAULTS)
async def test_submit_faults_are_classified(
    gateway: FakeGateway,
    fault: Fault,
    error: type[WanError],
    cause: type[WanError] | None,
    created: bool,
) -> None:
    """Certainly-not-created failures raise as themselves; the rest as SubmitOutcomeUnknown."""
    gateway.inject(fault, on="submit", delay=0.5, retry_after=7)
    async with make_client(gateway, timeouts=Timeouts(read=0.2), retry=ONE_TRY) as client:
        with pytest.raises(error) as info:
            await client.create_task(REQUEST)
    err = info.value
    if isinstance(err, SubmitOutcomeUnknown):
        assert err.task_may_exist
        assert isinstance(err.cause, cause)  # type: ignore[arg-type]
        assert err.request is REQUEST
        assert "may exist" in str(err)
    else:
        assert not err.task_may_exist
    if fault is Fault.RATE_LIMIT_RETRY_AFTER:
        assert isinstance(err, RateLimitedError)
        assert err.retry_after == 7
    if fault is Fault.BAD_GATEWAY_HTML:
        assert isinstance(err, SubmitOutcomeUnknown)
        assert isinstance(err.cause, ServerError)
        assert err.cause.status == 502
        assert "<html" in (err.cause.snippet or "").lower()
    await anyio.sleep(0.6)  # let a SLOW answer finish server-side before counting
    assert gateway.stats.tasks_created == int(created)


GET_FAULTS = [
    (Fault.RATE_LIMIT, RateLimitedError),
    (Fault.RATE_LIMIT_RETRY_AFTER, RateLimitedError),
    (Fault.UNAVAILABLE, ServerError),
    (Fault.SERVER_ERROR, ServerError),
    (Fault.BAD_GATEWAY_HTML, ServerError),
    (Fault.RESET_BEFORE_CREATE, WanConnectionError),
    (Fault.TRUNCATED_JSON, DecodeError),
    (Fault.SLOW, WanTimeoutError),
]


@pytest.mark.parametrize(("fault", "error"), GET_FAULTS)
async def test_get_faults_are_typed_errors(
    gateway: FakeGateway, fault: Fault, error: type[WanError]
) -> None:
    """Every query fault is a typed, retryable WanError, never a bare KeyError or JSON error."""
    async with make_client(gateway, timeouts=Timeouts(read=0.2), retry=ONE_TRY) as client:
        created = await client.create_task(REQUEST)
        # aiohttp itself retries an idempotent GET once when a reused connection resets.
        times = 2 if fault is Fault.RESET_BEFORE_CREATE else 1
        gateway.inject(fault, on="get", delay=0.5, times=times)
        with pytest.raises(error) as info:
            await client.get_task(created.task_id)
        assert info.value.retryable
        snap = await client.get_task(created.task_id)
        assert snap.task_id == created.task_id


async def test_status_regression_and_unknown_status(gateway: FakeGateway) -> None:
    """A step back to QUEUED and a status nobody knows are just answers: keep polling."""
    async with make_client(gateway) as client:
        created = await client.create_task(REQUEST)
        while (await client.get_task(created.task_id)).status is not TaskStatus.IN_PROGRESS:
            await client.clock.sleep(5)
        gateway.inject(Fault.STATUS_REGRESSION, on="get")
        assert (await client.get_task(created.task_id)).status is TaskStatus.QUEUED
        gateway.inject(Fault.UNKNOWN_STATUS, on="get")
        snap = await client.get_task(created.task_id)
        assert snap.status is TaskStatus.UNKNOWN
        assert snap.raw_status == "MYSTERY_STATE"


async def test_connection_refused_is_certainly_not_created(closed_port: int) -> None:
    """Nothing listening: WanConnectionError, and the submit is safe to retry."""
    async with WanClient(api_key="k", base_url=f"http://127.0.0.1:{closed_port}") as client:
        with pytest.raises(WanConnectionError) as info:
            await client.create_task(REQUEST)
    assert not info.value.task_may_exist
    assert info.value.retryable


async def test_waiting_for_a_pooled_connection_is_certainly_not_created(
    gateway: FakeGateway,
) -> None:
    """A submit that timed out waiting for a free pooled connection was never sent."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        timeouts = Timeouts(connect=0.2, total=0.6)
        async with make_client(
            gateway, session=session, timeouts=timeouts, retry=ONE_TRY
        ) as client:
            created = await client.create_task(REQUEST)
            gateway.inject(Fault.SLOW, on="get", delay=1.0)

            async def hold_the_only_connection() -> None:
                with pytest.raises(WanTimeoutError):
                    await client.get_task(created.task_id)

            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_the_only_connection)
                await anyio.sleep(0.05)
                with pytest.raises(WanTimeoutError) as info:
                    await client.create_task(REQUEST)
    assert not info.value.task_may_exist
    assert "before the request was sent" in str(info.value)
    await anyio.sleep(0.5)  # let the SLOW answer finish server-side before counting
    assert gateway.stats.tasks_created == 1


def test_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Key and URL come from arguments or the environment; bad ones fail at once."""
    monkeypatch.delenv("WAN_API_KEY", raising=False)
    monkeypatch.delenv("WAN_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="WAN_API_KEY"):
        WanClient()
    monkeypatch.setenv("WAN_API_KEY", SECRET)
    client = WanClient()
    assert client.base_url == "https://computevault.unodetech.xyz"
    assert SECRET not in repr(client)
    monkeypatch.setenv("WAN_BASE_URL", "https://gw.example.test/")
    assert WanClient().base_url == "https://gw.example.test"
    with pytest.raises(ConfigurationError, match="plain http"):
        WanClient(base_url="http://gw.example.test")
    assert WanClient(base_url="http://gw.example.test", allow_insecure_http=True)
    assert WanClient(base_url="http://localhost:8000").base_url == "http://localhost:8000"
    with pytest.raises(ConfigurationError):
        WanClient(base_url="ftp://gw.example.test")


async def test_closed_client_refuses_reuse(gateway: FakeGateway) -> None:
    """aclose() is idempotent, and a closed client says it cannot be reused."""
    client = make_client(gateway)
    async with client:
        await client.create_task(REQUEST)
    await client.aclose()
    assert client.closed
    with pytest.raises(ClientClosedError):
        await client.create_task(REQUEST)
    with pytest.raises(ClientClosedError):
        await client.__aenter__()


async def test_user_session_is_used_and_left_open(gateway: FakeGateway) -> None:
    """A session passed in is never closed by the client, nor given the key."""
    async with aiohttp.ClientSession() as session:
        async with make_client(gateway, session=session) as client:
            await client.create_task(REQUEST)
        assert not session.closed
        assert "Authorization" not in session.headers


async def test_low_level_calls_work_without_entering(gateway: FakeGateway) -> None:
    """create_task/get_task open the session lazily inside the running loop."""
    client = make_client(gateway)
    try:
        created = await client.create_task(REQUEST)
        assert (await client.get_task(created.task_id)).task_id == created.task_id
    finally:
        await client.aclose()


async def test_debug_logs_never_carry_the_key(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests are logged at DEBUG under 'wan_async', without the key."""
    caplog.set_level(logging.DEBUG)
    gateway.inject(Fault.SERVER_ERROR, on="get")
    async with make_client(gateway, retry=ONE_TRY) as client:
        created = await client.create_task(REQUEST)
        with pytest.raises(ServerError):
            await client.get_task(created.task_id)
    records = [r for r in caplog.records if r.name.startswith("wan_async")]
    assert records
    assert all(gateway.api_key not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("call", ["generate", "create_task"])
async def test_a_caller_cancelled_while_its_submit_is_on_the_wire_is_told_the_task_id(
    gateway: FakeGateway, call: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``asyncio.wait_for(client.generate(r), ...)`` firing mid-submit: the shielded POST still
    creates (and bills) the task. A WARNING names its id, and the task stays attachable; for
    generate(), the client keeps checking it, so attach() costs no submit and no lost video."""
    async with make_client(gateway) as client:
        gateway.inject(Fault.SLOW, on="submit", delay=0.3)
        request = VideoRequest(prompt="cancelled caller", model="wan2.6-t2v")
        with caplog.at_level(logging.WARNING, logger="wan_async"):
            with anyio.move_on_after(0.05):
                await getattr(client, call)(request)
        (task,) = gateway.tasks()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(task.task_id in m and "attach" in m for m in warnings), warnings
        handle = client.attach(task.task_id)
        result = await handle
    assert result.task_id == task.task_id
    assert gateway.stats.tasks_created == 1


@pytest.mark.parametrize(
    "options",
    [
        {"max_requests_per_second": 0},
        {"max_requests_per_second": -1},
        {"max_requests_per_second": float("nan")},
        {"max_requests_per_second": float("inf")},
        {"max_in_flight": 0},
        {"max_concurrent_submits": 1.5},
        {"max_concurrent_downloads": 0},
    ],
)
async def test_unusable_settings_are_refused_when_the_client_is_made(
    gateway: FakeGateway, options: dict[str, object]
) -> None:
    """A rate of 0 divided by zero in the budget (the poller died); a negative one busy-spun."""
    (name,) = options
    with pytest.raises(ValueError, match=name):
        make_client(gateway, **options)


@pytest.mark.parametrize("timeout", [float("nan"), -1.0])
async def test_a_nan_or_negative_timeout_is_refused_before_anything_is_billed(
    client: WanClient, gateway: FakeGateway, timeout: float
) -> None:
    """``timeout=nan`` was taken as 0: every item billed, then DeadlineExceeded "within nan s"."""
    request = VideoRequest(prompt="a boat", model="wan2.6-t2v")
    with pytest.raises(ValueError, match="timeout"):
        await client.generate(request, timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        await client.generate_many([request] * 3, timeout=timeout)
    with pytest.raises(ValueError, match="deadline"):
        await client.generate_many([request] * 3, deadline=timeout)
    with pytest.raises(ValueError, match="timeout"):
        client.as_completed([request], timeout=timeout)
    assert gateway.stats.tasks_created == 0
    handle = await client.submit(request)
    with pytest.raises(ValueError, match="timeout"):
        await handle.wait(timeout)
