"""Prompts files for ``wan-async batch``: the three formats, and everything refused up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wan_async._cli import main
from wan_async._cli._errors import CLIError, ExitCode
from wan_async._cli._inputs import Item, load_items
from wan_async.testing import FakeGateway

from .test_cli import KEY, gw, run_main  # noqa: F401 - gw is a fixture

pytestmark = pytest.mark.anyio

DEFAULTS: dict[str, Any] = {"model": "wan2.6-t2v"}


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    """A prompts file named ``name`` holding exactly ``content``."""
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def prompts(items: list[Item]) -> list[str]:
    """The prompts of ``items``, in order."""
    return [item.request.prompt for item in items]


def refusal(path: Path, **kwargs: Any) -> CLIError:
    """The error loading ``path`` raises (the test fails if it loads)."""
    with pytest.raises(CLIError) as caught:
        load_items(path, DEFAULTS, **kwargs)
    return caught.value


def test_a_json_array_is_one_request_per_element(tmp_path: Path) -> None:
    """A .json array of prompt strings and request objects, mixed: one item each, by line."""
    path = write(
        tmp_path,
        "prompts.json",
        '[\n  "A paper boat",\n  {"prompt": "A red fox", "duration": 10,\n   "seed": 7}\n]\n',
    )
    items = load_items(path, {**DEFAULTS, "size": "1280*720"})
    assert prompts(items) == ["A paper boat", "A red fox"]
    assert [item.line for item in items] == [2, 3]
    assert items[1].request.duration == 10
    assert items[1].request.seed == 7
    assert {item.request.size for item in items} == {"1280*720"}


async def test_batch_of_a_json_array_pays_for_its_prompts_only(
    gw: FakeGateway,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """Two prompts in a JSON array make two tasks, not one per line of the file."""
    path = write(tmp_path, "prompts.json", '[\n  "a cat",\n  "a dog"\n]\n')
    out = tmp_path / "videos"
    assert (
        await run_main("batch", str(path), "--out-dir", str(out), "--api-key", KEY, "-q", gw=gw)
        == 0
    )
    assert gw.stats.tasks_created == 2
    assert dict(gw.stats.tasks_per_prompt) == {"a cat": 1, "a dog": 1}


@pytest.mark.parametrize("name", ["prompts.csv", "prompts", "prompts.md", "prompts.JSONL.bak"])
async def test_an_unknown_extension_is_refused_before_anything_is_sent(
    name: str,
    gw: FakeGateway,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Any extension but .txt/.jsonl/.ndjson/.json exits 3 naming the formats and --format."""
    path = write(tmp_path, name, "prompt,size\na cat,1280*720\n")
    out = tmp_path / "videos"
    code = await run_main("batch", str(path), "--out-dir", str(out), "--api-key", KEY, gw=gw)
    assert code == ExitCode.INVALID
    err = capsys.readouterr().err
    for word in (".txt", ".jsonl", ".json", "--format", "nothing was submitted"):
        assert word in err
    assert gw.stats.tasks_created == 0
    assert not out.exists()


def test_format_overrides_the_extension(tmp_path: Path) -> None:
    """``--format`` reads a file whatever its name: a .csv as text, a .txt as JSON lines."""
    assert prompts(
        load_items(write(tmp_path, "list.csv", "a cat\na dog\n"), DEFAULTS, fmt="txt")
    ) == [
        "a cat",
        "a dog",
    ]
    lines = write(tmp_path, "lines.txt", '{"prompt": "a cat"}\n')
    assert prompts(load_items(lines, DEFAULTS, fmt="jsonl")) == ["a cat"]
    array = write(tmp_path, "array", '["a cat", "a dog"]')
    assert prompts(load_items(array, DEFAULTS, fmt="json")) == ["a cat", "a dog"]


