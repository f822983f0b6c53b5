"""Requests, task snapshots and results: dumb attrs classes.

How they map to and from JSON lives in :mod:`wan_async._serde`; which values a model accepts
lives in :mod:`wan_async._rules`.
"""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from ._exceptions import TaskFailed
from ._rules import check_request


class TaskStatus(str, enum.Enum):
    """The gateway's ``data.status``. Any string it may add later reads as ``UNKNOWN``."""

    NOT_START = "NOT_START"
    SUBMITTED = "SUBMITTED"
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """``SUCCESS`` and ``FAILURE`` end a task; everything else means "keep polling"."""
        return self in (TaskStatus.SUCCESS, TaskStatus.FAILURE)

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class VideoRequest:
    """One text-to-video generation, checked against the model's rules when created.

    Fields left ``None`` are not sent, so the gateway's own defaults apply (1920*1080, 5 s,
    ``prompt_extend`` on, audio on).

    Raises:
        ValidationError: listing every broken rule at once (SPEC §5).
    """

    prompt: str
    model: str
    negative_prompt: str | None = None
    #: Background audio to use; takes precedence over ``audio``.
    audio_url: str | None = None
    #: ``"WIDTH*HEIGHT"``, e.g. ``"1280*720"``.
    size: str | None = None
    #: Seconds of video.
    duration: int | None = None
    prompt_extend: bool | None = None
    watermark: bool | None = None
    seed: int | None = None
    #: Generate audio when no ``audio_url`` is given.
    audio: bool | None = None
    #: ``"single"`` or ``"multi"`` (wan2.6 only, with ``prompt_extend`` left on).
    shot_type: str | None = None

    def __attrs_post_init__(self) -> None:
        check_request(self)


@attrs.frozen(kw_only=True)
class TaskCreated:
    """The gateway's answer to a submit: the task exists and is billed."""

    task_id: str
    model: str | None = None
    status: str | None = None
    created_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Usage:
    """What upstream reports it produced (keys vary by model; missing ones are ``None``).

    Attributes:
        video_count: videos produced (billed) for the task.
        video_duration: seconds of video produced.
        video_ratio: the size produced, as upstream spells it (e.g. ``"1280*720"``).
    """

    video_count: int | None = None
    video_duration: float | None = None
    video_ratio: str | None = None


@attrs.frozen(kw_only=True)
class TaskSnapshot:
    """One task as the gateway last refreshed it.

    Attributes:
        task_id: the id the submit answered.
        status: a :class:`TaskStatus`; a status the gateway adds later reads ``UNKNOWN``.
        raw_status: ``status`` exactly as the gateway spelled it.
        progress: 0.0-1.0 in the gateway's fixed steps (0, 20, 30, 100 %): not real progress.
        submit_time, start_time, finish_time: the gateway's stamps (aware datetimes, UTC).
        updated_at: when the gateway last refreshed the task from upstream.
        video_url: set on SUCCESS: the signed video URL (left out of the repr: its query
            string is a credential, valid 24 hours).
        orig_prompt, actual_prompt: the prompt sent, and as upstream rewrote it
            (``prompt_extend``).
        usage: what upstream reports it produced (:class:`Usage`), once known.
        fail_code, fail_message: set on FAILURE: upstream's code (e.g.
            ``DataInspectionFailed``) and message, wherever the gateway put them.
        upstream_status, upstream_request_id: upstream's own status and request id, if the
            gateway relayed them (quote the request id to support).
        upstream_start, upstream_end: when upstream itself started and ended the work, to
            the millisecond, if the gateway relayed them.
    """

    task_id: str
    status: TaskStatus
    #: ``status`` exactly as the gateway spelled it (differs from ``status`` when UNKNOWN).
    raw_status: str
    #: 0.0-1.0 from the gateway's fixed steps ("0%", "20%", "30%", "100%"): not real progress.
    progress: float = 0.0
    submit_time: datetime | None = None
    start_time: datetime | None = None
    finish_time: datetime | None = None
    #: When the gateway last refreshed the task from upstream.
    updated_at: datetime | None = None
    #: Set on SUCCESS: ``result_url``, else ``fail_reason``, else ``output.video_url``.
    #: Left out of the repr: its query string is a signature, not for logs.
    video_url: str | None = attrs.field(default=None, repr=False)
    orig_prompt: str | None = None
    actual_prompt: str | None = None
    usage: Usage | None = None
    #: Set on FAILURE: upstream's code and message, wherever the gateway put them.
    fail_code: str | None = None
    fail_message: str | None = None
    #: Upstream's own task status (``PENDING``, ``RUNNING``, ...), if the gateway relayed it.
    upstream_status: str | None = None
    upstream_request_id: str | None = None
    #: When upstream itself started and ended the work (``output.scheduled_time`` and
    #: ``output.end_time``, to the millisecond), if the gateway relayed them.
    upstream_start: datetime | None = None
    upstream_end: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the task has ended (SUCCESS or FAILURE)."""
        return self.status.is_terminal

    def result(self) -> VideoResult:
        """Return the result of a successful task.

        Raises:
            TaskFailed: the task ended in FAILURE (or in SUCCESS without a video URL).
            ValueError: the task has not ended yet.
        """
        if self.status is TaskStatus.FAILURE:
            raise TaskFailed(
                task_id=self.task_id, code=self.fail_code, message=self.fail_message, snapshot=self
            )
        if self.status is not TaskStatus.SUCCESS:
            msg = f"task {self.task_id} has not finished (status {self.raw_status})"
            raise ValueError(msg)
        if not self.video_url:
            # Nothing to collect: for the caller this is a failed task, not a parse error.
            raise TaskFailed(
                task_id=self.task_id,
                code="NoVideoURL",
                message="the gateway reported SUCCESS without a video URL",
                snapshot=self,
            )
        return VideoResult(
            task_id=self.task_id,
            video_url=self.video_url,
            orig_prompt=self.orig_prompt,
            actual_prompt=self.actual_prompt,
            usage=self.usage,
            submit_time=self.submit_time,
            start_time=self.start_time,
            finish_time=self.finish_time,
        )


@attrs.frozen(kw_only=True)
class VideoResult:
    """A finished video: where to fetch it (valid for 24 hours) and what was generated.

    Attributes:
        task_id: the task's id.
        video_url: a signed URL on the storage host, valid 24 hours after the task ended;
            ``client.download(result, path)`` fetches it without the gateway's key. Left out
            of the repr: its query string is a credential.
        orig_prompt, actual_prompt: the prompt sent, and as upstream rewrote it
            (``prompt_extend``).
        usage: what upstream reports it produced (:class:`Usage`).
        submit_time, start_time, finish_time: the gateway's stamps (aware datetimes, UTC).
    """

    task_id: str
    #: A signed URL on the storage host; fetch it without the gateway's Authorization header.
    video_url: str = attrs.field(repr=False)
    orig_prompt: str | None = None
    #: The rewritten prompt, when ``prompt_extend`` was on.
    actual_prompt: str | None = None
    usage: Usage | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    finish_time: datetime | None = None
