"""The translation choke point: every error row of SPEC §4 maps to its exception."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict

from wan_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    ModelNotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    TaskNotFound,
    UnexpectedRedirect,
)
from wan_async._transport import _decode


def middleware(message: str, code: str = "") -> bytes:
    """The gateway middleware's error shape."""
    return json.dumps(
        {"error": {"message": message, "type": "new_api_error", "code": code}}
    ).encode()


def task(code: str, message: str) -> bytes:
    """The gateway's task error shape."""
    return json.dumps({"code": code, "message": message, "data": None}).encode()


HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

# (HTTP status, body, error class, task may exist after a failed submit)
ROWS = [
    (401, middleware("Invalid token (request id: R1)"), AuthenticationError, False),
    (403, middleware("group not allowed (request id: R2)"), PermissionDeniedError, False),
    (503, middleware("no channel (request id: R3)", "model_not_found"), ModelNotFoundError, False),
    (503, middleware("no available channel (request id: R4)"), ServerError, False),
    (400, task("invalid_json", "invalid character"), BadRequestError, False),
    (400, task("missing_model", "model is required"), BadRequestError, False),
    (400, task("invalid_request", "prompt is required"), BadRequestError, False),
    (
        400,
        task("fail_to_fetch_task", '{"code":"InvalidParameter","message":"x"}'),
        BadRequestError,
        False,
    ),
    (403, task("quota_not_enough", "quota is not enough"), QuotaExceededError, False),
    (403, task("insufficient_user_quota", "quota"), QuotaExceededError, False),
    (400, task("task_not_exist", "task_not_exist"), TaskNotFound, False),
    (429, task("fail_to_fetch_task", "Throttling"), RateLimitedError, False),
    (500, task("do_request_failed", "read tcp: reset"), ServerError, True),
    (502, task("fail_to_fetch_task", "bad upstream"), ServerError, False),
    (503, task("fail_to_fetch_task", "unavailable"), ServerError, False),
    (502, HTML, ServerError, True),
    (404, HTML, BadRequestError, True),
    (408, b"", ServerError, True),
    # Sent after upstream accepted the task: the gateway failed to read or store its answer.
    (500, task("read_response_body_failed", "unexpected EOF"), ServerError, True),
    (500, task("unmarshal_response_body_failed", "invalid character"), ServerError, True),
    (500, task("invalid_response", "no task id in upstream's answer"), ServerError, True),
    (500, task("insert_task_failed", "database is locked"), ServerError, True),
    (400, task("insert_task_failed", "remapped by an operator"), BadRequestError, True),
    # Not on the allow-list: unknown.
    (500, task("some_new_code", "?"), ServerError, True),
    (500, middleware("panic (request id: R5)"), ServerError, True),
    (404, middleware("Invalid URL (request id: R6)"), BadRequestError, True),
    # Any 429 refuses the request instead of forwarding it, a proxy's page included.
    (429, HTML, RateLimitedError, False),
    (429, middleware("rate limit (request id: R7)"), RateLimitedError, False),
    # Some other 400 of the relay's own checks, before upstream is called.
    (400, task("invalid_size", "size is not supported"), BadRequestError, False),
    # A redirect is not the gateway's own answer.
    (302, HTML, UnexpectedRedirect, True),
    (307, b"", UnexpectedRedirect, True),
]


@pytest.mark.parametrize(("status", "body", "error", "may_exist"), ROWS)
def test_error_rows(status: int, body: bytes, error: type[APIError], may_exist: bool) -> None:
    """Each answer of SPEC §4 becomes its own error, knowing whether a task may exist."""
    with pytest.raises(error) as info:
        _decode("POST", "/v1/video/generations", status, body, CIMultiDict(), None)
    err = info.value
    assert type(err) is error
    assert err.status == status
    assert err.task_may_exist is may_exist
    if body.startswith(b"{"):
        assert err.message
    else:
        assert err.snippet == body[:200].decode()


def test_request_id_from_header_or_message() -> None:
    """The request id comes from X-Oneapi-Request-Id, else from the middleware's message."""
    headers = CIMultiDict({"X-Oneapi-Request-Id": "H1"})
    with pytest.raises(AuthenticationError) as info:
        _decode("GET", "/x", 401, middleware("bad (request id: M1)"), headers, "H1")
    assert info.value.request_id == "H1"
    with pytest.raises(AuthenticationError) as info:
        _decode("GET", "/x", 401, middleware("bad (request id: M1)"), CIMultiDict(), None)
    assert info.value.request_id == "M1"


def test_retry_after_is_read() -> None:
    """A proxy's Retry-After rides on the error."""
    headers = CIMultiDict({"Retry-After": "12"})
    with pytest.raises(RateLimitedError) as info:
        _decode("GET", "/x", 429, task("fail_to_fetch_task", "slow down"), headers, None)
    assert info.value.retry_after == 12


@pytest.mark.parametrize("body", [b'{"id": "task_1", "obj', b"<html>ok</html>", b"", b"[1, 2]"])
def test_garbage_success_is_a_decode_error(body: bytes) -> None:
    """A 200 that is not the API's JSON: DecodeError quoting a snippet, outcome unknown."""
    with pytest.raises(DecodeError) as info:
        _decode("POST", "/v1/video/generations", 200, body, CIMultiDict(), None)
    assert info.value.task_may_exist
    assert info.value.snippet == body.decode()


def test_error_envelope_with_200_is_an_error() -> None:
    """Gateways that answer a failed query with 200 and a task-shape error are understood."""
    with pytest.raises(TaskNotFound):
        _decode("GET", "/x", 200, task("task_not_exist", "no such task"), CIMultiDict(), None)


@pytest.mark.parametrize(
    "body",
    [
        task("insert_task_failed", "database is locked"),
        task("do_request_failed", "read tcp: reset"),
        task("some_new_code", "?"),
    ],
)
def test_error_envelope_with_200_on_submit_is_unknown_unless_allowed(body: bytes) -> None:
    """A submit answered 200 with an error code off the allow-list leaves the outcome unknown."""
    with pytest.raises(APIError) as info:
        _decode("POST", "/v1/video/generations", 200, body, CIMultiDict(), None)
    assert info.value.task_may_exist


def test_redirect_names_where_it_points_without_the_query() -> None:
    """A 3xx says where the base URL redirects (never a query string) and what to do."""
    headers = CIMultiDict({"Location": "https://login.example.com/sso?token=secret"})
    with pytest.raises(UnexpectedRedirect) as info:
        _decode("POST", "/v1/video/generations", 302, HTML, headers, None)
    text = str(info.value)
    assert "https://login.example.com/sso" in text
    assert "secret" not in text
    assert "base_url" in text
    assert not info.value.retryable
