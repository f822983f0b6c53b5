"""Ctrl-C in ``wan-async batch``: the results file still names every task that was paid for.

A child process runs the batch against a FakeGateway this test serves (so the gateway's own
record of the tasks it created outlives the child), and gets a real SIGINT.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from wan_async import VideoRequest, WanClient
from wan_async._cli._batch import BatchRun
from wan_async._cli._display import NullDisplay
from wan_async._cli._inputs import Item
from wan_async._journal import recorded_submits
from wan_async.testing import FakeGateway, Fault, ScaledClock

from .conftest import SCALE, fixed_processing
from .test_cli import KEY, clean_env, cli, results

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX"),
]

PROMPTS = ["a paper boat", "a red fox", "neon koi", "honey dripping"]


@pytest.fixture
async def slow_gw() -> AsyncIterator[FakeGateway]:
    """A simulator whose tasks take a simulated day: none ends while the batch runs."""
    async with FakeGateway(
        api_key=KEY, clock=ScaledClock(SCALE), slots=4, processing_time=fixed_processing(86_000)
    ) as gateway:
        yield gateway


def journal_events(path: Path) -> list[dict[str, object]]:
    """The journal's lines after its header (none if there is no journal yet)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[1:]
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:  # a line being written right now
            break
    return events


def submitted_ids(journal: Path) -> dict[int, str]:
    """Item index -> task id, for every ``submitted`` line of the journal."""
    return {
        int(str(e["i"])): str(e["task_id"])
        for e in journal_events(journal)
        if e["event"] == "submitted"
    }


