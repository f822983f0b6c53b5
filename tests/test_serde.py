"""Wire mapping (SPEC §2-§3): requests to JSON, gateway answers to snapshots."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wan_async import TaskFailed, TaskSnapshot, TaskStatus, Usage, VideoRequest
from wan_async._serde import (
    created_from_wire,
    parse_error_body,
    request_to_wire,
    snapshot_from_store,
    snapshot_from_wire,
    snapshot_to_store,
)

EXAMPLES = Path(__file__).resolve().parent / "gateway_examples"


def example(name: str) -> Any:
    """Load one of the gateway documentation's bodies, verbatim."""
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def test_documented_submit_request_round_trips() -> None:
    """The documented request body is exactly what VideoRequest sends."""
    body = example("submit_request")
    request = VideoRequest(
        prompt=body["prompt"],
        model=body["model"],
        negative_prompt=body["metadata"]["input"]["negative_prompt"],
        size=body["metadata"]["parameters"]["size"],
    )
    assert request_to_wire(request) == body


def test_unset_fields_are_omitted_and_set_ones_sent() -> None:
    """Only prompt and model when nothing else is set; every field lands where SPEC §2 says."""
    assert request_to_wire(VideoRequest(prompt="p", model="wan2.6-t2v")) == {
        "prompt": "p",
        "model": "wan2.6-t2v",
    }
    full = VideoRequest(
        prompt="p",
        model="wan2.6-t2v",
        negative_prompt="n",
        audio_url="https://a.test/x.mp3",
        size="1280*720",
        duration=10,
        prompt_extend=True,
        watermark=False,
        seed=0,
        audio=False,
        shot_type="multi",
    )
    assert request_to_wire(full) == {
        "prompt": "p",
        "model": "wan2.6-t2v",
        "metadata": {
            "input": {"negative_prompt": "n", "audio_url": "https://a.test/x.mp3"},
            "parameters": {
                "size": "1280*720",
                "duration": 10,
                "prompt_extend": True,
                "watermark": False,
                "seed": 0,
                "audio": False,
                "shot_type": "multi",
            },
        },
    }


def test_documented_submit_response() -> None:
    """The submit answer gives the task id and creation time."""
    created = created_from_wire(example("submit_response"))
    assert created.task_id == "..."
    assert created.model == "wan2.5-t2v-preview"
    assert created.status == "queued"
    assert created.created_at == datetime.fromtimestamp(1765328779, tz=timezone.utc)


def test_documented_in_progress() -> None:
    """IN_PROGRESS: 30 %, started, not finished."""
    snap = snapshot_from_wire(example("get_in_progress"))
    assert snap.status is TaskStatus.IN_PROGRESS
    assert not snap.is_terminal
    assert snap.progress == pytest.approx(0.3)
    assert snap.start_time == datetime.fromtimestamp(1765328794, tz=timezone.utc)
    assert snap.finish_time is None
    assert snap.upstream_status == "RUNNING"
    with pytest.raises(ValueError, match="has not finished"):
        snap.result()


def test_documented_success() -> None:
    """SUCCESS: the URL, prompts and usage become a VideoResult."""
    snap = snapshot_from_wire(example("get_success"))
    result = snap.result()
    assert result.video_url == "<OUTPUT_URL>"
    assert result.actual_prompt == "<EDITED_PROMPT>"
    assert result.orig_prompt is not None
    assert result.orig_prompt.startswith("A large hand-shaped marble statue")
    assert result.usage == Usage(video_count=1, video_duration=5, video_ratio="1920*1080")
    assert result.finish_time == datetime.fromtimestamp(1765328947, tz=timezone.utc)
    assert "<OUTPUT_URL>" not in repr(result)
    assert "<OUTPUT_URL>" not in repr(snap)  # signed URLs stay out of logs


def test_documented_failure() -> None:
    """FAILURE: code and message from data.data.output, raised as TaskFailed."""
    snap = snapshot_from_wire(example("get_failure"))
    assert snap.status is TaskStatus.FAILURE
    assert (snap.fail_code, snap.fail_message) == ("InvalidParameter", "image_url must provided")
    with pytest.raises(TaskFailed) as info:
        snap.result()
    assert info.value.task_id == "..."
    assert info.value.code == "InvalidParameter"
    assert "image_url must provided" in str(info.value)


