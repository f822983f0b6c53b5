"""A clone works alone: nothing in the repository reads files from outside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: A path that climbs out of the repository: to the maintainers' read-only ``shared`` folder
#: beside the clone, or above the repository's root with ``parents[2]`` from a file one level down.
_OUTSIDE = re.compile(r"\.\./shared\b|/ *[\"']shared[\"']|parents\[[2-9]\]")


def test_no_file_reads_beside_the_clone() -> None:
    """Tests, library, benchmarks and examples only read what the repository holds."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("tests", "wan_async", "benchmarks", "examples")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if _OUTSIDE.search(line)
    ]
    assert offenders == []


def test_gateway_examples_are_in_the_repository() -> None:
    """The documentation's request and response bodies the tests use are copied in."""
    names = {p.name for p in (ROOT / "tests" / "gateway_examples").glob("*.json")}
    assert names == {
        "submit_request.json",
        "submit_response.json",
        "get_in_progress.json",
        "get_success.json",
        "get_failure.json",
    }
