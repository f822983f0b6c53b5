"""The one cattrs converter: every JSON <-> model rule of the wire format lives here.

The gateway's query answer is deeply nested and varies between gateway versions (SPEC §3), so it
is first structured into private ``_Wire*`` classes that mirror the JSON and tolerate missing or
extra keys, then flattened into a public :class:`~wan_async.TaskSnapshot`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Literal, NewType, Optional

import attrs
import cattrs

from ._models import TaskCreated, TaskSnapshot, TaskStatus, Usage, VideoRequest

__all__ = [
    "ErrorBody",
    "converter",
    "created_from_wire",
    "parse_error_body",
    "request_to_wire",
    "snapshot_from_store",
    "snapshot_from_wire",
    "snapshot_to_store",
]

#: "30%" (or a number) -> 0.3.
_Progress = NewType("_Progress", float)
#: A nested object that some gateways send as a string or null: anything but a dict is missing.
_Obj = Optional[dict[str, Any]]  # noqa: UP045 - a runtime type for cattrs dispatch


@attrs.define(kw_only=True)
class _WireOutput:
    task_id: str | None = None
    task_status: str | None = None
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    video_url: str | None = None
    orig_prompt: str | None = None
    actual_prompt: str | None = None
    code: str | None = None
    message: str | None = None


@attrs.define(kw_only=True)
class _WireUsage:
    video_count: str | None = None
    video_duration: str | None = None
    video_ratio: str | None = None


@attrs.define(kw_only=True)
class _WireUpstream:
    request_id: str | None = None
    output: _Obj = None
    usage: _Obj = None


@attrs.define(kw_only=True)
class _WireTask:
    task_id: str | None = None
    status: str | None = None
    fail_reason: str | None = None
    result_url: str | None = None
    progress: _Progress = _Progress(0.0)
    submit_time: datetime | None = None
    start_time: datetime | None = None
    finish_time: datetime | None = None
    updated_at: datetime | None = None
    data: _Obj = None


@attrs.define(kw_only=True)
class _WireCreated:
    id: str | None = None
    task_id: str | None = None
    model: str | None = None
    status: str | None = None
    created_at: datetime | None = None


converter = cattrs.Converter(forbid_extra_keys=False)


def _text(value: object, _: object = None) -> str | None:
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def _stamp(value: object, _: object = None) -> datetime | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _progress(value: object, _: object = None) -> _Progress:
    """Map the gateway's ``"30%"`` (or a bare number, 0-1 or 0-100) onto 0.0-1.0."""
    number: float
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match is None:
            return _Progress(0.0)
        number = float(match.group(1)) / 100
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value) / 100 if value > 1 else float(value)
    else:
        return _Progress(0.0)
    return _Progress(min(1.0, max(0.0, number)))


def _loose(value: object, _: object = None) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None


def _status(value: object, _: object = None) -> TaskStatus:
    try:
        return TaskStatus(value)
    except ValueError:
        return TaskStatus.UNKNOWN


# Wire fields are loose: a wrong type reads as "missing", never as a crash (SPEC §3).
converter.register_structure_hook(Optional[str], _text)  # noqa: UP045
converter.register_structure_hook(Optional[datetime], _stamp)  # noqa: UP045
converter.register_structure_hook(_Progress, _progress)
converter.register_structure_hook(_Obj, _loose)
converter.register_structure_hook(TaskStatus, _status)


def _opt_float(value: str | None) -> float | None:
    """A finite number, else None: usage figures are informational, never worth an error."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


_FULL_REASON = re.compile(r"code:\s*(?P<code>[^,]*?)\s*,\s*message:\s*(?P<message>.*)$", re.S)


def _failure(task: _WireTask, output: _WireOutput) -> tuple[str | None, str | None]:
    """Find upstream's failure code and message wherever this gateway version put them."""
    code, message = output.code, output.message
    reason = task.fail_reason
    if reason and (code is None or message is None):
        match = _FULL_REASON.search(reason)
        if match:
            code = code or match.group("code").strip() or None
            message = message or match.group("message").strip() or None
    if message is None and reason:
        message = reason
    return code, message


#: Upstream (DashScope) stamps its own times in Beijing time, without a zone.
_UPSTREAM_DEFAULT_OFFSET = 8 * 3600.0
_UPSTREAM_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")


def _upstream_wall(text: str | None) -> float | None:
    """Upstream's ``"2025-12-10 09:06:19.731"`` as seconds, read as if it were UTC."""
    if not text:
        return None
    try:
        # fromisoformat is implemented in C and an order of magnitude faster than strptime:
        # this runs on every poll.
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        for fmt in _UPSTREAM_FORMATS:
            try:
                moment = datetime.strptime(text.strip(), fmt)
                break
            except ValueError:
                continue
        else:
            return None
    return moment.replace(tzinfo=timezone.utc).timestamp()


