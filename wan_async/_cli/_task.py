"""One task at a time: ``generate``, ``wait`` and ``status``."""

from __future__ import annotations

import argparse
import enum
import json
import os
import shlex
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
from ._inputs import option_fields, request_from_options

#: Real seconds between redraws of the spinner's elapsed time.
_REDRAW = 0.25


async def generate(args: argparse.Namespace, ctx: Context) -> int:
    """Submit one task, wait for it, download its video; print the task id and the path."""
    request = request_from_options(option_fields(args))
    out = Out.parse(args.out)
    out.prepare(overwrite=args.overwrite)
    display = ctx.display()  # any problem with it shows before a task is paid for
    async with open_client(ctx.connection) as client:
        if ctx.connection.simulate:
            ctx.say(f"simulating the gateway offline ({ctx.connection.time_scale:g}x time)")
        handle = await client.submit(request)
        ctx.say(f"task id: {handle.task_id}")
        return await _collect(client, handle, out, args, ctx, display)


async def wait(args: argparse.Namespace, ctx: Context) -> int:
    """Attach to a task submitted earlier, wait for it and download its video."""
    task_id = checked_task_id(args.task_id)
    out = Out.parse(args.out)
    out.prepare(overwrite=args.overwrite, task_id=task_id)
    display = ctx.display()
    async with open_client(ctx.connection) as client:
        handle = client.attach(task_id)
        return await _collect(client, handle, out, args, ctx, display)


async def status(args: argparse.Namespace, ctx: Context) -> int:
    """Print a task's snapshot as the gateway last refreshed it (one GET)."""
    task_id = checked_task_id(args.task_id)
    async with open_client(ctx.connection) as client:
        snapshot = await client.get_task(task_id)
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


def checked_task_id(text: str) -> str:
    """The task id given on the command line, without the blanks a copy may add.

    Raises:
        CLIError: (exit 3) the id is empty or blank.
    """
    task_id = text.strip()
    if not task_id:
        msg = f"TASK_ID is empty (got {text!r}): pass the id a submit answered, e.g. task_..."
        raise CLIError(msg, code=ExitCode.INVALID)
    return task_id


@attrs.frozen(kw_only=True)
class Out:
    """Where ``--out`` saves a video: a file, or ``TASK_ID.mp4`` in a directory.

    ``--out`` names a directory when it exists as one or ends in a path separator; any other
    path is the file itself. Missing folders are created before anything is paid for.
    """

    folder: Path
    #: The file's name; ``None``: ``TASK_ID.mp4``.
    name: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> Out:
        """Read ``--out`` (``None``: the current directory)."""
        if text is None:
            return cls(folder=Path())
        separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
        path = Path(text)
        if text.endswith(separators) or path.is_dir():
            return cls(folder=path)
        return cls(folder=path.parent, name=path.name)

    def path(self, task_id: str) -> Path:
        """The file the video of ``task_id`` is saved as."""
        return self.folder / (self.name or f"{task_id}.mp4")

    def prepare(self, *, overwrite: bool, task_id: str | None = None) -> None:
        """Create the missing folders; refuse a file that exists (unless ``overwrite``).

        Args:
            overwrite: ``--overwrite``.
            task_id: the task, when known (``wait``), to check ``TASK_ID.mp4`` too.

        Raises:
            CLIError: (exit 2) a folder cannot be created, or the file exists.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"--out: cannot create the directory {self.folder}: {exc.strerror or exc}"
            raise CLIError(msg, code=ExitCode.USAGE) from None
        if self.name is not None or task_id is not None:
            check_writable(self.path(task_id or ""), overwrite=overwrite)


def check_writable(path: Path, *, overwrite: bool) -> None:
    """Refuse before paying for a task whose video could not be saved.

    Raises:
        CLIError: (exit 2) ``path`` is a directory, or a file that exists without ``overwrite``.
    """
    if path.is_dir():
        msg = f"--out: {path} is a directory; end it with / to save TASK_ID.mp4 in it"
        raise CLIError(msg, code=ExitCode.USAGE)
    if path.exists() and not overwrite:
        msg = f"{path} exists; pass --overwrite to replace it, or choose another --out"
        raise CLIError(msg, code=ExitCode.USAGE)


async def _collect(
    client: WanClient,
    handle: TaskHandle,
    out: Out,
    args: argparse.Namespace,
    ctx: Context,
    display: Display,
) -> int:
    """Wait for ``handle`` with a status line, then download its video to ``out``."""
    target = out.path(handle.task_id)
    ctx.interrupt_hint = (
        f"task {handle.task_id} goes on upstream; collect it later with: "
        f"wan-async wait {shlex.quote(handle.task_id)} --out {shlex.quote(str(target))}"
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
    try:
        path = await client.download(result, target, overwrite=args.overwrite)
    except FileExistsError:
        # Appeared while the task ran (checked before): the video is still to be had.
        msg = (
            f"{target} appeared while task {handle.task_id} ran, so the video was not saved; "
            f"save it with: wan-async wait {shlex.quote(handle.task_id)} --out "
            f"{shlex.quote(str(target))} --overwrite (or another --out)"
        )
        raise CLIError(msg, code=ExitCode.USAGE) from None
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


def _jsonable(instance: object, field: object, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value
