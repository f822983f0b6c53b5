"""The benchmarks run: smoke runs of the gateway matrix (no timing, no targets checked)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: A guard against a hung run, far above the quick mode's usual 10-20 s.
HANG_GUARD = 600


def table(output: str) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows (as cells) of the Markdown table in ``output``."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    assert len(lines) > 2, output
    header, _rule, *rows = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    return header, rows


def matrix(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/matrix.py`` with ``args``; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "benchmarks/matrix.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_quick_matrix_prints_every_row(tmp_path: Path) -> None:
    """``matrix.py --quick`` completes and prints a naive and a wan_async row per gateway."""
    picture = tmp_path / "matrix.png"
    done = matrix("--quick", "--plot", str(picture))
    header, rows = table(done.stdout)
    gateways = list(dict.fromkeys(row[0] for row in rows))
    assert len(gateways) == 3
    assert [(row[0], row[1]) for row in rows] == [
        (gateway, client) for gateway in gateways for client in ("naive", "wan_async")
    ]
    for row in rows:
        assert len(row) == len(header), row
        assert all(row), row
        assert re.fullmatch(r"\d+/\d+(, \d+ open)?", row[3]), row
    if importlib.util.find_spec("matplotlib") is None:
        assert "picture skipped: matplotlib is not installed" in done.stdout
    else:
        assert picture.read_bytes().startswith(b"\x89PNG")


def test_realtime_row_prints_its_compressed_tick() -> None:
    """The real-time row, run alone on 4 tasks, prints both clients with the compressed tick."""
    done = matrix("--quick", "--gateways", "realtime", "--tasks", "4", "--no-plot")
    header, rows = table(done.stdout)
    label = "real-time client, gateway compressed x100 (tick 0.15 s)"
    assert [(row[0], row[1]) for row in rows] == [(label, "naive"), (label, "wan_async")]
    for row in rows:
        assert len(row) == len(header), row
        assert row[header.index("period s")] == "0.15", row
        assert re.fullmatch(r"\d+/\d+(, \d+ open)?", row[3]), row


def test_fleet_benchmark_prints_every_row() -> None:
    """``fleet.py`` on a small fleet completes and prints its five rows (it starts its own
    redis-server: skipped where there is none, except under CI)."""
    from .conftest import REDIS_SERVER

    if REDIS_SERVER is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing")
        pytest.skip("redis-server is not installed")
    done = subprocess.run(
        [sys.executable, "benchmarks/fleet.py", "--tasks", "40", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    header, rows = table(done.stdout)
    assert [row[0] for row in rows] == [
        "1 process",
        "2 workers, no store",
        "2 workers, Redis",
        "2 workers, Redis, kill -9 one",
        "2 hosts, one journaled batch of 200",
    ]
    for row in rows:
        assert len(row) == len(header), row
        assert row[2] == "0", row  # no duplicates
