"""Exit codes, and how an error becomes one readable line and one of them."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence

from .._config import API_KEY_ENV
from .._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchAborted,
    ClientClosedError,
    ConfigurationError,
    JournalError,
    ModelNotFoundError,
    PermissionDeniedError,
    TaskFailed,
    ValidationError,
    VideoURLExpired,
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
  2    usage error (bad options, an --out that cannot be written, a simulator setting)
  3    invalid input: request fields, prompts file (or its format), task id, another
       batch's journal
  4    authentication, permission or configuration (no key, 401, 403, no channel for
       the model, a bad --base-url)
  5    other API or network errors (the gateway, the connection, a download)
  130  interrupted (Ctrl-C); a batch's journal keeps it resumable

The API key comes from --api-key, else $WAN_API_KEY; the gateway from --base-url, else
$WAN_BASE_URL. Quote what the shell would expand: --size '1280*720'. Try it offline first:
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


def leaf_error(exc: BaseException) -> BaseException:
    """The one error inside nested single-error groups (task groups wrap what they raise)."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if not (isinstance(inner, tuple) and len(inner) == 1):
            return exc
        if not isinstance(inner[0], BaseException):
            return exc
        exc = inner[0]


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
    """The error as one line, with advice in the command line's words.

    The library's messages advise Python callers (``api_key=``, ``attach()``); where they do,
    the advice is rebuilt here from the error's type and fields, naming the command's flags,
    commands and environment variables instead.
    """
    if isinstance(exc, ValidationError):
        problems = "; ".join(str(p) for p in exc.problems)
        return f"invalid request for model {exc.model!r}, nothing was sent: {problems}"
    if isinstance(exc, AuthenticationError):
        return (
            f"{api_said(exc)}; the gateway refused the API key: check --api-key, or the "
            f"{API_KEY_ENV} environment variable"
        )
    if isinstance(exc, ModelNotFoundError):
        return (
            f"{api_said(exc)}; the gateway serves no such model: check --model (or the "
            '"model" fields of the prompts file)'
        )
    if isinstance(exc, BatchAborted):
        after = f" after {type(exc.cause).__name__}" if exc.cause is not None else ""
        return f"the batch stopped{after}; {collect_hint(exc.task_id)}"
    if isinstance(exc, VideoURLExpired):
        where = f" of task {exc.task_id}" if exc.task_id else ""
        again = f"wan-async status {exc.task_id}" if exc.task_id else "wan-async status TASK_ID"
        return (
            f"the signed video URL{where} was refused by the storage host (HTTP {exc.status}): "
            f"video URLs are valid for 24 h after the task finished; `{again}` shows the "
            "URL the gateway has now, or generate the video again"
        )
    if isinstance(exc, ClientClosedError):
        return "the connection to the gateway closed before the task ended"
    return _one_line(str(exc) or type(exc).__name__)


def collect_hint(task_id: str | None) -> str:
    """What became of a task cut short, and the command that collects it."""
    if task_id is None:
        return "it was never submitted"
    return f"task {task_id} goes on upstream; collect it with: wan-async wait {task_id}"


def api_said(exc: APIError) -> str:
    """What the server answered (request, status, code, message, request id), no advice."""
    parts = [f"{exc.method} {exc.path} -> HTTP {exc.status}"]
    if exc.code:
        parts.append(f"code={exc.code}")
    if exc.message:
        parts.append(f"message={_one_line(exc.message)!r}")
    elif exc.snippet:
        parts.append(f"body={_one_line(exc.snippet)[:200]!r}")
    if exc.request_id:
        parts.append(f"request_id={exc.request_id}")
    return " ".join(parts)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def error_code(exc: BaseException) -> str:
    """A short machine-readable code for an error: upstream's, else the gateway's, else the
    HTTP status, else the error's kind."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        # The gateway relays upstream's refusal as its message: {"code": "InvalidParameter"}.
        return _upstream_code(getattr(exc, "message", None)) or code
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    return type(exc).__name__


def _upstream_code(message: object) -> str | None:
    """Upstream's own code, when the gateway's message is upstream's JSON answer."""
    if not isinstance(message, str) or not message.lstrip().startswith("{"):
        return None
    try:
        said = json.loads(message)
    except ValueError:
        return None
    code = said.get("code") if isinstance(said, dict) else None
    return code if isinstance(code, str) and code else None
