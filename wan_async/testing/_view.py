"""One task as the gateway stores it: the view GETs return, refreshed from upstream (SPEC §3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from . import _upstream as up
from ._wire import unix, upstream_time

UrlField = Literal["fail_reason", "result_url", "output"]
FailReasonStyle = Literal["short", "full"]

TERMINAL = frozenset({"SUCCESS", "FAILURE"})
#: What the gateway writes in ``fail_reason`` when it gives up on a task itself.
TIMEOUT_REASON = "task timeout"

# SPEC §3.1: upstream's task_status -> the gateway's (status, progress).
_STATUS_MAP: Mapping[str, tuple[str, str]] = {
    up.PENDING: ("QUEUED", "20%"),
    up.RUNNING: ("IN_PROGRESS", "30%"),
    up.SUCCEEDED: ("SUCCESS", "100%"),
    up.FAILED: ("FAILURE", "100%"),
}


@attrs.frozen(kw_only=True)
class ViewStyle:
    """Where this gateway version puts the video URL and the failure reason."""

    url_field: UrlField
    fail_reason_style: FailReasonStyle


@attrs.define(kw_only=True, eq=False)
class GatewayTask:
    """A task row of the gateway's database, with the upstream task behind it."""

    #: The row id (``data.id``).
    row_id: int
    task_id: str
    prompt: str
    model: str
    size: str
    duration: int
    prompt_extend: bool
    created_at: float
    upstream: up.UpstreamTask
    #: Upstream's JSON as last seen: at first, upstream's answer to the submit.
    data: dict[str, Any]
    status: str = "NOT_START"
    progress: str = "0%"
    start_time: float | None = None
    finish_time: float | None = None
    updated_at: float | None = None
    fail_reason: str = ""
    result_url: str | None = None
    video_url: str | None = None
    first_terminal_get: float | None = None
    #: The account that submitted it ("" for :attr:`FakeGateway.api_key`'s): only that
    #: account's keys see it.
    account: str = ""
    #: Clock time of every GET naming this task, in order.
    get_times: list[float] = attrs.field(factory=list)
    #: Clock time of every refresh of this task (its ``updated_at`` before rounding).
    refresh_times: list[float] = attrs.field(factory=list)

    @property
    def terminal(self) -> bool:
        """Whether the gateway has seen the task end."""
        return self.status in TERMINAL

    def refresh(
        self,
        now: float,
        *,
        request_id: str,
        video_url: str,
        style: ViewStyle,
        seen: up.UpstreamTask | None = None,
    ) -> None:
        """Copy upstream's state into the view, as one pass of the refresh loop does.

        Args:
            now: the time the refresh stores the task (its ``updated_at``).
            request_id: upstream's id for this status query.
            video_url: the signed URL to publish if the task has succeeded.
            style: the gateway version's field placement.
            seen: upstream's task as the query saw it (default: as it is now).
        """
        task = self.upstream if seen is None else seen
        self.status, self.progress = _STATUS_MAP[task.state]
        self.updated_at = now
        self.refresh_times.append(now)
        self.data = self._upstream_json(task, request_id, video_url)
        if self.status == "IN_PROGRESS" and self.start_time is None:
            self.start_time = now
        if self.status == "SUCCESS":
            self.finish_time = now
            self.video_url = video_url
            self.fail_reason = "" if style.url_field == "output" else video_url
            if style.url_field == "result_url":
                self.result_url = video_url
        elif self.status == "FAILURE":
            self.finish_time = now
            self.fail_reason = _failure_reason(task.failure, style)

    def expire(self, now: float) -> None:
        """Fail the task on the gateway's side: it ran past the gateway's time limit."""
        self.status, self.progress = "FAILURE", "100%"
        self.updated_at = now
        self.refresh_times.append(now)
        self.finish_time = now
        self.fail_reason = TIMEOUT_REASON

    def dto(self) -> dict[str, Any]:
        """The ``data`` object of a GET answer (fresh dicts, except ``data`` itself)."""
        out: dict[str, Any] = {
            "id": self.row_id,
            "created_at": unix(self.created_at),
            "updated_at": unix(self.created_at if self.updated_at is None else self.updated_at),
            "task_id": self.task_id,
            "platform": "17",
            "user_id": 1,
            "group": "default",
            "channel_id": 1,
            "quota": 100_000 * self.duration,
            "action": "textGenerate",
            "status": self.status,
            "fail_reason": self.fail_reason,
            "submit_time": unix(self.created_at),
            "start_time": unix(self.start_time),
            "finish_time": unix(self.finish_time),
            "progress": self.progress,
            "properties": {
                "input": "",
                "origin_model_name": self.model,
                "upstream_model_name": self.model,
            },
            "data": self.data,
        }
        if self.result_url is not None:
            out["result_url"] = self.result_url
        return out

    def _upstream_json(
        self, task: up.UpstreamTask, request_id: str, video_url: str
    ) -> dict[str, Any]:
        output: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": task.state,
            "submit_time": upstream_time(task.submit_time),
        }
        if task.start_time is not None:
            output["scheduled_time"] = upstream_time(task.start_time)
        if task.end_time is not None:
            output["end_time"] = upstream_time(task.end_time)
        data: dict[str, Any] = {"request_id": request_id, "output": output}
        if task.state == up.SUCCEEDED:
            output["orig_prompt"] = self.prompt
            if self.prompt_extend:
                output["actual_prompt"] = extended_prompt(self.prompt)
            output["video_url"] = video_url
            data["usage"] = {
                "video_count": 1,
                "video_duration": self.duration,
                "video_ratio": self.size,
            }
        elif task.state == up.FAILED and task.failure is not None:
            output["code"], output["message"] = task.failure
        return data


def submit_json(task_id: str, request_id: str) -> dict[str, Any]:
    """Upstream's answer to a submit, which the gateway stores until the first refresh."""
    return {"request_id": request_id, "output": {"task_id": task_id, "task_status": up.PENDING}}


def extended_prompt(prompt: str) -> str:
    """Upstream's prompt rewrite when ``prompt_extend`` is on (deterministic here)."""
    return f"{prompt} (extended)"


def _failure_reason(failure: tuple[str, str] | None, style: ViewStyle) -> str:
    if style.fail_reason_style == "short" or failure is None:
        return "task failed"
    code, message = failure
    return f"task failed, code: {code} , message: {message}"
