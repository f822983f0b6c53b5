"""What a batch would bill, before anything is sent: ``estimate()`` and ``batch --dry-run``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wan_async import Estimate, EstimateLine, VideoRequest, estimate
from wan_async.testing import FakeGateway, ScaledClock

from .conftest import SCALE
from .test_cli import KEY, run_main

pytestmark = pytest.mark.anyio


@pytest.fixture
async def gw(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeGateway]:
    """A simulator accepting only the CLI tests' key; no gateway settings from the machine."""
    monkeypatch.delenv("WAN_API_KEY", raising=False)
    monkeypatch.delenv("WAN_BASE_URL", raising=False)
    async with FakeGateway(api_key=KEY, clock=ScaledClock(SCALE)) as gateway:
        yield gateway


def test_estimate_counts_tasks_and_seconds_per_model_size_and_duration() -> None:
    """Unset sizes and durations count as the model's defaults; a model without rules
    keeps the gateway's default size and an unknown duration."""
    requests = [
        VideoRequest(prompt="a", model="wan2.6-t2v", size="1280*720", duration=10),
        VideoRequest(prompt="b", model="wan2.6-t2v", size="1280*720", duration=10),
        VideoRequest(prompt="c", model="wan2.6-t2v"),
        VideoRequest(prompt="d", model="wan2.5-t2v-preview", size="832*480", duration=5),
        VideoRequest(prompt="e", model="wan9-t2v"),
    ]
    got = estimate(requests)
    assert got.lines == (
        EstimateLine(model="wan2.5-t2v-preview", size="832*480", duration=5, tasks=1),
        EstimateLine(model="wan2.6-t2v", size="1280*720", duration=10, tasks=2),
        EstimateLine(model="wan2.6-t2v", size="1920*1080", duration=5, tasks=1),
        EstimateLine(model="wan9-t2v", size="default", duration=None, tasks=1),
    )
    assert (got.tasks, got.video_seconds) == (5, 30)
    table = got.table().splitlines()
    assert table[0].split() == ["model", "size", "duration", "tasks", "video", "seconds"]
    assert table[-1].split() == ["total", "5", "30"]
    assert "?" in table[-2]


def test_estimate_refuses_what_is_not_a_request() -> None:
    with pytest.raises(TypeError, match="VideoRequest"):
        estimate(["a prompt"])  # type: ignore[list-item]


@given(st.lists(st.sampled_from([5, 10, 15]), max_size=30))
def test_estimate_totals_add_up(durations: list[int]) -> None:
    """Whatever the mix, the totals are the sums of the requests themselves."""
    requests = [
        VideoRequest(prompt=f"p{i}", model="wan2.6-t2v", duration=d)
        for i, d in enumerate(durations)
    ]
    got = estimate(requests)
    assert isinstance(got, Estimate)
    assert got.tasks == len(durations)
    assert got.video_seconds == sum(durations)


async def test_batch_dry_run_sends_nothing_and_writes_nothing(
    gw: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wan-async batch --dry-run``: the table of what it would bill, validated, and not
    one request to the gateway (by its own counters), no folder, no journal."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a paper boat\na red fox\nneon koi\n")
    out = tmp_path / "videos"
    code = await run_main(
        "batch", str(prompts), "--out-dir", str(out), "--size", "1280*720", "--dry-run",
        "--api-key", KEY, gw=gw,
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "wan2.6-t2v" in printed
    assert "1280*720" in printed
    assert printed.splitlines()[-2].split() == ["total", "3", "15"]
    assert "nothing was sent" in printed
    assert sum(gw.stats.outcomes("submit").values()) == 0
    assert sum(gw.stats.outcomes("get").values()) == 0
    assert not out.exists()


async def test_batch_dry_run_refuses_an_invalid_item_before_anything(
    gw: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An item the model's rules refuse fails the dry run as it would fail the batch."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a paper boat\n")
    code = await run_main(
        "batch", str(prompts), "--out-dir", str(tmp_path / "v"), "--size", "832*480",
        "--dry-run", "--api-key", KEY, gw=gw,
    )  # fmt: skip
    assert code != 0
    assert "832*480" in capsys.readouterr().err
    assert sum(gw.stats.outcomes("submit").values()) == 0
