"""``wan-async batch``: many prompts, live progress, downloads as tasks end, a results file.

The library's journal makes a rerun of the same command resume the batch without resubmitting;
this module adds what a person at a terminal needs around it: each video saved as soon as its
task succeeds (skipped when already on disk), a summary, and ``results.jsonl`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from .._batch import Outcome
from .._client import WanClient
from .._estimate import estimate
from .._exceptions import (
    BatchAborted,
    ClientClosedError,
    DeadlineExceeded,
    JournalError,
    SubmitOutcomeUnknown,
    TaskFailed,
    TaskNotFound,
    WanError,
)
from .._files import replace_private
from .._handle import TaskHandle
from .._journal import compare, recorded_submits
from .._models import TaskSnapshot, TaskStatus, VideoRequest, VideoResult
from .._stream import OutcomeStream
from ._connect import open_client
from ._context import Context
from ._display import BatchView, Display, format_seconds
from ._errors import CLIError, ExitCode, describe, error_code, exit_code_for, leaf_error
from ._inputs import Item, load_items, option_fields

SUCCEEDED = "succeeded"
FAILED = "failed"
UNKNOWN = "unknown"
NOT_FOUND = "not_found"
TIMEOUT = "timeout"
ABORTED = "aborted"
ERROR = "error"
DOWNLOAD_FAILED = "download_failed"
INTERRUPTED = "interrupted"

#: Real seconds between redraws of the progress display.
_REDRAW = 0.25
#: Rows of the summary table before it shows only the items that went wrong.
_TABLE_ROWS = 50
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@attrs.frozen(kw_only=True)
class Row:
    """One line of ``results.jsonl``: how one item of the batch ended."""

    index: int
    line: int
    prompt: str
    task_id: str | None
    status: str
    file: str | None = None
    video_url: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: The item is no longer in the prompts file; its row is kept from an earlier run (its
    #: task was paid for), ``index`` and ``line`` as they were then.
    removed: bool = False


@attrs.frozen(kw_only=True)
class Paths:
    """Where a batch writes: videos, its journal and its results file."""

    out_dir: Path
    journal: Path
    results: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Paths:
        """The paths given on the command line, defaults inside ``--out-dir``."""
        out_dir = Path(args.out_dir)
        return cls(
            out_dir=out_dir,
            journal=Path(args.journal) if args.journal else out_dir / "journal.jsonl",
            results=Path(args.results) if args.results else out_dir / "results.jsonl",
        )


async def batch(args: argparse.Namespace, ctx: Context) -> int:
    """Run the batch of a prompts file; return 0, or 1 if an item produced no video."""
    items = load_items(Path(args.file), option_fields(args), fmt=args.format)
    requests = [item.request for item in items]
    paths = Paths.from_args(args)
    if args.dry_run:
        return _dry_run(items, paths, ctx)
    for folder in (paths.out_dir, paths.journal.parent, paths.results.parent):
        _make_dir(folder)
    resuming = paths.journal.exists()
    if args.resubmit_unknown:
        _confirm_resubmit(paths.journal, requests, yes=args.yes)
    display = ctx.display()
    run: BatchRun | None = None
    refused = False
    try:
        async with open_client(ctx.connection) as client:
            if ctx.connection.simulate:
                ctx.say(f"simulating the gateway offline ({ctx.connection.time_scale:g}x time)")
            if resuming:
                changes = compare(paths.journal, requests)
                told = f": {changes.describe()}" if changes else ""
                ctx.say(f"resuming from {paths.journal}{told}")
            run = BatchRun(client, items, out_dir=paths.out_dir, display=display)
            # From now on a Ctrl-C leaves a results file (written below) to point to.
            ctx.interrupt_hint = _interrupt_hint(paths, simulate=ctx.connection.simulate)
            try:
                await run.run(
                    journal=paths.journal,
                    max_in_flight=args.concurrency,
                    retry_failed=args.retry_failed,
                    resubmit_unknown=args.resubmit_unknown,
                )
            except BaseException as exc:
                # Refused up front (e.g. a journal another run holds): touch nothing.
                refused = isinstance(leaf_error(exc), JournalError) and not run.begun()
                raise
    finally:
        # Only now, the client closed: every task of the batch has ended and every line of
        # its journal is on disk, so the journal tells which items were sent, with their ids.
        if run is not None and not refused:
            run.learn_submits(recorded_submits(paths.journal, requests))
            _after_run(run, paths, simulate=ctx.connection.simulate)
    ctx.interrupt_hint = None
    if not resuming and run.nothing_created():
        # The library journals an intent before each send and nothing when the gateway
        # certainly refused: left alone, a rerun would report those items "unknown" forever.
        paths.journal.unlink(missing_ok=True)
    if not ctx.quiet:
        rich = ctx.progress != "plain"
        print_summary(run.rows(), rich=rich, elapsed=run.elapsed(), requests=run.requests())
        print(run.billed())
        print(f"results: {paths.results}")
    return _exit_code(run, paths.results, ctx)


def _confirm_resubmit(journal: Path, requests: Sequence[VideoRequest], *, yes: bool) -> None:
    """Ask before resubmitting items whose first task may exist (``--yes`` answers it)."""
    unknown = sum(task_id is None for task_id in recorded_submits(journal, requests).values())
    if unknown == 0 or yes:
        return
    question = (
        f"{unknown} item{'s' if unknown > 1 else ''} of {journal} lost the answer to the "
        "submit: a task may exist for each and be billed. Submitting again may pay twice "
        "for them. Resubmit? [y/N] "
    )
    if not sys.stdin.isatty():
        msg = question.removesuffix(" Resubmit? [y/N] ") + " Pass --yes to resubmit them."
        raise CLIError(msg, code=ExitCode.USAGE)
    if input(question).strip().lower() not in ("y", "yes"):
        msg = "not resubmitted: nothing was sent"
        raise CLIError(msg, code=ExitCode.USAGE)


def _dry_run(items: Sequence[Item], paths: Paths, ctx: Context) -> int:
    """Print what the batch would bill (every item already validated); send nothing."""
    print(estimate(item.request for item in items).table())
    if paths.journal.exists():
        ctx.say(
            f"{paths.journal} exists: the real run resumes it, and items it holds as "
            "submitted are not billed again"
        )
    ctx.say("dry run: nothing was sent")
    return 0


def _after_run(run: BatchRun, paths: Paths, *, simulate: bool) -> None:
    """Write the results, also of a run cut short; forget a simulated run's journal then."""
    rows = run.rows()
    write_results(paths.results, [*rows, *_removed_rows(paths.results, rows)])
    if simulate and not run.complete():
        # Its tasks lived in the simulator that stops now: a rerun could only report them
        # missing. (A complete run's journal keeps the finished items.)
        paths.journal.unlink(missing_ok=True)


