"""Progress on stderr: drawn with rich when it is installed and stderr is a terminal, else plain
lines (a log, a CI job, a pipe), or nothing under ``--quiet``.

Displays are fed from the event loop only (views are computed there and handed over whole),
so rich's refresh thread never reads state the loop is changing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

import attrs

from ._errors import CLIError, ExitCode

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.spinner import Spinner

ProgressMode = Literal["auto", "rich", "plain", "none"]
#: Plain progress lines: at most one per this many seconds while counts change...
_PLAIN_MIN_GAP = 2.0
#: ...and one at least this often while nothing changes, to show the command is alive.
_PLAIN_MAX_GAP = 30.0


@attrs.frozen(kw_only=True)
class BatchView:
    """Where a batch stands, for one redraw."""

    total: int
    done: int
    failed: int
    unknown: int
    running: int
    queued: int
    #: Tasks created and not checked since: upstream may queue, run or have finished them.
    unchecked: int
    #: Submits on the wire.
    submitting: int
    waiting: int
    downloading: int
    elapsed: float
    eta: float | None
    submits: int
    polls: int

    @property
    def ended(self) -> int:
        """Items that ended, however they ended."""
        return self.done + self.failed + self.unknown

    def counts(self) -> str:
        """The counts per state, e.g. ``done 3, failed 1, ..., waiting 2``."""
        parts = [
            f"done {self.done}",
            f"failed {self.failed}",
            f"unknown {self.unknown}",
            f"running {self.running}",
            f"queued {self.queued}",
            f"not yet checked {self.unchecked}",
            f"waiting {self.waiting}",
        ]
        if self.submitting:
            parts.insert(-1, f"submitting {self.submitting}")
        if self.downloading:
            parts.append(f"downloading {self.downloading}")
        return ", ".join(parts)

    def requests(self) -> str:
        """Requests spent so far."""
        n = self.submits + self.polls
        return f"{n} requests ({self.submits} submits, {self.polls} status checks)"

    def eta_text(self) -> str:
        """The estimated time left, or ``--`` before any task ended (nothing learned yet)."""
        return "--" if self.eta is None else format_seconds(self.eta)


class Display(Protocol):
    """Somewhere to show progress: rich, plain lines, or nowhere."""

    def __enter__(self) -> Display: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def note(self, text: str) -> None:
        """Show one event (a task submitted, an item ended) as a line of its own."""

    def status(self, text: str, elapsed: float) -> None:
        """Show how a single task is doing (replaces the previous status)."""

    def batch(self, view: BatchView) -> None:
        """Show how a batch is doing (replaces the previous view)."""


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def make_display(mode: ProgressMode) -> Display:
    """The display for ``mode``; ``auto`` picks rich on a terminal when it is installed.

    Raises:
        CLIError: ``rich`` was asked for and is not installed.
    """
    if mode == "none":
        return NullDisplay()
    if mode == "plain":
        return PlainDisplay()
    console = _rich_console(force=mode == "rich")
    if console is None:
        if mode == "rich":
            msg = "--progress rich needs the rich package: pip install 'wan-async[cli]'"
            raise CLIError(msg, code=ExitCode.CONFIG)
        return PlainDisplay()
    if mode == "auto" and not console.is_terminal:
        return PlainDisplay()
    return RichDisplay(console)


def _rich_console(*, force: bool) -> Console | None:
    """A rich console on stderr, or ``None`` without rich."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(stderr=True, force_terminal=True if force else None)


_D = TypeVar("_D", bound="_NothingToSetUp")


class _NothingToSetUp:
    """A display with nothing to start or stop around its use."""

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class NullDisplay(_NothingToSetUp):
    """Shows nothing (``--quiet``)."""

    def note(self, text: str) -> None:
        """Show nothing."""

    def status(self, text: str, elapsed: float) -> None:
        """Show nothing."""

    def batch(self, view: BatchView) -> None:
        """Show nothing."""


class PlainDisplay(_NothingToSetUp):
    """Plain lines on stderr: each event, each status change, batch counts now and then."""

    def __init__(self, *, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._last_status: str | None = None
        self._last_counts: str | None = None
        self._last_at = -float("inf")

    def note(self, text: str) -> None:
        """Print the event."""
        _print_err(text)

    def status(self, text: str, elapsed: float) -> None:
        """Print the status when it differs from the last one printed (not the time)."""
        if text != self._last_status:
            self._last_status = text
            _print_err(text)

    def batch(self, view: BatchView) -> None:
        """Print the counts when they changed (at most every 2 s), else every 30 s."""
        counts = view.counts()
        gap = self._now() - self._last_at
        changed = counts != self._last_counts
        finished = view.ended == view.total and view.downloading == 0
        if (changed and (gap >= _PLAIN_MIN_GAP or finished)) or gap >= _PLAIN_MAX_GAP:
            self._last_counts, self._last_at = counts, self._now()
            _print_err(
                f"[{view.ended}/{view.total}] {counts}; elapsed "
                f"{format_seconds(view.elapsed)}, ETA {view.eta_text()}; {view.requests()}"
            )


class RichDisplay:
    """A live area on a terminal: a spinner with the status, or a batch's bar and counts."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live
        from rich.spinner import Spinner

        self._console = console
        self._spinner: Spinner = Spinner("dots", text="")
        self._live: Live = Live(
            self._spinner, console=console, refresh_per_second=8, transient=False
        )

    def __enter__(self) -> RichDisplay:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()

    def note(self, text: str) -> None:
        """Print the event above the live area."""
        from rich.text import Text

        self._live.console.print(Text(text))

    def status(self, text: str, elapsed: float) -> None:
        """Show the status and the time waited beside the spinner."""
        self._spinner.update(text=f"{text}  {format_seconds(elapsed)}")
        self._live.update(self._spinner)

    def batch(self, view: BatchView) -> None:
        """Show the bar, the counts, the ETA and the requests spent."""
        self._live.update(self._batch_renderable(view))

    def _batch_renderable(self, view: BatchView) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        percent = 100 * view.ended / view.total if view.total else 100.0
        line = Table.grid(padding=(0, 1))
        line.add_row(
            self._spinner,
            Text(f"{view.ended}/{view.total}", style="bold"),
            ProgressBar(total=max(1, view.total), completed=view.ended, width=32),
            Text(f"{percent:3.0f}%"),
            Text(format_seconds(view.elapsed), style="yellow"),
            Text(f"ETA {view.eta_text()}", style="cyan"),
        )
        details = Text(f"  {view.counts()}  |  {view.requests()}", style="dim")
        return Group(line, details)


def _print_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