def test_failure_reason_only_in_fail_reason() -> None:
    """Gateways that put the whole reason in fail_reason are parsed too."""
    body = example("get_failure")
    del body["data"]["data"]["output"]["code"]
    del body["data"]["data"]["output"]["message"]
    snap = snapshot_from_wire(body)
    assert (snap.fail_code, snap.fail_message) == ("InvalidParameter", "image_url must provided")


def test_failure_with_short_reason_and_no_output() -> None:
    """'task failed' and nothing else: no code, the reason as the message."""
    body = example("get_failure")
    body["data"]["fail_reason"] = "task failed"
    body["data"]["data"] = None
    snap = snapshot_from_wire(body)
    assert (snap.fail_code, snap.fail_message) == (None, "task failed")


@pytest.mark.parametrize(
    ("result_url", "fail_reason", "video_url", "expected"),
    [
        ("https://new/v.mp4", "https://old/v.mp4", "https://out/v.mp4", "https://new/v.mp4"),
        (None, "https://old/v.mp4", "https://out/v.mp4", "https://old/v.mp4"),
        (None, "", "https://out/v.mp4", "https://out/v.mp4"),
    ],
)
def test_video_url_preference(
    result_url: str | None, fail_reason: str, video_url: str, expected: str
) -> None:
    """result_url, then fail_reason, then output.video_url (SPEC §3.3)."""
    body = example("get_success")
    body["data"]["fail_reason"] = fail_reason
    body["data"]["data"]["output"]["video_url"] = video_url
    if result_url is not None:
        body["data"]["result_url"] = result_url
    assert snapshot_from_wire(body).video_url == expected


def test_success_without_url_is_a_failed_task() -> None:
    """Nothing to collect is reported as TaskFailed, not as a crash."""
    body = example("get_success")
    body["data"]["fail_reason"] = ""
    del body["data"]["data"]["output"]["video_url"]
    with pytest.raises(TaskFailed, match="without a video URL"):
        snapshot_from_wire(body).result()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0%", 0.0), ("20%", 0.2), ("30%", 0.3), ("100%", 1.0), (0, 0.0), (55, 0.55), ("?", 0.0)],
)
def test_progress(raw: object, expected: float) -> None:
    """Progress strings become fractions; garbage reads as 0."""
    body = example("get_in_progress")
    body["data"]["progress"] = raw
    assert snapshot_from_wire(body).progress == pytest.approx(expected)


@pytest.mark.parametrize("status", [s.value for s in TaskStatus])
def test_every_status(status: str) -> None:
    """Each of SPEC §3.1's statuses maps to its member; only SUCCESS and FAILURE end a task."""
    body = example("get_in_progress")
    body["data"]["status"] = status
    snap = snapshot_from_wire(body)
    assert snap.status.value == status
    assert snap.is_terminal == (status in ("SUCCESS", "FAILURE"))


def test_unknown_status_keeps_polling() -> None:
    """A status string the gateway may add later reads as UNKNOWN, raw text kept."""
    body = example("get_in_progress")
    body["data"]["status"] = "PAUSED_FOR_REVIEW"
    snap = snapshot_from_wire(body)
    assert snap.status is TaskStatus.UNKNOWN
    assert snap.raw_status == "PAUSED_FOR_REVIEW"
    assert not snap.is_terminal


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"code": "success", "data": None},
        {"code": "success", "data": {"task_id": "x"}},
        {"code": "success", "data": {"status": "SUCCESS"}},
        [],
        "text",
    ],
)
def test_shapes_without_essentials_are_value_errors(body: object) -> None:
    """No data, no status or no id: a ValueError naming what is missing, never a KeyError."""
    with pytest.raises(ValueError, match="the answer"):
        snapshot_from_wire(body)


def test_submit_answer_without_id_is_a_value_error() -> None:
    """A submit answer without an id cannot be used."""
    with pytest.raises(ValueError, match="task 'id'"):
        created_from_wire({"object": "video"})


