"""What to generate: requests from options and from a prompts file, all checked up front."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._exceptions import ValidationError
from .._models import VideoRequest
from ._errors import CLIError, ExitCode

DEFAULT_MODEL = "wan2.6-t2v"
#: Every field a request has, taken from the model so a new field needs no CLI change.
REQUEST_FIELDS: tuple[str, ...] = tuple(field.name for field in attrs.fields(VideoRequest))
#: Suffixes read as JSON lines; any other file is one prompt per line.
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})


@attrs.frozen(kw_only=True)
class Item:
    """One request of a prompts file, and the line it came from."""

    line: int
    request: VideoRequest


def option_fields(options: object) -> dict[str, Any]:
    """The request fields given as command-line options (those left unset are omitted)."""
    values = {name: getattr(options, name, None) for name in REQUEST_FIELDS}
    fields = {name: value for name, value in values.items() if value is not None}
    fields.setdefault("model", DEFAULT_MODEL)
    return fields


def build_request(fields: Mapping[str, Any]) -> VideoRequest:
    """A request from ``fields``.

    Raises:
        ValidationError: every broken rule at once.
    """
    return VideoRequest(**fields)


def load_items(path: Path, defaults: Mapping[str, Any]) -> list[Item]:
    """Read and check a prompts file: ``.jsonl`` objects, or one prompt per line.

    Args:
        path: the file; blank lines and lines starting with ``#`` are skipped.
        defaults: request fields from the command line; a JSON line's own fields win.

    Raises:
        CLIError: the file cannot be read, holds no prompt, or has invalid lines (all of
            them listed, by line number); nothing is submitted then.
    """
    text = _read(path)
    is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    if not is_jsonl:
        _check_defaults(defaults)
    items: list[Item] = []
    invalid: list[str] = []
    for number, line in _content_lines(text):
        fields, problems = _jsonl_fields(line) if is_jsonl else ({"prompt": line}, [])
        request = None
        if fields is not None:
            request, more = _request_or_problems({**defaults, **fields})
            problems.extend(more)
        if problems or request is None:
            invalid.append(f"line {number}: " + "; ".join(problems))
        else:
            items.append(Item(line=number, request=request))
    if invalid:
        n = len(invalid)
        msg = f"{path}: {n} invalid line{'s' if n != 1 else ''}; nothing was submitted"
        raise CLIError(msg, code=ExitCode.INVALID, details=invalid)
    if not items:
        msg = f"{path} holds no prompt (blank lines and # comments are skipped)"
        raise CLIError(msg, code=ExitCode.INVALID)
    return items


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        msg = f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise CLIError(msg, code=ExitCode.INVALID) from None
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise CLIError(msg, code=ExitCode.INVALID) from None


def _content_lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines worth reading: neither blank nor a ``#`` comment."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _check_defaults(defaults: Mapping[str, Any]) -> None:
    """Report bad options once, not once per prompt (a .txt line cannot override them)."""
    _, problems = _request_or_problems({**defaults, "prompt": "probe"})
    if problems:
        msg = "invalid request options, nothing was submitted: " + "; ".join(problems)
        raise CLIError(msg, code=ExitCode.INVALID)


def _jsonl_fields(line: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The fields of one JSON line, or why it has none usable."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, [f"not JSON ({exc.msg} at column {exc.colno})"]
    if not isinstance(value, dict):
        return None, [f"not a JSON object (got {type(value).__name__})"]
    problems: list[str] = []
    unknown = sorted(set(value) - set(REQUEST_FIELDS))
    if unknown:
        known = ", ".join(REQUEST_FIELDS)
        problems.append(
            f"unknown field{'s' if len(unknown) > 1 else ''} {unknown} (known: {known})"
        )
    if "prompt" not in value:
        problems.append("prompt: missing (every line needs one)")
    fields = {key: value[key] for key in value if key in REQUEST_FIELDS}
    # A stand-in prompt lets the other fields be checked too, so every problem shows at once.
    fields.setdefault("prompt", "(missing)")
    return fields, problems


def _request_or_problems(fields: Mapping[str, Any]) -> tuple[VideoRequest | None, list[str]]:
    try:
        return build_request(fields), []
    except ValidationError as exc:
        return None, [str(p) for p in exc.problems]
    except TypeError as exc:  # a value of a type the rules cannot even compare
        return None, [f"invalid value ({exc})"]