def _removed_rows(path: Path, rows: Sequence[Row]) -> list[Row]:
    """The rows of an earlier run's results file for tasks no longer in the batch: a task
    paid for is never dropped from the record because its prompt was edited out (a retried
    item's earlier attempt is in the journal, its prompt still in the batch)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    current = {row.task_id for row in rows if row.task_id}
    prompts = {row.prompt for row in rows}  # an earlier attempt of an item still here
    kept = []
    for line in text.splitlines():
        try:
            old = json.loads(line)
            row = Row(**{**old, "removed": True})
        except (ValueError, TypeError):
            continue
        if row.task_id and row.task_id not in current and row.prompt not in prompts:
            kept.append(row)
    return kept


def _interrupt_hint(paths: Paths, *, simulate: bool) -> str:
    results = f"each item's status and task id are in {paths.results}"
    if simulate:
        return (
            f"{results}; the simulated tasks stopped with the simulator, so the journal was "
            "removed: run the same command again to start over"
        )
    return f"{results}; run the same command again to resume: the journal {paths.journal} keeps it"


class BatchRun:
    """One run of a batch: feeds the display, saves videos as tasks succeed, keeps the rows."""

    def __init__(
        self, client: WanClient, items: Sequence[Item], *, out_dir: Path, display: Display
    ) -> None:
        self._client = client
        self._items = items
        self._out_dir = out_dir
        self._display = display
        self._width = max(3, len(str(len(items) - 1)))
        self._index_of = {id(item.request): i for i, item in enumerate(items)}
        self._started = time.monotonic()
        self._rows: dict[int, Row] = {}
        self._errors: dict[int, BaseException] = {}
        self._downloading: set[int] = set()
        # Status of tasks seen by the poller and not yet ended; their ids by item.
        self._status: dict[str, TaskStatus] = {}
        self._ended: set[str] = set()
        #: Seconds of video upstream reported (``usage``) for the tasks ended in this run.
        self._video_seconds = 0.0
        self._task_ids: dict[int, str] = {}
        # Items whose submit the journal shows sent and never answered.
        self._unanswered: set[int] = set()
        #: The batch's outcomes, once it runs: also where it stands (``progress()``).
        self._outcomes: OutcomeStream | None = None

    async def run(
        self,
        *,
        journal: Path,
        max_in_flight: int | None,
        retry_failed: bool = False,
        resubmit_unknown: bool = False,
    ) -> None:
        """Run the batch to its end; downloads overlap with the tasks still running."""
        self._client.add_status_listener(self._on_status)
        requests = [item.request for item in self._items]
        with self._display:
            async with anyio.create_task_group() as ui:
                ui.start_soon(self._redraw_forever)
                async with anyio.create_task_group() as downloads:
                    outcomes = self._outcomes = self._client.as_completed(
                        requests,
                        max_in_flight=max_in_flight,
                        journal=journal,
                        retry_failed=retry_failed,
                        resubmit_unknown=resubmit_unknown,
                    )
                    async for outcome in outcomes:
                        self._on_outcome(outcome, downloads)
                ui.cancel_scope.cancel()
            self._display.batch(self.view())

    def rows(self) -> list[Row]:
        """One row per item, in input order; items not ended (yet) are ``interrupted``.

        An item sent is never without its task id when one is known: the results file is the
        user's record of what was paid for. An item whose submit was sent and never answered
        is ``unknown``: its task may exist.
        """
        return [
            self._rows.get(index) or self._unended_row(index) for index in range(len(self._items))
        ]

    def learn_submits(self, sent: Mapping[int, str | None]) -> None:
        """Learn which items were sent, and their task ids, from the batch's journal.

        A task id reaches this object only with a status seen or an outcome; a task the poller
        had not yet checked when the run stopped is known to the journal alone.
        """
        for index, task_id in sent.items():
            if not 0 <= index < len(self._items):
                continue
            if task_id is None:
                self._unanswered.add(index)
                continue
            self._unanswered.discard(index)
            self._task_ids.setdefault(index, task_id)
            row = self._rows.get(index)
            if row is not None and row.task_id is None:
                self._rows[index] = attrs.evolve(row, task_id=task_id)

    def _unended_row(self, index: int) -> Row:
        task_id = self._task_ids.get(index)
        if task_id is None and index in self._unanswered:
            return self._row(
                index,
                UNKNOWN,
                task_id=None,
                error_code=SubmitOutcomeUnknown.__name__,
                error_message=(
                    "stopped while its submit was on the wire: a task may exist and be billed; "
                    "look for it in the gateway's console before submitting it again"
                ),
            )
        return self._row(index, INTERRUPTED, task_id=task_id)

    def begun(self) -> bool:
        """Whether anything happened: a submit sent, a status seen, an item ended."""
        return bool(self._client.stats.submits or self._status or self._rows)

    def complete(self) -> bool:
        """Whether every item has ended (downloads included)."""
        return len(self._rows) == len(self._items)

    def nothing_created(self) -> bool:
        """Every item ended, and the gateway certainly created no task for any of them."""
        if not self.complete() or self._task_ids:
            return False  # an item is unfinished, or a task exists
        if any(row.task_id for row in self._rows.values()):
            return False
        errors = [self._errors.get(row.index) for row in self._rows.values()]
        return all(isinstance(e, WanError) and not e.task_may_exist for e in errors)

    def fatal_error(self) -> BaseException | None:
        """An error that stopped the whole batch (a rejected key, a model without channel)."""
        for error in self._errors.values():
            cause = error.cause if isinstance(error, BatchAborted) else error
            if cause is not None and exit_code_for(cause) is ExitCode.CONFIG:
                return cause
        return None

    def elapsed(self) -> float:
        """Real seconds since the run started."""
        return time.monotonic() - self._started

    def requests(self) -> str:
        """Requests spent, for people."""
        return self.view().requests()

    def view(self) -> BatchView:
        """Where the batch stands now: the ended items from this run's rows, the rest as the
        client knows them (a task not checked since its submit is "not yet checked")."""
        statuses = [row.status for row in self._rows.values()]
        done = statuses.count(SUCCEEDED) + len(self._downloading)
        unknown = statuses.count(UNKNOWN)
        failed = len(statuses) - statuses.count(SUCCEEDED) - unknown
        ended = len(statuses) + len(self._downloading)
        stats = self._client.stats
        progress = self._outcomes.progress() if self._outcomes is not None else None
        running = queued = unchecked = submitting = 0
        eta: float | None = None
        if progress is not None:
            running, queued = progress.running, progress.queued
            unchecked, submitting = progress.unchecked, progress.submitting
            # Clock seconds to real ones (a simulated gateway may run faster than real time).
            eta = None if progress.eta is None else progress.eta / self._client.clock.scale
        if ended >= len(self._items):
            eta = 0.0
        in_flight = running + queued + unchecked + submitting
        return BatchView(
            total=len(self._items),
            done=done,
            failed=failed,
            unknown=unknown,
            running=running,
            queued=queued,
            unchecked=unchecked,
            submitting=submitting,
            waiting=max(0, len(self._items) - ended - in_flight),
            downloading=len(self._downloading),
            elapsed=self.elapsed(),
            eta=eta,
            submits=stats.submits,
            polls=stats.poller.polls,
        )

    async def _redraw_forever(self) -> None:
        while True:
            self._display.batch(self.view())
            await anyio.sleep(_REDRAW)

    def _on_status(self, handle: TaskHandle, snapshot: TaskSnapshot) -> None:
        task_id = handle.task_id
        if task_id in self._ended:
            return
        self._status[task_id] = snapshot.status
        index = self._index_of.get(id(handle.request)) if handle.request is not None else None
        if index is not None:
            self._task_ids[index] = task_id

    def billed(self) -> str:
        """What the batch was billed for, as known: its tasks, and the seconds of video
        upstream reported (``usage``) for the tasks that ended in this run."""
        tasks = sum(row.task_id is not None for row in self.rows())
        text = f"billed: {tasks} task{'s' if tasks != 1 else ''}"
        if self._video_seconds:
            text += f", {self._video_seconds:g} s of video reported by upstream this run"
        return text

    def _on_outcome(self, outcome: Outcome, downloads: TaskGroup) -> None:
        usage = outcome.result.usage if outcome.result is not None else None
        if usage is not None and usage.video_duration is not None:
            self._video_seconds += usage.video_duration
        task_id = outcome.task_id
        if task_id is not None:
            self._ended.add(task_id)
            self._task_ids[outcome.index] = task_id
            self._status.pop(task_id, None)
        if outcome.result is None:
            assert outcome.error is not None
            self._errors[outcome.index] = outcome.error
            self._finish(self._failure_row(outcome.index, task_id, outcome.error))
            return
        path = self._out_dir / self._file_name(outcome.index, outcome.result.task_id)
        if path.exists():
            self._finish(self._success_row(outcome.index, outcome.result, path), note="on disk")
            return
        self._downloading.add(outcome.index)
        downloads.start_soon(self._download, outcome.index, outcome.result, path)

    async def _download(self, index: int, result: VideoResult, path: Path) -> None:
        try:
            # The client bounds downloads in flight (max_concurrent_downloads) by itself.
            saved = await self._client.download(result, path)
        except (WanError, OSError, ValueError) as exc:  # this item's failure, not the batch's
            row = self._row(
                index,
                DOWNLOAD_FAILED,
                task_id=result.task_id,
                video_url=result.video_url,
                error_code=error_code(exc),
                error_message=describe(exc),
            )
        else:
            row = self._success_row(index, result, saved)
        self._downloading.discard(index)
        self._finish(row)

    def _finish(self, row: Row, *, note: str = "") -> None:
        self._rows[row.index] = row
        self._display.note(_note_text(row, self._width, note))

    def _file_name(self, index: int, task_id: str) -> str:
        return f"{index:0{self._width}d}-{_UNSAFE_NAME.sub('_', task_id)}.mp4"

    def _success_row(self, index: int, result: VideoResult, path: Path) -> Row:
        return self._row(
            index, SUCCEEDED, task_id=result.task_id, file=str(path), video_url=result.video_url
        )

    def _failure_row(self, index: int, task_id: str | None, error: BaseException) -> Row:
        if isinstance(error, TaskFailed):
            code, message = error.code, error.message or describe(error)
        else:
            code, message = error_code(error), describe(error)
        return self._row(
            index,
            status_of(error),
            task_id=task_id or getattr(error, "task_id", None),
            error_code=code,
            error_message=message,
        )

    def _row(self, index: int, status: str, **fields: Any) -> Row:
        item = self._items[index]
        return Row(index=index, line=item.line, prompt=item.request.prompt, status=status, **fields)


def status_of(error: BaseException) -> str:
    """The results file's status for an item that ended with ``error``."""
    if isinstance(error, TaskFailed):
        return FAILED
    if isinstance(error, SubmitOutcomeUnknown):
        return UNKNOWN
    if isinstance(error, TaskNotFound):
        return NOT_FOUND
    if isinstance(error, DeadlineExceeded):
        return TIMEOUT
    if isinstance(error, (BatchAborted, ClientClosedError)):
        return ABORTED
    return ERROR