async def interrupt_batch_when(
    gw: FakeGateway,
    tmp_path: Path,
    ready: Callable[[Path], bool],
    *extra: str,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the batch in a child, send SIGINT once ``ready(journal)``; its result and out dir."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "videos"
    argv = [
        *cli(), "batch", str(prompts), "--out-dir", str(out), "--base-url", gw.base_url,
        "--api-key", KEY, "--progress", "plain", *extra,
    ]  # fmt: skip

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell's background jobs ignore SIGINT; a terminal's Ctrl-C reaches the default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    child = await anyio.to_thread.run_sync(start)
    journal = out / "journal.jsonl"
    try:
        with anyio.fail_after(30):
            while True:  # the child and the files it writes cannot notify us: look often
                if ready(journal):
                    break
                assert child.poll() is None, child.communicate()
                await anyio.sleep(0.02)
        child.send_signal(signal.SIGINT)
        stdout, stderr = await anyio.to_thread.run_sync(lambda: child.communicate(timeout=30))
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    done = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
    return done, out


async def test_an_interrupted_batch_records_the_task_id_of_every_item_sent(
    slow_gw: FakeGateway, tmp_path: Path
) -> None:
    """After Ctrl-C, results.jsonl carries the task id of each task the gateway created.

    The tasks were submitted but not yet polled (the poller checks a task only when it may
    have ended), so only the journal knew their ids.
    """
    done, out = await interrupt_batch_when(
        slow_gw, tmp_path, lambda journal: len(submitted_ids(journal)) == 2, "--concurrency", "2"
    )
    assert done.returncode == 130, done.stderr
    rows = results(out / "results.jsonl")
    created = {task.prompt: task.task_id for task in slow_gw.tasks()}
    assert len(created) == 2
    by_prompt = {row["prompt"]: row for row in rows}
    for prompt, task_id in created.items():
        assert by_prompt[prompt]["task_id"] == task_id
        assert by_prompt[prompt]["status"] == "interrupted"
    ids = submitted_ids(out / "journal.jsonl")
    assert {int(str(r["index"])): r["task_id"] for r in rows if r["task_id"]} == ids
    assert [r["task_id"] for r in rows if r["prompt"] not in created] == [None, None]


async def test_an_interrupted_resumed_batch_still_records_its_task_ids(
    slow_gw: FakeGateway, tmp_path: Path
) -> None:
    """Interrupted again after resuming: the re-attached items keep their task ids."""
    first, out = await interrupt_batch_when(
        slow_gw, tmp_path, lambda journal: len(submitted_ids(journal)) == 2, "--concurrency", "2"
    )
    assert first.returncode == 130, first.stderr
    (out / "results.jsonl").unlink()  # as if the first run had died with kill -9
    gets = sum(slow_gw.stats.gets_per_task.values())

    def polling_again(journal: Path) -> bool:
        # The rerun re-attaches both tasks (no new submit): it runs once it checks on them.
        return sum(slow_gw.stats.gets_per_task.values()) > gets

    second, _ = await interrupt_batch_when(slow_gw, tmp_path, polling_again, "--concurrency", "2")
    assert second.returncode == 130, second.stderr
    assert "resuming from" in second.stdout
    rows = results(out / "results.jsonl")
    created = {task.prompt: task.task_id for task in slow_gw.tasks()}
    assert len(created) == 2  # nothing submitted twice
    assert {r["prompt"]: r["task_id"] for r in rows if r["task_id"]} == created


async def test_a_submit_on_the_wire_at_ctrl_c_is_recorded_with_its_task_id(
    slow_gw: FakeGateway, tmp_path: Path
) -> None:
    """Ctrl-C while a submit awaits its answer: the task it created is in the results."""
    slow_gw.inject(Fault.SLOW, on="submit", delay=2.0)  # the first submit hangs 2 real s

    def one_sent_one_hanging(journal: Path) -> bool:
        hanging = slow_gw.stats.faults.get(("submit", Fault.SLOW), 0) == 1
        return hanging and len(submitted_ids(journal)) == 1

    done, out = await interrupt_batch_when(
        slow_gw, tmp_path, one_sent_one_hanging, "--concurrency", "2"
    )
    assert done.returncode == 130, done.stderr
    with anyio.fail_after(10):
        while True:  # the gateway creates the task once the delay is over
            if len(slow_gw.tasks()) == 2:
                break
            await anyio.sleep(0.05)
    created = {task.prompt: task.task_id for task in slow_gw.tasks()}
    rows = {row["prompt"]: row for row in results(out / "results.jsonl")}
    for prompt, task_id in created.items():
        assert rows[prompt]["task_id"] == task_id


def test_the_journal_tells_which_items_were_sent_and_their_ids(tmp_path: Path) -> None:
    """Sent items with their ids; a submit never answered as None; refused ones not at all."""
    journal = tmp_path / "journal.jsonl"
    lines = [
        {"event": "batch", "version": 1, "fingerprints": ["a", "b", "c", "d"]},
        {"event": "submitting", "i": 0, "fp": "a", "at": 1.0},
        {"event": "submitting", "i": 1, "fp": "b", "at": 1.0},
        {"event": "submitting", "i": 2, "fp": "c", "at": 1.0},
        {"event": "submitted", "i": 0, "task_id": "task_a"},
        {"event": "refused", "i": 2, "error": "HTTP 429"},
        {"event": "finished", "i": 3, "task_id": "task_d", "status": "SUCCESS"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"event": "subm'
    journal.write_text(text)
    assert recorded_submits(journal) == {0: "task_a", 1: None, 3: "task_d"}
    assert recorded_submits(tmp_path / "missing.jsonl") == {}


async def test_an_item_cut_off_mid_submit_is_reported_unknown_not_unsent() -> None:
    """Sent and never answered: ``unknown`` (a task may exist), not ``interrupted``."""
    items = [
        Item(line=n, request=VideoRequest(prompt=p, model="wan2.6-t2v"))
        for n, p in enumerate(PROMPTS, 1)
    ]
    client = WanClient(api_key=KEY, base_url="http://127.0.0.1:9")  # never used to send
    run = BatchRun(client, items, out_dir=Path("videos"), display=NullDisplay())
    run.learn_submits({0: "task_a", 1: None})
    rows = run.rows()
    assert [(r.status, r.task_id) for r in rows] == [
        ("interrupted", "task_a"),
        ("unknown", None),
        ("interrupted", None),
        ("interrupted", None),
    ]
    assert rows[1].error_code == "SubmitOutcomeUnknown"
