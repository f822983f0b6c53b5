"""One task at a time: ``generate``, ``wait`` and ``status``."""

from __future__ import annotations

import argparse
import enum
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import attrs

from .._client import WanClient
from .._handle import TaskHandle
from .._models import TaskSnapshot
from ._connect import open_client
from ._context import Context
from ._display import Display
from ._errors import CLIError, ExitCode
from ._inputs import build_request, option_fields

#: Real seconds between redraws of the spinner's elapsed time.
_REDRAW = 0.25


async def generate(args: argparse.Namespace, ctx: Context) -> int:
    """Submit one task, wait for it, download its video; print the task id and the path."""
    request = build_request(option_fields(args))
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_writable(out, overwrite=args.overwrite)
    display = ctx.display()  # any problem with it shows before a task is paid for
    async with open_client(ctx.connection) as client:
        if ctx.connection.simulate:
            ctx.say(f"simulating the gateway offline ({ctx.connection.time_scale:g}x time)")
        handle = await client.submit(request)
        ctx.say(f"task id: {handle.task_id}")
        return await _collect(client, handle, out, args, ctx, display)


async def wait(args: argparse.Namespace, ctx: Context) -> int:
    """Attach to a task submitted earlier, wait for it and download its video."""
    out = _target(Path(args.out) if args.out else None, args.task_id)
    _check_writable(out, overwrite=args.overwrite)
    display = ctx.display()
    async with open_client(ctx.connection) as client:
        handle = client.attach(args.task_id)
        return await _collect(client, handle, out, args, ctx, display)


async def status(args: argparse.Namespace, ctx: Context) -> int:
    """Print a task's snapshot as the gateway last refreshed it (one GET)."""
    async with open_client(ctx.connection) as client:
        snapshot = await client.get_task(args.task_id)
    if args.json:
        print(json.dumps(snapshot_json(snapshot), indent=2, ensure_ascii=False))
    else:
        for label, value in snapshot_lines(snapshot):
            print(f"{label:<10} {value}")
    return ExitCode.OK


def snapshot_json(snapshot: TaskSnapshot) -> dict[str, Any]:
    """Every field of the snapshot, in JSON types (times as ISO 8601)."""
    return attrs.asdict(snapshot, value_serializer=_jsonable)


def snapshot_lines(snapshot: TaskSnapshot) -> list[tuple[str, str]]:
    """The snapshot as labelled lines for people; fields the gateway did not set are left out."""
    lines = [
        ("task", snapshot.task_id),
        ("status", f"{snapshot.raw_status} ({snapshot.progress:.0%})"),
    ]
    times = [
        ("submitted", snapshot.submit_time),
        ("started", snapshot.start_time),
        ("finished", snapshot.finish_time),
        ("updated", snapshot.updated_at),
    ]
    lines.extend((label, when.isoformat(sep=" ")) for label, when in times if when is not None)
    if snapshot.video_url:
        lines.append(("video", snapshot.video_url))
    if snapshot.fail_code or snapshot.fail_message:
        lines.append(("failure", f"{snapshot.fail_code or '-'}: {snapshot.fail_message or '-'}"))
    if snapshot.actual_prompt:
        lines.append(("prompt", snapshot.actual_prompt))
    return lines


async def _collect(
    client: WanClient,
    handle: TaskHandle,
    out: Path | None,
    args: argparse.Namespace,
    ctx: Context,
    display: Display,
) -> int:
    """Wait for ``handle`` with a status line, then download its video to ``out``."""
    target = _target(out, handle.task_id)
    ctx.interrupt_hint = (
        f"task {handle.task_id} goes on upstream; collect it later with: "
        f"wan-async wait {handle.task_id} --out {target}"
    )
    with display:
        watcher = _StatusLine(handle, display)
        client.add_status_listener(watcher.changed)
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.redraw_forever)
            try:
                result = await handle
            finally:
                tg.cancel_scope.cancel()
    ctx.interrupt_hint = None
    path = await client.download(result, target, overwrite=args.overwrite)
    ctx.say(f"saved: {path}")
    if ctx.quiet:
        print(path)
    return ExitCode.OK


class _StatusLine:
    """Feeds one task's status and elapsed time to a display."""

    def __init__(self, handle: TaskHandle, display: Display) -> None:
        self._handle = handle
        self._display = display
        self._started = time.monotonic()
        self._text = f"{handle.task_id}: waiting for the first status"

    def changed(self, handle: TaskHandle, snapshot: TaskSnapshot) -> None:
        """Status listener: keep the text of our task's latest status."""
        if handle is self._handle or handle.task_id == self._handle.task_id:
            self._text = f"{handle.task_id}: {snapshot.raw_status} ({snapshot.progress:.0%})"
            self._display.status(self._text, self._elapsed())

    async def redraw_forever(self) -> None:
        """Redraw the elapsed time until cancelled."""
        while True:
            self._display.status(self._text, self._elapsed())
            await anyio.sleep(_REDRAW)

    def _elapsed(self) -> float:
        return time.monotonic() - self._started


def _target(out: Path | None, task_id: str) -> Path:
    """The file to save to: ``out``, or ``TASK_ID.mp4`` in the directory ``out`` (or here)."""
    name = f"{task_id}.mp4"
    if out is None:
        return Path(name)
    return out / name if out.is_dir() else out


def _check_writable(out: Path, *, overwrite: bool) -> None:
    """Refuse before paying for a task whose video could not be saved."""
    if out.is_dir():
        return  # the video goes in it as TASK_ID.mp4
    if out.exists() and not overwrite:
        msg = f"{out} exists; pass --overwrite to replace it, or choose another --out"
        raise CLIError(msg, code=ExitCode.USAGE)
    if not out.parent.is_dir():
        msg = f"the directory {out.parent} does not exist"
        raise CLIError(msg, code=ExitCode.USAGE)


def _jsonable(instance: object, field: object, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value