def write_results(path: Path, rows: Sequence[Row]) -> None:
    """Write one JSON line per item, replacing the file at once (never half-written), readable
    by its owner only."""
    text = "".join(json.dumps(attrs.asdict(row), ensure_ascii=False) + "\n" for row in rows)
    try:
        replace_private(path, text)  # 0600: it holds signed video URLs
    except OSError as exc:
        msg = f"cannot write the results file {path}: {exc.strerror or exc}"
        raise CLIError(msg, code=ExitCode.API) from None


def print_summary(rows: Sequence[Row], *, rich: bool, elapsed: float, requests: str) -> None:
    """A table of the items (only those that went wrong, for a big batch) and a totals line."""
    shown = list(rows)
    if len(shown) > _TABLE_ROWS:
        shown = [row for row in rows if row.status != SUCCEEDED][:_TABLE_ROWS]
    if shown:
        _print_table(shown, rich=rich)
    if len(shown) < len(rows):
        print(f"({len(rows) - len(shown)} more rows in the results file)")
    ok = sum(row.status == SUCCEEDED for row in rows)
    unknown = sum(row.status == UNKNOWN for row in rows)
    print(
        f"{ok}/{len(rows)} videos saved ({len(rows) - ok - unknown} failed, {unknown} unknown) "
        f"in {format_seconds(elapsed)}; {requests}"
    )
    if unknown:
        print(
            f"{unknown} item{'s' if unknown > 1 else ''} with an unknown outcome: the answer "
            "to the submit was lost, so a task may exist (and be billed) with no id to find "
            "it by. Rerun with --resubmit-unknown to submit them again (which may pay twice)."
        )