def test_error_shapes() -> None:
    """Both error shapes of SPEC §4 give code, message and request id."""
    middleware = parse_error_body(
        {
            "error": {
                "message": "Invalid token (request id: 2025abc)",
                "type": "new_api_error",
                "code": "",
            }
        }
    )
    assert middleware.from_gateway
    assert middleware.request_id == "2025abc"
    assert middleware.code is None  # "type" names the error class, not a code
    task = parse_error_body({"code": "task_not_exist", "message": "task_not_exist", "data": None})
    assert (task.code, task.from_gateway) == ("task_not_exist", True)
    assert not parse_error_body("<html>").from_gateway


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_KNOWN = {
    "task_id",
    "status",
    "fail_reason",
    "result_url",
    "progress",
    "submit_time",
    "start_time",
    "finish_time",
    "updated_at",
    "data",
    "output",
    "usage",
    "request_id",
    "video_url",
    "orig_prompt",
    "actual_prompt",
    "code",
    "message",
    "task_status",
    "video_count",
    "video_duration",
    "video_ratio",
    "end_time",
}
_extra_keys = st.dictionaries(
    st.text(max_size=12).filter(lambda k: k not in _KNOWN), _json, max_size=4
)


@given(
    name=st.sampled_from(["get_in_progress", "get_success", "get_failure"]),
    top=_extra_keys,
    data=_extra_keys,
    inner=_extra_keys,
    output=_extra_keys,
)
def test_extra_keys_are_ignored_everywhere(
    name: str,
    top: dict[str, Any],
    data: dict[str, Any],
    inner: dict[str, Any],
    output: dict[str, Any],
) -> None:
    """Property: unknown keys at any level never change or break the parse."""
    plain = example(name)
    noisy = copy.deepcopy(plain)
    noisy.update(top)
    noisy["data"].update(data)
    noisy["data"]["data"].update(inner)
    noisy["data"]["data"]["output"].update(output)
    assert snapshot_from_wire(noisy) == snapshot_from_wire(plain)


@given(status=st.text(max_size=20), progress=_json, stamp=_json, upstream=_json)
def test_arbitrary_values_never_crash(
    status: str, progress: object, stamp: object, upstream: object
) -> None:
    """Property: any status text and any junk in loose fields parse without raising."""
    body = example("get_in_progress")
    body["data"].update(status=status, progress=progress, start_time=stamp, data=upstream)
    snap = snapshot_from_wire(body)
    known = {s.value for s in TaskStatus}
    assert snap.status is (TaskStatus(status) if status in known else TaskStatus.UNKNOWN)
    assert 0.0 <= snap.progress <= 1.0


_stamps = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
)
_texts = st.none() | st.text(max_size=20)


@given(
    status=st.sampled_from(list(TaskStatus)),
    progress=st.floats(min_value=0, max_value=1),
    stamps=st.tuples(_stamps, _stamps, _stamps, _stamps, _stamps, _stamps),
    texts=st.tuples(_texts, _texts, _texts, _texts, _texts, _texts, _texts),
    usage=st.none()
    | st.builds(
        Usage,
        video_count=st.none() | st.integers(0, 10),
        video_duration=st.none() | st.floats(0, 60),
        video_ratio=_texts,
    ),
)
def test_a_stored_snapshot_reads_back_as_it_was(
    status: TaskStatus,
    progress: float,
    stamps: tuple[datetime | None, ...],
    texts: tuple[str | None, ...],
    usage: Usage | None,
) -> None:
    """The task store's form of a snapshot (what another worker of the fleet reads) loses
    nothing: every field, stamps to the microsecond, an unknown status's spelling."""
    raw = "SOMETHING_NEW" if status is TaskStatus.UNKNOWN else status.value
    snapshot = TaskSnapshot(
        task_id="task_x",
        status=status,
        raw_status=raw,
        progress=progress,
        submit_time=stamps[0],
        start_time=stamps[1],
        finish_time=stamps[2],
        updated_at=stamps[3],
        upstream_start=stamps[4],
        upstream_end=stamps[5],
        video_url=texts[0],
        orig_prompt=texts[1],
        actual_prompt=texts[2],
        fail_code=texts[3],
        fail_message=texts[4],
        upstream_status=texts[5],
        upstream_request_id=texts[6],
        usage=usage,
    )
    assert snapshot_from_store(snapshot_to_store(snapshot)) == snapshot
