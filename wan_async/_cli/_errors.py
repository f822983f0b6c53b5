"""Exit codes, and how an error becomes one readable line and one of them."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from .._exceptions import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    JournalError,
    ModelNotFoundError,
    PermissionDeniedError,
    TaskFailed,
    ValidationError,
)


class ExitCode(enum.IntEnum):
    """What the process's exit status tells a script (see the ``--help`` epilog)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INVALID = 3
    CONFIG = 4
    API = 5
    INTERRUPTED = 130


EPILOG = """\
exit codes:
  0    all good
  1    some batch items failed or are unknown; the task failed (generate, wait)
  2    usage error (bad options)
  3    invalid input: request fields, prompts file, task id, another batch's journal
  4    authentication, permission or configuration (no key, 401, 403, no channel)
  5    other API or network errors (the gateway, the connection, a download)
  130  interrupted (Ctrl-C); a batch's journal keeps it resumable

The API key comes from --api-key, else $WAN_API_KEY; the gateway from --base-url, else
$WAN_BASE_URL. Try it offline first:
  wan-async batch --simulate examples/prompts.txt --out-dir videos
"""

#: Errors that say the key, its permissions or the client's settings are wrong.
_CONFIG_ERRORS = (
    ConfigurationError,
    AuthenticationError,
    PermissionDeniedError,
    ModelNotFoundError,
)


class CLIError(Exception):
    """An error the CLI reports as a line (plus detail lines) with its own exit code."""

    def __init__(self, message: str, *, code: ExitCode, details: Sequence[str] = ()) -> None:
        self.code = code
        self.details = tuple(details)
        super().__init__(message)


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code an error ends the process with."""
    if isinstance(exc, CLIError):
        return exc.code
    if isinstance(exc, TaskFailed):
        return ExitCode.FAILED
    if isinstance(exc, _CONFIG_ERRORS):
        return ExitCode.CONFIG
    # A 400 (TaskNotFound included) means what was asked for is wrong, like a bad field.
    if isinstance(exc, (ValidationError, BadRequestError, JournalError)):
        return ExitCode.INVALID
    return ExitCode.API


def describe(exc: BaseException) -> str:
    """The error as one line: the library's own message, with its problems run together."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(str(p) for p in exc.problems)
        return f"invalid request for model {exc.model!r}, nothing was sent: {problems}"
    text = str(exc) or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def error_code(exc: BaseException) -> str:
    """A short machine-readable code for an error (upstream's, the gateway's, or its kind)."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    return type(exc).__name__