def _print_table(rows: Sequence[Row], *, rich: bool) -> None:
    header = ("#", "line", "task id", "status", "file / error")
    lines = [
        (str(r.index), str(r.line), r.task_id or "-", r.status, _outcome_text(r)) for r in rows
    ]
    if rich and _print_rich_table(header, lines):
        return
    widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header) - 1)]
    for row in (header, *lines):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def _print_rich_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> bool:
    """Draw the table with rich on a terminal; ``False`` when rich is missing or no terminal."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return False
    console = Console()
    if not console.is_terminal:
        return False
    table = Table(*header, title="batch summary")
    styles = {SUCCEEDED: "green", UNKNOWN: "yellow"}
    for line in lines:
        table.add_row(*line, style=styles.get(line[3], "red"))
    console.print(table)
    return True


def _outcome_text(row: Row) -> str:
    if row.status == SUCCEEDED:
        return row.file or ""
    return f"{row.error_code or '-'}: {row.error_message or '-'}"


def _note_text(row: Row, width: int, note: str) -> str:
    where = f" ({note})" if note else ""
    return f"#{row.index:0{width}d} {row.task_id or '-'} {row.status}{where}: {_outcome_text(row)}"


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the directory {path}: {exc.strerror or exc}"
        raise CLIError(msg, code=ExitCode.USAGE) from None


def _exit_code(run: BatchRun, results: Path, ctx: Context) -> int:
    """Report what went wrong in one line on stderr, and the exit code it deserves."""
    rows = run.rows()
    fatal = run.fatal_error()
    if fatal is not None:
        ctx.error(f"error: the batch stopped: {describe(fatal)}")
        return ExitCode.CONFIG
    bad = [row for row in rows if row.status != SUCCEEDED]
    if bad:
        n = len(bad)
        ctx.error(f"error: {n} of {len(rows)} items produced no video; see {results}")
        return ExitCode.FAILED
    return ExitCode.OK
