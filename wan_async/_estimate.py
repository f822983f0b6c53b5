"""What a batch would cost before anything is sent: tasks and seconds of video.

The gateway bills per task, by model, size and duration; it publishes no prices, so the
estimate counts what is billed (tasks and video-seconds per model and size) and leaves the
price list to the user. Every request is validated on the way (they are
:class:`VideoRequest` objects, checked when created); a size or duration left out counts as
the model's default from :data:`MODEL_RULES`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import attrs

from ._models import VideoRequest
from ._rules import MODEL_RULES

#: What an unset size reads as for a model without rules (the gateway's own default).
GATEWAY_DEFAULT = "default"


@attrs.frozen(kw_only=True)
class EstimateLine:
    """The tasks of one model, size and duration in a batch."""

    #: The model name, as sent.
    model: str
    #: ``"WIDTH*HEIGHT"``; the model's default when the request leaves it out.
    size: str
    #: Seconds of video per task (``None``: a model without rules, duration left out).
    duration: int | None
    #: Tasks, each billed once it is created.
    tasks: int

    @property
    def video_seconds(self) -> int | None:
        """Seconds of video the line's tasks make together (``None`` if unknown)."""
        return None if self.duration is None else self.duration * self.tasks


@attrs.frozen(kw_only=True)
class Estimate:
    """What running a batch would bill: one line per model, size and duration."""

    lines: tuple[EstimateLine, ...]

    @property
    def tasks(self) -> int:
        """Tasks in all."""
        return sum(line.tasks for line in self.lines)

    @property
    def video_seconds(self) -> int:
        """Seconds of video in all (lines of unknown duration left out)."""
        return sum(line.video_seconds or 0 for line in self.lines)

    def table(self) -> str:
        """The estimate as a plain-text table, one line per model, size and duration."""
        header = ("model", "size", "duration", "tasks", "video seconds")
        rows = [
            (
                line.model,
                line.size,
                "default" if line.duration is None else f"{line.duration} s",
                str(line.tasks),
                "?" if line.video_seconds is None else str(line.video_seconds),
            )
            for line in self.lines
        ]
        rows.append(("total", "", "", str(self.tasks), str(self.video_seconds)))
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in (header, *rows)
        )


def estimate(requests: Iterable[VideoRequest]) -> Estimate:
    """Count what ``requests`` would bill, sending nothing.

    Raises:
        TypeError: an item is not a :class:`VideoRequest`.
    """
    counts: Counter[tuple[str, str, int | None]] = Counter()
    for request in requests:
        if not isinstance(request, VideoRequest):
            msg = f"estimate() takes VideoRequest objects, got {type(request).__name__}"
            raise TypeError(msg)
        rules = MODEL_RULES.get(request.model)
        size = request.size or (rules.default_size if rules else GATEWAY_DEFAULT)
        duration = request.duration or (rules.default_duration if rules else None)
        counts[request.model, size, duration] += 1
    lines = [
        EstimateLine(model=model, size=size, duration=duration, tasks=tasks)
        for (model, size, duration), tasks in sorted(
            counts.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)
        )
    ]
    return Estimate(lines=tuple(lines))