def _upstream_times(
    task: _WireTask, output: _WireOutput
) -> tuple[datetime | None, datetime | None]:
    """When upstream itself started and ended the task, to the millisecond, in UTC.

    Its stamps carry no zone; the zone is found by comparing its ``submit_time`` with the
    gateway's (rounded to a quarter hour), else taken to be Beijing time.
    """
    offset = _UPSTREAM_DEFAULT_OFFSET
    submitted = _upstream_wall(output.submit_time)
    if submitted is not None and task.submit_time is not None:
        offset = round((submitted - task.submit_time.timestamp()) / 900) * 900.0

    def to_utc(text: str | None) -> datetime | None:
        wall = _upstream_wall(text)
        return None if wall is None else datetime.fromtimestamp(wall - offset, tz=timezone.utc)

    return to_utc(output.scheduled_time), to_utc(output.end_time)


def _structure_snapshot(envelope: object, _: object = None) -> TaskSnapshot:
    if not isinstance(envelope, Mapping) or not isinstance(envelope.get("data"), Mapping):
        msg = "the answer has no 'data' object"
        raise ValueError(msg)
    task = converter.structure(envelope["data"], _WireTask)
    if task.status is None:
        msg = "the answer has no 'data.status'"
        raise ValueError(msg)
    upstream = converter.structure(task.data or {}, _WireUpstream)
    output = converter.structure(upstream.output or {}, _WireOutput)
    status = converter.structure(task.status, TaskStatus)
    task_id = task.task_id or output.task_id
    if not task_id:
        msg = "the answer has no 'data.task_id'"
        raise ValueError(msg)
    usage = None
    if upstream.usage is not None:
        raw = converter.structure(upstream.usage, _WireUsage)
        count = _opt_float(raw.video_count)
        usage = Usage(
            video_count=int(count) if count is not None else None,
            video_duration=_opt_float(raw.video_duration),
            video_ratio=raw.video_ratio,
        )
    upstream_start, upstream_end = _upstream_times(task, output)
    video_url = fail_code = fail_message = None
    if status is TaskStatus.SUCCESS:
        # SPEC §3.3: newer gateways say result_url; older ones store the URL in fail_reason.
        video_url = task.result_url or task.fail_reason or output.video_url
    elif status is TaskStatus.FAILURE:
        fail_code, fail_message = _failure(task, output)
    return TaskSnapshot(
        task_id=task_id,
        status=status,
        raw_status=task.status,
        progress=1.0 if status.is_terminal else task.progress,
        submit_time=task.submit_time,
        start_time=task.start_time,
        finish_time=task.finish_time,
        updated_at=task.updated_at,
        video_url=video_url,
        orig_prompt=output.orig_prompt,
        actual_prompt=output.actual_prompt,
        usage=usage,
        fail_code=fail_code,
        fail_message=fail_message,
        upstream_status=output.task_status,
        upstream_request_id=upstream.request_id,
        upstream_start=upstream_start,
        upstream_end=upstream_end,
    )


def _structure_created(body: object, _: object = None) -> TaskCreated:
    if not isinstance(body, Mapping):
        msg = "the answer is not a JSON object"
        raise ValueError(msg)
    raw = converter.structure(body, _WireCreated)
    task_id = raw.id or raw.task_id
    if not task_id:
        msg = "the answer has no task 'id'"
        raise ValueError(msg)
    return TaskCreated(
        task_id=task_id,
        model=raw.model,
        status=raw.status,
        created_at=raw.created_at,
    )