def test_format_is_an_option_of_batch(capsys: pytest.CaptureFixture[str]) -> None:
    """``--format`` takes txt, jsonl or json; anything else is a usage error (exit 2)."""
    assert main(["batch", "p.csv", "--out-dir", "d", "--format", "csv"]) == ExitCode.USAGE
    assert "invalid choice: 'csv'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("prompts.txt", "# two prompts\r\nA paper boat\r\n\r\nA red fox\r\n"),
        ("prompts.jsonl", '{"prompt": "A paper boat"}\r\n\r\n{"prompt": "A red fox"}\r\n'),
        ("prompts.ndjson", '{"prompt": "A paper boat"}\r\n{"prompt": "A red fox"}'),
        ("prompts.json", '[\r\n "A paper boat",\r\n {"prompt": "A red fox"}\r\n]\r\n'),
    ],
)
def test_a_byte_order_mark_and_crlf_line_ends_are_read_in_every_format(
    tmp_path: Path, name: str, content: str
) -> None:
    """A file saved by a Windows editor (BOM, CRLF) gives the same prompts, nothing stray."""
    path = write(tmp_path, name, b"\xef\xbb\xbf" + content.encode())
    assert prompts(load_items(path, DEFAULTS)) == ["A paper boat", "A red fox"]


def test_a_prompt_keeps_unicode_line_separators(tmp_path: Path) -> None:
    """Only a newline ends a line: a prompt holding U+2028 stays one prompt (and one task)."""
    text = "first\u2028still first\nsecond\n"
    assert prompts(load_items(write(tmp_path, "p.txt", text), DEFAULTS)) == [
        "first\u2028still first",
        "second",
    ]
    line = '{"prompt": "one\u2028prompt"}\n'
    assert prompts(load_items(write(tmp_path, "p.jsonl", line), DEFAULTS)) == ["one\u2028prompt"]


def test_every_invalid_element_of_a_json_array_is_listed_by_index(tmp_path: Path) -> None:
    """Bad elements are all reported at once, by array index and line; nothing is sent."""
    path = write(
        tmp_path,
        "prompts.json",
        "[\n"
        '  "fine",\n'
        '  {"prompt": "x", "duration": 7},\n'
        "  42,\n"
        '  {"size": "1280*720"},\n'
        '  ["nested"],\n'
        '  {"prompt": "y", "watermark": "yes"}\n'
        "]\n",
    )
    error = refusal(path)
    assert error.code is ExitCode.INVALID
    assert str(error).endswith("5 invalid items; nothing was submitted")
    details = "\n".join(error.details)
    assert details.startswith("item 1 (line 3): duration=7")
    assert "item 2 (line 4): not a request object or a prompt string (got number)" in details
    assert "item 3 (line 5): prompt: missing" in details
    assert "item 4 (line 6): not a request object or a prompt string (got array)" in details
    assert 'item 5 (line 7): watermark="yes": true or false' in details
    assert "item 0" not in details


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"prompt": "a cat"}', "holds a JSON object"),
        ('["a cat",', "not valid JSON"),
        ('["a cat", NaN]', "NaN is not a JSON value"),
        ("[]", "holds no prompt"),
    ],
)
def test_a_json_file_that_is_not_an_array_of_requests_is_refused(
    tmp_path: Path, content: str, says: str
) -> None:
    """A .json file must hold one array, in strict JSON, with at least one request."""
    error = refusal(write(tmp_path, "prompts.json", content))
    assert error.code is ExitCode.INVALID
    assert says in str(error)


def test_json_lines_are_strict_json(tmp_path: Path) -> None:
    """NaN and Infinity in a JSON line are refused by line number, not read as numbers."""
    path = write(
        tmp_path, "p.jsonl", '{"prompt": "a", "seed": NaN}\n{"prompt": "b", "seed": -Infinity}\n'
    )
    error = refusal(path)
    assert error.details == (
        "line 1: not JSON (NaN is not a JSON value)",
        "line 2: not JSON (-Infinity is not a JSON value)",
    )


def test_a_utf16_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A file saved as UTF-16 ("Unicode" in some editors) is refused, asking for UTF-8."""
    error = refusal(write(tmp_path, "p.txt", "a cat\n".encode("utf-16")))
    assert "save it as UTF-8" in str(error)


def test_bad_options_are_named_by_their_flags(tmp_path: Path) -> None:
    """Options that break a rule are reported once, as flags, before any line is read."""
    path = write(tmp_path, "p.txt", "a cat\na dog\n")
    with pytest.raises(CLIError) as caught:
        load_items(path, {**DEFAULTS, "size": "1*1", "seed": -1})
    error = caught.value
    assert error.code is ExitCode.INVALID
    assert "--size '1*1': " in str(error)
    assert "--seed -1: " in str(error)
