"""The ``wan-async`` command line, through its real entry points.

End-to-end cases run the installed console script (or ``python -m wan_async``) in a
subprocess; cases that need a gateway the test controls call ``main()`` in a worker thread
while the test's event loop serves a FakeGateway.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from wan_async import BadRequestError, VideoRequest, WanClient
from wan_async._cli import main
from wan_async._cli._errors import error_code
from wan_async.testing import FakeGateway, Fault, ScaledClock

from .conftest import SCALE, fixed_processing

pytestmark = pytest.mark.anyio

#: A key distinctive enough to be found if it leaked into any output.
KEY = "sk-cli-test-9f2c47e1d8b3a6055e7d"
WRONG_KEY = "sk-wrong-key-b7d21c9a4e6f83012"
PROMPTS = """\
# a comment, then a blank line

A paper boat drifting down a rain-soaked street
A red fox trotting through fresh snow
Neon koi in a flooded arcade [fail]
Honey dripping from a wooden dipper
"""


def cli() -> list[str]:
    """The installed console script, else the module (a checkout not installed)."""
    script = Path(sys.executable).with_name("wan-async")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wan_async"]


def clean_env() -> dict[str, str]:
    """The environment without any gateway settings of the machine running the tests."""
    return {k: v for k, v in os.environ.items() if k not in ("WAN_API_KEY", "WAN_BASE_URL")}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end; output captured as text."""
    return subprocess.run(
        [*cli(), *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def results(path: Path) -> list[dict[str, object]]:
    """The lines of a results file, decoded."""
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    """Four prompts (the third refused by the simulated moderation), with a comment."""
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    """A simulator accepting only the distinctive KEY."""
    async with FakeGateway(
        api_key=KEY,
        clock=ScaledClock(SCALE),
        slots=4,
        processing_time=fixed_processing(90.0),
    ) as gateway:
        yield gateway


@pytest.fixture
def no_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs must not pick up the machine's own gateway settings."""
    monkeypatch.delenv("WAN_API_KEY", raising=False)
    monkeypatch.delenv("WAN_BASE_URL", raising=False)


async def run_main(*args: str, gw: FakeGateway) -> int:
    """Run ``main()`` in a worker thread, pointed at ``gw`` and sharing its clock."""
    argv = [*args, "--base-url", gw.base_url]
    return await anyio.to_thread.run_sync(lambda: main(argv, clock=gw.clock))


def test_console_script_help_lists_commands_and_exit_codes(tmp_path: Path) -> None:
    """The installed ``wan-async`` script documents every command and exit code."""
    script = Path(sys.executable).with_name("wan-async")
    assert script.exists(), "pip install -e '.[dev]' installs the wan-async script"
    done = run_cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    for word in ("generate", "batch", "status", "wait", "simulate", "exit codes", "130"):
        assert word in done.stdout


def test_batch_simulate_saves_videos_and_results(prompts: Path, tmp_path: Path) -> None:
    """Offline batch: videos on disk, one results line per prompt, exit 1 for the refused one."""
    out = tmp_path / "videos"
    args = ("batch", "--simulate", str(prompts), "--out-dir", str(out), "--time-scale", "300")
    done = run_cli(*args, "--api-key", KEY, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    rows = results(out / "results.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["line"] for r in rows] == [3, 4, 5, 6]
    assert [r["status"] for r in rows] == ["succeeded", "succeeded", "failed", "succeeded"]
    assert rows[2]["error_code"] == "DataInspectionFailed"
    assert rows[2]["file"] is None
    videos = sorted(out.glob("*.mp4"))
    assert [Path(str(r["file"])) for r in rows if r["file"]] == videos
    assert all(v.stat().st_size > 0 for v in videos)
    assert videos[0].name == f"000-{rows[0]['task_id']}.mp4"
    assert "1 of 4 items produced no video" in done.stderr
    assert KEY not in done.stdout + done.stderr

    # Rerun: everything comes back from the journal; no request, no download again.
    mtimes = [v.stat().st_mtime_ns for v in videos]
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 1
    assert "0 requests (0 submits, 0 status checks)" in again.stdout
    assert [v.stat().st_mtime_ns for v in videos] == mtimes
    assert results(out / "results.jsonl") == rows


def test_generate_simulate_downloads_the_video(tmp_path: Path) -> None:
    """Offline generate prints the task id and the saved path."""
    done = run_cli(
        "generate", "--simulate", "a cat on a skateboard", "--size", "1280*720",
        "--out", "cat.mp4", "--time-scale", "300", "--progress", "plain",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "task id: task_" in done.stdout
    assert "saved: cat.mp4" in done.stdout
    assert (tmp_path / "cat.mp4").stat().st_size > 0


def test_invalid_prompts_file_lists_every_bad_line(tmp_path: Path) -> None:
    """Every invalid line is reported at once, by number, and nothing is submitted (exit 3)."""
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(
        '{"prompt": "fine"}\n'
        '{"prompt": "too short", "duration": 7, "size": "1*1"}\n'
        "\n"
        "not json\n"
        '{"size": "1280*720", "negative-prompt": "typo"}\n'
    )
    out = tmp_path / "videos"
    done = run_cli("batch", "--simulate", str(bad), "--out-dir", str(out), cwd=tmp_path)
    assert done.returncode == 3
    assert "3 invalid lines; nothing was submitted" in done.stderr
    assert "line 2: " in done.stderr
    assert "duration=7" in done.stderr
    assert "size='1*1'" in done.stderr
    assert "line 4: not JSON (Expecting value at column 1)" in done.stderr
    assert "line 5: unknown field ['negative-prompt']" in done.stderr
    assert "prompt: missing" in done.stderr
    assert "line 1:" not in done.stderr
    assert not out.exists()


def test_missing_api_key_exits_4(tmp_path: Path) -> None:
    """Without --simulate and without a key, one error line and exit code 4."""
    done = run_cli("generate", "a cat", "--out", "cat.mp4", cwd=tmp_path)
    assert done.returncode == 4
    assert done.stderr.strip() == (
        "error: no API key: pass --api-key KEY or set the WAN_API_KEY environment variable "
        "(or try it offline with --simulate)"
    )
    assert not (tmp_path / "cat.mp4").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_stops_a_batch_cleanly_with_exit_130(prompts: Path, tmp_path: Path) -> None:
    """Ctrl-C mid-batch: exit 130, no traceback, every item in the results file."""
    out = tmp_path / "videos"
    child = subprocess.Popen(
        [*cli(), "batch", "--simulate", str(prompts), "--out-dir", str(out), "--time-scale", "60"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background jobs ignore SIGINT; a terminal's Ctrl-C reaches the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 30
    while not (journal.exists() and '"submitted"' in journal.read_text()):
        assert time.monotonic() < deadline, "the batch submitted nothing"
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 130, stderr
    assert "interrupted; " in stderr
    assert "Traceback" not in stderr
    rows = results(out / "results.jsonl")
    assert len(rows) == 4
    assert "interrupted" in {r["status"] for r in rows}
    # The simulator held those tasks and is gone: its journal would only mislead a rerun.
    assert not journal.exists()


def test_simulate_serves_the_gateway(tmp_path: Path) -> None:
    """``wan-async simulate`` serves the simulator until stopped."""
    child = subprocess.Popen(
        [*cli(), "simulate", "--port", "0", "--time-scale", "10", "--api-key", "sk-sim"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first.startswith("gateway:"), first
        base_url = first.split()[1]
        request = urllib.request.Request(
            f"{base_url}/v1/video/generations/no-such-task",
            headers={"Authorization": "Bearer sk-sim"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 400
        assert json.loads(caught.value.read())["code"] == "task_not_exist"
    finally:
        child.terminate()
        child.communicate(timeout=10)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's errors (no command, a missing argument, an unknown option) exit 2."""
    assert main([]) == 2
    assert main(["generate"]) == 2
    assert main(["status", "task_x", "--frobnicate"]) == 2
    assert main(["batch", "p.txt", "--out-dir", "d", "--concurrency", "0"]) == 2
    assert "usage: wan-async" in capsys.readouterr().err


async def test_status_and_wait_against_a_gateway(
    gw: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """status (text and --json) and wait (download) on a task submitted elsewhere."""
    async with WanClient(api_key=KEY, base_url=gw.base_url, clock=gw.clock) as client:
        created = await client.create_task(VideoRequest(prompt="look me up", model="wan2.6-t2v"))
    task_id = created.task_id
    gw.finish_now(task_id)
    gw.refresh_now()

    assert await run_main("status", task_id, "--api-key", KEY, gw=gw) == 0
    text = capsys.readouterr().out
    assert f"task       {task_id}" in text
    assert "status     SUCCESS (100%)" in text
    assert "video      http" in text

    assert await run_main("status", task_id, "--json", "--api-key", KEY, gw=gw) == 0
    captured = capsys.readouterr()
    snapshot = json.loads(captured.out)
    assert snapshot["status"] == "SUCCESS"
    assert snapshot["video_url"].startswith(gw.storage_url)

    out = tmp_path / "video.mp4"
    code = await run_main("wait", task_id, "--out", str(out), "--api-key", KEY, gw=gw)
    assert code == 0
    assert out.stat().st_size > 0
    assert f"saved: {out}" in capsys.readouterr().out

    assert await run_main("status", "task_unknown", "--api-key", KEY, gw=gw) == 3
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ")
    assert "task_not_exist" in captured.err
    assert KEY not in captured.out + captured.err + text


async def test_wait_for_a_failed_task_exits_1(
    gw: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """A task that ended in FAILURE: its code in one error line, exit 1, no file."""
    async with WanClient(api_key=KEY, base_url=gw.base_url, clock=gw.clock) as client:
        created = await client.create_task(VideoRequest(prompt="[fail] no", model="wan2.6-t2v"))
    out = tmp_path / "video.mp4"
    code = await run_main("wait", created.task_id, "--out", str(out), "--api-key", KEY, gw=gw)
    assert code == 1
    err = capsys.readouterr().err
    assert f"error: task {created.task_id} failed: code=DataInspectionFailed" in err
    assert not out.exists()


async def test_rejected_key_stops_the_batch_then_a_rerun_runs_it(
    gw: FakeGateway, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 401 exits 4 without leaking either key; fixing the key and rerunning runs it all."""
    out = tmp_path / "videos"
    args = ("batch", str(prompts), "--out-dir", str(out), "--progress", "plain")
    assert await run_main(*args, "--api-key", WRONG_KEY, "--debug", gw=gw) == 4
    captured = capsys.readouterr()
    assert "error: the batch stopped: POST /v1/video/generations -> HTTP 401" in captured.err
    assert "DEBUG wan_async" in captured.err
    assert WRONG_KEY not in captured.out + captured.err
    assert gw.stats.tasks_created == 0
    # Nothing was created, so the journal does not hold the items as "unknown".
    assert not (out / "journal.jsonl").exists()

    assert await run_main(*args, "--api-key", KEY, "--concurrency", "2", gw=gw) == 1
    captured = capsys.readouterr()
    statuses = [r["status"] for r in results(out / "results.jsonl")]
    assert statuses == ["succeeded", "succeeded", "failed", "succeeded"]
    assert max(gw.stats.tasks_per_prompt.values()) == 1
    assert KEY not in captured.out + captured.err


async def test_rich_progress_and_the_plain_fallback(
    gw: FakeGateway,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_gateway_env: None,
) -> None:
    """rich draws when asked; without rich, auto falls back to lines and 'rich' says why."""
    first = ("generate", "a rich cat", "--out", str(tmp_path / "a.mp4"), "--api-key", KEY)
    assert await run_main(*first, "--progress", "rich", gw=gw) == 0
    err = capsys.readouterr().err
    assert "SUCCESS (100%)" in err
    assert "\x1b[" in err  # drawn for a terminal

    for name in ("rich", "rich.console"):
        monkeypatch.setitem(sys.modules, name, None)  # import rich -> ImportError
    second = ("generate", "a plain cat", "--out", str(tmp_path / "b.mp4"), "--api-key", KEY)
    assert await run_main(*second, gw=gw) == 0
    err = capsys.readouterr().err
    assert ": SUCCESS (100%)\n" in err
    assert "\x1b[" not in err
    created = gw.stats.tasks_created
    third = ("generate", "a cat", "--out", str(tmp_path / "c.mp4"), "--api-key", KEY)
    assert await run_main(*third, "--progress", "rich", gw=gw) == 4
    assert "pip install 'wan-async[cli]'" in capsys.readouterr().err
    assert gw.stats.tasks_created == created  # refused before anything was paid for


async def test_an_edited_prompts_file_reruns_only_what_changed(
    gw: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt reworded and one appended: the rerun submits those two only (by the
    simulator's own counters) and says what it did; the old video stays on disk (a rerun of
    an edited file was refused, and a new journal would have billed everything again)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\nsecond prompt\n")
    out = tmp_path / "videos"
    args = ("batch", str(prompts), "--out-dir", str(out), "--api-key", KEY, "--progress", "plain")
    assert await run_main(*args, gw=gw) == 0
    first = {r["prompt"]: r["task_id"] for r in results(out / "results.jsonl")}
    capsys.readouterr()
    prompts.write_text("first prompt\nsecond prompt, reworded\nthird prompt\n")
    assert await run_main(*args, gw=gw) == 0
    said = capsys.readouterr().out
    assert "1 recorded before, 2 new, 1 removed (not touched)" in said
    rows = results(out / "results.jsonl")
    assert [(r["status"], r["removed"]) for r in rows] == [("succeeded", False)] * 3 + [
        ("succeeded", True)  # the reworded prompt's first task: paid for, kept on record
    ]
    assert rows[0]["task_id"] == first["first prompt"]
    assert rows[3]["task_id"] == first["second prompt"]
    assert gw.stats.tasks_created == 4
    assert gw.stats.tasks_per_prompt["second prompt"] == 1


async def test_wait_with_a_wrong_key_exits_4_at_once(
    gw: FakeGateway, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """wait with a key the gateway rejects ends at the first 401 (it waited forever in 0.1.0)."""
    async with WanClient(api_key=KEY, base_url=gw.base_url, clock=gw.clock) as client:
        created = await client.create_task(VideoRequest(prompt="mine", model="wan2.6-t2v"))
    with anyio.fail_after(10):
        code = await run_main("wait", created.task_id, "--api-key", "sk-rotated", gw=gw)
    assert code == 4
    err = capsys.readouterr().err
    assert "401" in err
    assert "--api-key" in err
    assert "sk-rotated" not in err


async def test_wait_on_a_gateway_that_stays_down_exits_5(
    gw: FakeGateway, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """wait on a gateway that went down and never came back ends with a message and exit 5."""
    async with WanClient(api_key=KEY, base_url=gw.base_url, clock=gw.clock) as client:
        created = await client.create_task(VideoRequest(prompt="down", model="wan2.6-t2v"))
    await gw.go_down("refuse")
    with anyio.fail_after(20):
        code = await run_main("wait", created.task_id, "--api-key", KEY, gw=gw)
    await gw.come_back()
    assert code == 5
    err = capsys.readouterr().err
    assert created.task_id in err
    assert "could not be checked" in err


def test_the_journal_and_results_are_readable_by_their_owner_only(
    prompts: Path, tmp_path: Path
) -> None:
    """They hold signed video URLs (a bearer credential for 24 h): created 0600 whatever the
    umask (they were 0644), and a results file rewritten stays so."""
    out = tmp_path / "videos"
    journal = tmp_path / "batch.journal"
    journal.touch(mode=0o644)  # one an older version created
    args = ("batch", "--simulate", str(prompts), "--out-dir", str(out), "--time-scale", "300")
    previous = os.umask(0o022)
    try:
        run_cli(*args, "--journal", str(journal), "--api-key", KEY, cwd=tmp_path)
        results_file = out / "results.jsonl"
        assert results(results_file)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (journal, results_file)}
    finally:
        os.umask(previous)
    assert modes == {"batch.journal": 0o600, "results.jsonl": 0o600}
    assert not list(out.glob(".*.tmp"))


async def test_batch_retry_failed_resubmits_only_upstream_failures(
    gw: FakeGateway, tmp_path: Path, no_gateway_env: None
) -> None:
    """``wan-async batch --retry-failed`` reruns only the item upstream failed with
    ``InternalError.Algo``; the moderated one stays failed, unsent (simulator counters)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a paper boat\na red fox\nneon koi [fail]\n")
    args = ("batch", str(prompts), "--out-dir", str(tmp_path / "v"), "--api-key", KEY)

    async def hiccup() -> None:
        while not any("boat" in t.prompt for t in gw.tasks()):  # noqa: ASYNC110
            await anyio.sleep(0.005)
        boat = next(t for t in gw.tasks() if "boat" in t.prompt)
        gw.finish_now(boat.task_id, success=False, code="InternalError.Algo")

    async with anyio.create_task_group() as tg:
        tg.start_soon(hiccup)
        assert await run_main(*args, "--progress", "plain", gw=gw) == 1
    rows = results(tmp_path / "v" / "results.jsonl")
    assert [r["error_code"] for r in rows] == ["InternalError.Algo", None, "DataInspectionFailed"]
    assert await run_main(*args, "--retry-failed", "--progress", "plain", gw=gw) == 1
    rows = results(tmp_path / "v" / "results.jsonl")
    assert [r["status"] for r in rows] == ["succeeded", "succeeded", "failed"]
    assert gw.stats.tasks_created == 4
    assert gw.stats.tasks_per_prompt["neon koi [fail]"] == 1


async def test_batch_resubmit_unknown_asks_first_and_says_how_in_the_summary(
    gw: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """The summary counts the unknown items and names ``--resubmit-unknown``; that flag
    refuses to go on without ``--yes`` when no one can answer its question (nothing sent),
    and with it submits the lost item again."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a paper boat\na red fox\n")
    args = ("batch", str(prompts), "--out-dir", str(tmp_path / "v"), "--api-key", KEY)
    gw.inject(Fault.DROP_AFTER_CREATE, on="submit")
    assert await run_main(*args, "--progress", "plain", "--concurrency", "1", gw=gw) == 1
    out = capsys.readouterr().out
    assert "1 unknown" in out
    assert "--resubmit-unknown" in out
    created = gw.stats.tasks_created
    code = await run_main(*args, "--resubmit-unknown", "--progress", "plain", gw=gw)
    assert code == 2
    assert "--yes" in capsys.readouterr().err
    assert gw.stats.tasks_created == created
    code = await run_main(*args, "--resubmit-unknown", "--yes", "--progress", "plain", gw=gw)
    assert code == 0
    assert [r["status"] for r in results(tmp_path / "v" / "results.jsonl")] == ["succeeded"] * 2
    assert gw.stats.tasks_created == created + 1


async def test_the_batch_summary_totals_what_was_billed(
    gw: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """After a batch: the tasks billed and the seconds of video upstream reported."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a paper boat\na red fox\n")
    args = ("batch", str(prompts), "--out-dir", str(tmp_path / "v"), "--duration", "10")
    assert await run_main(*args, "--api-key", KEY, "--progress", "plain", gw=gw) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "billed: 2 tasks, 20 s of video reported by upstream this run" in lines
    assert gw.stats.tasks_created == 2


async def test_results_carry_the_gateways_or_upstreams_code_never_a_type_name(
    gw: FakeGateway, prompts: Path, tmp_path: Path
) -> None:
    """A rejected key: the middleware's answer has no code, only its class
    (``"type": "new_api_error"``): the row says ``HTTP 401``. Upstream's refusal relayed as
    the gateway's message gives upstream's own code."""
    out = tmp_path / "videos"
    args = ("batch", str(prompts), "--out-dir", str(out), "--progress", "plain")
    assert await run_main(*args, "--api-key", WRONG_KEY, gw=gw) == 4
    codes = {r["error_code"] for r in results(out / "results.jsonl")}
    assert "new_api_error" not in codes
    assert "HTTP 401" in codes
    relayed = BadRequestError(
        method="POST",
        path="/v1/video/generations",
        status=400,
        code="fail_to_fetch_task",
        message='{"code":"InvalidParameter","message":"size is not supported"}',
    )
    assert error_code(relayed) == "InvalidParameter"


async def test_batch_progress_lines_count_what_the_client_knows(
    gw: FakeGateway,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15, item 4: each plain progress line accounts for every item once; a task not
    checked since its submit is "not yet checked" (never "queued"); the ETA is "--" before any
    task has ended, and a time once items have."""
    import re

    import wan_async._cli._batch as batch
    import wan_async._cli._display as display

    monkeypatch.setattr(display, "_PLAIN_MIN_GAP", 0.0)  # a line at every change...
    monkeypatch.setattr(batch, "_REDRAW", 0.005)  # ...seen within 1.5 gateway seconds
    prompts = tmp_path / "ten.txt"
    prompts.write_text("".join(f"scene number {i}\n" for i in range(10)))
    out = tmp_path / "videos"
    args = ("batch", str(prompts), "--out-dir", str(out), "--api-key", KEY, "--progress", "plain")
    assert await run_main(*args, gw=gw) == 0
    pattern = re.compile(
        r"^\[(\d+)/10\] done (\d+), failed (\d+), unknown (\d+), running (\d+), queued (\d+), "
        r"not yet checked (\d+)(?:, submitting (\d+))?, waiting (\d+); elapsed \S+, ETA (\S+);"
    )
    lines = [m for m in map(pattern.match, capsys.readouterr().err.splitlines()) if m]
    assert len(lines) > 3
    for m in lines:
        counts = [int(g or 0) for g in m.groups()[1:9]]
        assert sum(counts) == 10, m.group(0)
        assert int(m.group(1)) == sum(counts[:3]), m.group(0)
    assert any(int(m.group(7)) for m in lines), "tasks were seen before their first check"
    assert lines[0].group(10) == "--", "nothing has ended: nothing learned"
    ended = [m for m in lines if m.group(1) != "0"]
    assert ended
    assert all(re.fullmatch(r"\d+:\d\d", m.group(10)) for m in ended)