def _unstructure_request(request: VideoRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": request.prompt, "model": request.model}
    inputs = {
        k: v
        for k, v in (("negative_prompt", request.negative_prompt), ("audio_url", request.audio_url))
        if v is not None
    }
    parameters = {
        k: v
        for k, v in (
            ("size", request.size),
            ("duration", request.duration),
            ("prompt_extend", request.prompt_extend),
            ("watermark", request.watermark),
            ("seed", request.seed),
            ("audio", request.audio),
            ("shot_type", request.shot_type),
        )
        if v is not None
    }
    metadata = {k: v for k, v in (("input", inputs), ("parameters", parameters)) if v}
    if metadata:
        body["metadata"] = metadata
    return body


converter.register_structure_hook(TaskSnapshot, _structure_snapshot)
converter.register_structure_hook(TaskCreated, _structure_created)
converter.register_unstructure_hook(VideoRequest, _unstructure_request)


def request_to_wire(request: VideoRequest) -> dict[str, Any]:
    """Return the JSON body of a submit for ``request``, unset fields omitted."""
    body: dict[str, Any] = converter.unstructure(request, VideoRequest)
    return body


def snapshot_from_wire(envelope: object) -> TaskSnapshot:
    """Structure a GET answer (the whole ``{"code", "message", "data"}`` envelope).

    Raises:
        ValueError: the answer lacks what every gateway version sends (data, status, task id).
    """
    snapshot: TaskSnapshot = _structure(envelope, TaskSnapshot)
    return snapshot


def created_from_wire(body: object) -> TaskCreated:
    """Structure a submit answer.

    Raises:
        ValueError: the answer has no task id.
    """
    created: TaskCreated = _structure(body, TaskCreated)
    return created


def _structure(obj: object, cls: type[Any]) -> Any:
    try:
        return converter.structure(obj, cls)
    except cattrs.BaseValidationError as exc:
        # cattrs groups errors; one readable line is what a caller needs.
        msg = "; ".join(str(e) for e in exc.exceptions) or str(exc)
        raise ValueError(msg) from exc


_REQUEST_ID = re.compile(r"\(request id:\s*([^)\s]+)\s*\)")


@attrs.frozen(kw_only=True)
class ErrorBody:
    """What a JSON error answer said, whichever of the two shapes it came in."""

    code: str | None
    message: str | None
    request_id: str | None
    #: Which of the gateway's own shapes it came in; ``None`` for anything else (a proxy's
    #: page, a body that is not JSON).
    shape: Literal["middleware", "task"] | None

    @property
    def from_gateway(self) -> bool:
        """Whether the body is in one of the gateway's own error shapes."""
        return self.shape is not None


def parse_error_body(body: object) -> ErrorBody:
    """Read an error answer in either shape of SPEC §4 (middleware or task)."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            message = _text(error.get("message"))
            return ErrorBody(
                # Not ``type``: it names the gateway's error class ("new_api_error"), the
                # same for every error, and would read as a code where none was given.
                code=_text(error.get("code")) or None,
                message=message,
                request_id=_request_id_in(message),
                shape="middleware",
            )
        if "code" in body and "message" in body:
            message = _text(body.get("message"))
            return ErrorBody(
                code=_text(body.get("code")) or None,
                message=message,
                request_id=_request_id_in(message),
                shape="task",
            )
    return ErrorBody(code=None, message=None, request_id=None, shape=None)


def _request_id_in(message: str | None) -> str | None:
    match = _REQUEST_ID.search(message or "")
    return match.group(1) if match else None


# -- the task store's form of a snapshot ----------------------------------------------------

#: Fields of a snapshot that are stamps: stored as ISO 8601 text (exact to the microsecond).
_STAMPS = (
    "submit_time",
    "start_time",
    "finish_time",
    "updated_at",
    "upstream_start",
    "upstream_end",
)


#: Fields of a snapshot that are text.
_TEXTS = (
    "video_url",
    "orig_prompt",
    "actual_prompt",
    "fail_code",
    "fail_message",
    "upstream_status",
    "upstream_request_id",
)


def snapshot_to_store(snapshot: TaskSnapshot) -> str:
    """``snapshot`` as the JSON a task store keeps (:func:`snapshot_from_store` reads it)."""
    fields: dict[str, Any] = {a.name: getattr(snapshot, a.name) for a in attrs.fields(TaskSnapshot)}
    fields["status"] = snapshot.raw_status
    for name in _STAMPS:
        stamp = fields[name]
        fields[name] = None if stamp is None else stamp.isoformat()
    fields["usage"] = None if snapshot.usage is None else attrs.asdict(snapshot.usage)
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


def _iso(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def snapshot_from_store(text: str) -> TaskSnapshot:
    """A snapshot from the JSON a task store keeps.

    Raises:
        ValueError: the text is not such JSON.
    """
    fields = json.loads(text)
    if not isinstance(fields, dict) or not isinstance(fields.get("task_id"), str):
        msg = "a stored snapshot is a JSON object with a task_id"
        raise ValueError(msg)
    raw_status = _text(fields.get("raw_status", fields.get("status"))) or ""
    usage = fields.get("usage")
    progress = fields.get("progress")
    known: dict[str, Any] = {name: _iso(fields.get(name)) for name in _STAMPS}
    for name in _TEXTS:
        known[name] = _text(fields.get(name))
    return TaskSnapshot(
        task_id=fields["task_id"],
        status=_status(raw_status),
        raw_status=raw_status,
        progress=float(progress) if isinstance(progress, (int, float)) else 0.0,
        usage=converter.structure(usage, Usage) if isinstance(usage, dict) else None,
        **known,
    )
