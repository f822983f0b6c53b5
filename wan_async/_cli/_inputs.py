"""What to generate: requests from options and from a prompts file, all checked up front.

A prompts file is one of three formats, told by its extension or by ``--format``:

- ``txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped;
- ``jsonl`` (also ``.ndjson``): one JSON object per line, a prompt and any request field;
- ``json``: one JSON array of request objects or prompt strings (mixed if you like).

Any other extension is refused: guessing would turn each line of a CSV or of a JSON array
into a paid task. A UTF-8 byte-order mark and Windows line endings are fine in all three.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from .._exceptions import Problem, ValidationError
from .._models import VideoRequest
from .._rules import MODEL_RULES, SHOT_TYPES
from ._errors import CLIError, ExitCode

DEFAULT_MODEL = "wan2.6-t2v"
#: Every field a request has, taken from the model so a new field needs no CLI change.
REQUEST_FIELDS: tuple[str, ...] = tuple(field.name for field in attrs.fields(VideoRequest))

Format = Literal["txt", "jsonl", "json"]
FORMATS: tuple[Format, ...] = ("txt", "jsonl", "json")
#: The extensions each format is recognised by (compared in lower case).
SUFFIXES: Mapping[str, Format] = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
FORMATS_HELP = (
    ".txt (one prompt per line), .jsonl or .ndjson (one JSON request object per line), "
    ".json (a JSON array of request objects or prompt strings)"
)
#: The command-line flag of each request field (``None``: the positional prompt).
FLAGS: Mapping[str, str] = {
    "prompt": "PROMPT",
    "model": "--model",
    "negative_prompt": "--negative-prompt",
    "audio_url": "--audio-url",
    "size": "--size",
    "duration": "--duration",
    "prompt_extend": "--no-prompt-extend",
    "watermark": "--watermark",
    "seed": "--seed",
    "audio": "--audio",
    "shot_type": "--shot-type",
}
_BOOLEAN_FIELDS = frozenset({"prompt_extend", "watermark", "audio"})
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
#: What a file that is not UTF-8 starts with when a Windows editor saved it as "Unicode".
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@attrs.frozen(kw_only=True)
class Item:
    """One request of a prompts file, and the line it starts on."""

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


def request_from_options(fields: Mapping[str, Any]) -> VideoRequest:
    """A request from command-line options, its problems named by their flags.

    Raises:
        CLIError: (exit 3) every broken rule at once; nothing was sent.
    """
    try:
        return build_request(fields)
    except ValidationError as exc:
        problems = "; ".join(option_problem(p, fields) for p in exc.problems)
        msg = f"invalid request options for model {exc.model!r}, nothing was sent: {problems}"
        raise CLIError(msg, code=ExitCode.INVALID) from None


def option_problem(problem: Problem, fields: Mapping[str, Any]) -> str:
    """One broken rule in the words of the command line: ``--size '1*1': one of ...``."""
    flag = FLAGS.get(problem.field, problem.field)
    value = problem.value
    shown = shlex.quote(value) if isinstance(value, str) and problem.field != "prompt" else value
    if _needs_prompt_extend(problem, fields):
        return f"{flag} {shown}: only with prompt extension on (drop --no-prompt-extend)"
    return f"{flag} {shown}: {problem.allowed}"


def json_problem(problem: Problem, fields: Mapping[str, Any]) -> str:
    """One broken rule in the words of a JSON file (``true``, not Python's ``True``)."""
    if _needs_prompt_extend(problem, fields):
        return f'{problem}: only with "prompt_extend": true (or left out)'
    if problem.field in _BOOLEAN_FIELDS:
        return f"{problem.field}={json.dumps(problem.value)}: true or false"
    return str(problem)


def _needs_prompt_extend(problem: Problem, fields: Mapping[str, Any]) -> bool:
    """Whether ``problem`` is a valid shot type refused only because prompt_extend is off."""
    rules = MODEL_RULES.get(str(fields.get("model")))
    return (
        problem.field == "shot_type"
        and problem.value in SHOT_TYPES
        and fields.get("prompt_extend") is False
        and rules is not None
        and rules.shot_type
        and rules.shot_type_needs_prompt_extend
    )


def file_format(path: Path, forced: str | None = None) -> Format:
    """The format of a prompts file: ``forced`` (``--format``), else told by its extension.

    Raises:
        CLIError: (exit 3) the extension names no accepted format and none was forced.
    """
    if forced is not None:
        if forced not in FORMATS:
            msg = f"unknown --format {forced!r}; choose one of {', '.join(FORMATS)}"
            raise CLIError(msg, code=ExitCode.USAGE)
        return forced
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        what = f"the extension {path.suffix!r}" if path.suffix else "no extension"
        msg = (
            f"{path} has {what}, so its format is unknown and nothing was submitted; "
            f"accepted: {FORMATS_HELP}; rename the file, or say what it holds with "
            f"--format {{{','.join(FORMATS)}}}"
        )
        raise CLIError(msg, code=ExitCode.INVALID)
    return found


def load_items(path: Path, defaults: Mapping[str, Any], *, fmt: str | None = None) -> list[Item]:
    """Read and check a whole prompts file before anything is sent.

    Args:
        path: the file, in one of :data:`FORMATS`.
        defaults: request fields from the command line; a JSON object's own fields win.
        fmt: the format, overriding the extension (``--format``).

    Raises:
        CLIError: the format is unknown, the file cannot be read, holds no prompt, or has
            invalid entries (all of them listed, by line number or array index); nothing is
            submitted then.
    """
    form = file_format(path, fmt)
    text = _read(path)
    if form == "json":
        entries, unit = _json_entries(path, text), "item"
    else:
        entries, unit = _line_entries(text, json_lines=form == "jsonl"), "line"
    if any(isinstance(value, str) for _, _, value in entries):
        _check_defaults(defaults)  # a bare prompt cannot override them: report them once
    items: list[Item] = []
    invalid: list[str] = []
    for where, line, value in entries:
        request, problems = _entry_request(value, defaults)
        if request is None:
            invalid.append(f"{where}: " + "; ".join(problems))
        else:
            items.append(Item(line=line, request=request))
    if invalid:
        n = len(invalid)
        msg = f"{path}: {n} invalid {unit}{'s' if n != 1 else ''}; nothing was submitted"
        raise CLIError(msg, code=ExitCode.INVALID, details=invalid)
    if not items:
        skipped = " (blank lines and # comments are skipped)" if form == "txt" else ""
        msg = f"{path} holds no prompt{skipped}"
        raise CLIError(msg, code=ExitCode.INVALID)
    return items


#: One entry of a file: where it is (for messages), its line, and a prompt or a JSON value.
Entry = tuple[str, int, Any]


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise CLIError(msg, code=ExitCode.INVALID) from None
    if raw.startswith(_UTF16_BOMS):
        msg = f"cannot read {path}: it is UTF-16 text; save it as UTF-8"
        raise CLIError(msg, code=ExitCode.INVALID)
    try:
        # utf-8-sig drops the byte-order mark some editors put first.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        msg = f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise CLIError(msg, code=ExitCode.INVALID) from None


def _content_lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines worth reading: neither blank nor a ``#`` comment.

    Lines end at ``\\n`` only (a ``\\r`` before it is dropped): ``str.splitlines`` would
    also split a prompt at the Unicode separators a JSON string may hold.
    """
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _line_entries(text: str, *, json_lines: bool) -> list[Entry]:
    entries: list[Entry] = []
    for number, line in _content_lines(text):
        value: Any = line
        if json_lines:
            try:
                value = _loads(line)
            except json.JSONDecodeError as exc:
                value = _Broken(f"not JSON ({exc.msg} at column {exc.colno})")
            except ValueError as exc:
                value = _Broken(f"not JSON ({exc})")
            if not isinstance(value, (dict, _Broken)):
                value = _Broken(f"not a JSON object (got {_json_type(value)})")
        entries.append((f"line {number}", number, value))
    return entries


def _json_entries(path: Path, text: str) -> list[Entry]:
    """The elements of a ``.json`` file's array, each with the line it starts on."""
    try:
        document = _loads(text)
    except json.JSONDecodeError as exc:
        msg = (
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "nothing was submitted"
        )
        raise CLIError(msg, code=ExitCode.INVALID) from None
    except ValueError as exc:
        msg = f"{path} is not valid JSON ({exc}); nothing was submitted"
        raise CLIError(msg, code=ExitCode.INVALID) from None
    if not isinstance(document, list):
        msg = (
            f"{path} holds a JSON {_json_type(document)}; a .json prompts file holds one array "
            'of request objects or prompt strings, e.g. ["a cat", {"prompt": "a dog"}]'
        )
        raise CLIError(msg, code=ExitCode.INVALID)
    lines = _element_lines(text, len(document))
    return [
        (f"item {index} (line {line})", line, value)
        for index, (line, value) in enumerate(zip(lines, document, strict=True))
    ]


def _element_lines(text: str, count: int) -> list[int]:
    """The line each element of the (already parsed) top-level array starts on."""
    decoder = json.JSONDecoder()
    lines: list[int] = []
    position = _skip_space(text, 0) + 1  # past the "["
    line, counted = 1, 0
    for _ in range(count):
        position = _skip_space(text, position)
        line += text.count("\n", counted, position)
        counted = position
        lines.append(line)
        _, position = decoder.raw_decode(text, position)
        position = _skip_space(text, position) + 1  # past the "," (or the closing "]")
    return lines


def _skip_space(text: str, position: int) -> int:
    """The position of the first character at or after ``position`` that is not JSON space."""
    found = _JSON_SPACE.match(text, position)
    return found.end() if found else position


class _Broken:
    """An entry that is not even a value to check; says why."""

    def __init__(self, why: str) -> None:
        self.why = why


def _loads(text: str) -> Any:
    """Strict JSON: ``NaN`` and ``Infinity`` are JavaScript, not JSON."""
    return json.loads(text, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    msg = f"{name} is not a JSON value"
    raise ValueError(msg)


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _entry_request(
    value: Any, defaults: Mapping[str, Any]
) -> tuple[VideoRequest | None, Sequence[str]]:
    """The request an entry asks for, or every reason it cannot be sent."""
    if isinstance(value, _Broken):
        return None, [value.why]
    if isinstance(value, str):
        fields = {**defaults, "prompt": value}
        return _request_or_problems(fields, json_words=False)
    if not isinstance(value, dict):
        return None, [f"not a request object or a prompt string (got {_json_type(value)})"]
    problems: list[str] = []
    unknown = sorted(set(value) - set(REQUEST_FIELDS))
    if unknown:
        known = ", ".join(REQUEST_FIELDS)
        problems.append(
            f"unknown field{'s' if len(unknown) > 1 else ''} {unknown} (known: {known})"
        )
    if "prompt" not in value:
        problems.append("prompt: missing (every entry needs one)")
    # A stand-in prompt lets the other fields be checked too, so every problem shows at once.
    fields = {"prompt": "(missing)", **defaults}
    fields.update((key, value[key]) for key in value if key in REQUEST_FIELDS)
    request, more = _request_or_problems(fields, json_words=True)
    problems.extend(more)
    return (None if problems else request), problems


def _check_defaults(defaults: Mapping[str, Any]) -> None:
    """Report bad options once, not once per prompt (a bare prompt cannot override them)."""
    fields = {**defaults, "prompt": "probe"}
    try:
        build_request(fields)
    except ValidationError as exc:
        problems = "; ".join(option_problem(p, fields) for p in exc.problems)
        msg = "invalid request options, nothing was submitted: " + problems
        raise CLIError(msg, code=ExitCode.INVALID) from None


def _request_or_problems(
    fields: Mapping[str, Any], *, json_words: bool
) -> tuple[VideoRequest | None, list[str]]:
    try:
        return build_request(fields), []
    except ValidationError as exc:
        say = json_problem if json_words else (lambda p, f: str(p))
        return None, [say(p, fields) for p in exc.problems]
    except TypeError as exc:  # a value of a type the rules cannot even compare
        return None, [f"invalid value ({exc})"]
