"""What every command gets: where to connect, how to show progress, what to say if interrupted."""

from __future__ import annotations

import sys
from collections.abc import Callable

import attrs

from ._connect import Connection
from ._display import Display, ProgressMode, make_display


@attrs.define(kw_only=True)
class Context:
    """The parsed global options of one invocation, and its state for the error report."""

    connection: Connection
    progress: ProgressMode = "auto"
    quiet: bool = False
    #: What to tell the user if Ctrl-C stops the command now (e.g. how to resume).
    interrupt_hint: str | None = None
    #: Masks the API key in text about to be printed (a last line of defence).
    redact: Callable[[str], str] = attrs.field(default=str, repr=False)

    def display(self) -> Display:
        """The progress display this invocation asked for."""
        return make_display("none" if self.quiet else self.progress)

    def say(self, text: str) -> None:
        """Print an informational line on stdout (silent under ``--quiet``)."""
        if not self.quiet:
            print(self.redact(text), flush=True)

    def error(self, text: str) -> None:
        """Print an error line on stderr (also under ``--quiet``)."""
        print(self.redact(text), file=sys.stderr, flush=True)
