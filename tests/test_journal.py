"""The batch journal: resume after a crash without losing or double-billing a task."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import anyio
import pytest

from wan_async import (
    JournalError,
    RetryPolicy,
    SubmitOutcomeUnknown,
    TaskFailed,
    TaskNotFound,
    VideoRequest,
)
from wan_async._journal import TASK_LIFETIME, fingerprint
from wan_async.testing import FakeGateway, Fault, ScaledClock

from ._batch_worker import batch
from .conftest import fixed_processing, make_client, start_batch_worker

pytestmark = pytest.mark.anyio


def lines(path: Path) -> list[dict[str, object]]:
    """The journal's complete lines, decoded."""
    return [json.loads(t) for t in path.read_text().splitlines() if t.endswith("}")]


async def test_journal_records_every_step(gateway: FakeGateway, tmp_path: Path) -> None:
    """Header, submitting, submitted and finished lines, with no API key anywhere."""
    journal = tmp_path / "batch.jsonl"
    requests = [*batch(3), VideoRequest(prompt="[fail] moderated", model="wan2.6-t2v")]
    async with make_client(gateway) as client:
        outcomes = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert [o.ok for o in outcomes] == [True, True, True, False]
    events = lines(journal)
    assert events[0]["event"] == "batch"
    assert events[0] == {"event": "batch", "version": 2}
    for i in range(4):
        mine = [e for e in events if e.get("i") == i]
        assert [e["event"] for e in mine] == ["submitting", "submitted", "finished"]
        assert {e["k"] for e in mine} == {fingerprint(requests[i])}
    failed = next(e for e in events if e.get("i") == 3 and e["event"] == "finished")
    assert failed["status"] == "FAILURE"
    assert failed["code"] == "DataInspectionFailed"
    assert gateway.api_key not in journal.read_text()


async def test_rerun_of_a_finished_batch_sends_nothing(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Finished items come back from the journal, without a single request."""
    journal = tmp_path / "batch.jsonl"
    requests = [*batch(2), VideoRequest(prompt="[fail] moderated", model="wan2.6-t2v")]
    async with make_client(gateway) as client:
        first = await client.generate_many(requests, return_outcomes=True, journal=journal)
    before = sum(gateway.stats.requests.values())
    async with make_client(gateway) as client:
        again = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert sum(gateway.stats.requests.values()) == before
    assert [o.task_id for o in again] == [o.task_id for o in first]
    assert again[0].unwrap().video_url == first[0].unwrap().video_url
    assert isinstance(again[2].error, TaskFailed)


async def test_unknown_submit_is_reported_not_resubmitted(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A submit whose answer was lost stays 'unknown' across runs: never a second task."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(3)
    gateway.inject(Fault.DROP_AFTER_CREATE, on="submit")
    async with make_client(gateway) as client:
        first = await client.generate_many(requests, return_outcomes=True, journal=journal)
    unknown = [o for o in first if isinstance(o.error, SubmitOutcomeUnknown)]
    assert len(unknown) == 1
    async with make_client(gateway) as client:
        again = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert isinstance(again[unknown[0].index].error, SubmitOutcomeUnknown)
    assert max(gateway.stats.tasks_per_prompt.values()) == 1


async def test_an_edited_batch_runs_only_its_new_and_changed_items(
    gateway: FakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rerun with one prompt reworded, one appended, one removed and the rest reordered:
    only the reworded and the appended are submitted (the simulator's own counters), the
    unchanged come back from the journal by request, not by position, and the removed one's
    lines stay in the journal (it was refused with ``JournalError``: the advice, a new
    journal, would have billed everything again)."""
    journal = tmp_path / "batch.jsonl"
    first = batch(4)
    async with make_client(gateway) as client:
        done = await client.generate_many(first, return_outcomes=True, journal=journal)
    ids = {o.request.prompt: o.task_id for o in done}
    reworded = VideoRequest(prompt="resumable item 1, reworded", model="wan2.6-t2v")
    appended = VideoRequest(prompt="resumable item 9", model="wan2.6-t2v")
    edited = [first[3], first[0], reworded, appended]  # item 2 removed
    before = gateway.stats.outcomes("get")
    with caplog.at_level("INFO", logger="wan_async"):
        async with make_client(gateway) as client:
            again = await client.generate_many(edited, return_outcomes=True, journal=journal)
    assert all(o.ok for o in again)
    assert [o.task_id for o in again[:2]] == [ids[first[3].prompt], ids[first[0].prompt]]
    assert gateway.stats.tasks_created == 6
    assert gateway.stats.tasks_per_prompt[reworded.prompt] == 1
    assert gateway.stats.tasks_per_prompt[first[2].prompt] == 1  # removed: not touched
    assert sum(before.values()) < sum(gateway.stats.outcomes("get").values())
    assert "2 recorded before, 2 new, 2 removed (not touched)" in caplog.text
    assert any(e.get("task_id") == ids[first[2].prompt] for e in lines(journal))
    async with make_client(gateway) as client:  # the original batch again: nothing to send
        original = await client.generate_many(first, return_outcomes=True, journal=journal)
    assert [o.task_id for o in original] == [ids[r.prompt] for r in first]
    assert gateway.stats.tasks_created == 6


async def test_identical_requests_in_one_batch_are_separate_items(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """The same request twice is two tasks (two videos asked for), and a rerun with a third
    copy submits only the third."""
    journal = tmp_path / "batch.jsonl"
    twice = [batch(1)[0], batch(1)[0]]
    async with make_client(gateway) as client:
        await client.generate_many(twice, journal=journal)
        assert gateway.stats.tasks_created == 2
        await client.generate_many([*twice, batch(1)[0]], journal=journal)
    assert gateway.stats.tasks_created == 3


async def test_a_version_1_journal_resumes_and_is_appended_to(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A journal written before items were keyed (header with every fingerprint, lines by
    index) resumes without resubmitting, also with the batch edited."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(2)
    async with make_client(gateway) as client:
        created = [await client.create_task(r) for r in requests]
    header = {"event": "batch", "version": 1, "fingerprints": [fingerprint(r) for r in requests]}
    old = [header] + [
        line
        for i, task in enumerate(created)
        for line in (
            {"event": "submitting", "i": i, "fp": fingerprint(requests[i]), "at": 1.0},
            {"event": "submitted", "i": i, "task_id": task.task_id},
        )
    ]
    journal.write_text("".join(json.dumps(line) + "\n" for line in old))
    async with make_client(gateway) as client:
        outcomes = await client.generate_many(
            [requests[1], *requests[:1], *batch(3)[2:]], return_outcomes=True, journal=journal
        )
    assert [o.task_id for o in outcomes[:2]] == [created[1].task_id, created[0].task_id]
    assert all(o.ok for o in outcomes)
    assert gateway.stats.tasks_created == 3


async def test_unwritable_journal_fails_before_any_submit(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A journal path that cannot be written stops the batch before it starts."""
    async with make_client(gateway) as client:
        with pytest.raises(JournalError, match="nothing was submitted"):
            await client.generate_many(batch(2), journal=tmp_path / "missing" / "j.jsonl")
        bad = tmp_path / "notes.txt"
        bad.write_text("shopping list\n")
        with pytest.raises(JournalError, match="not a wan_async journal"):
            await client.generate_many(batch(2), journal=bad)
    assert gateway.stats.tasks_created == 0


async def test_truncated_last_line_is_tolerated(gateway: FakeGateway, tmp_path: Path) -> None:
    """A crash mid-write leaves half a line: it is dropped and the batch resumes."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(2)
    header = {"event": "batch", "version": 1, "fingerprints": [fingerprint(r) for r in requests]}
    journal.write_text(json.dumps(header) + '\n{"event": "submitting", "i": 0, "fp"')
    async with make_client(gateway) as client:
        outcomes = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert all(o.ok for o in outcomes)
    assert all(e for e in lines(journal))  # every line whole again


async def test_crash_mid_submit_reads_as_unknown(gateway: FakeGateway, tmp_path: Path) -> None:
    """'submitting' with no task id: the previous run died mid-submit, so no resubmit."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(2)
    header = {"event": "batch", "version": 1, "fingerprints": [fingerprint(r) for r in requests]}
    intent = {"event": "submitting", "i": 1, "fp": fingerprint(requests[1]), "at": 1.0}
    journal.write_text(json.dumps(header) + "\n" + json.dumps(intent) + "\n")
    async with make_client(gateway) as client:
        outcomes = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert outcomes[0].ok
    assert isinstance(outcomes[1].error, SubmitOutcomeUnknown)
    assert outcomes[1].error.cause is None
    assert gateway.stats.tasks_per_prompt[requests[1].prompt] == 0


async def test_kill_9_mid_batch_then_resume(tmp_path: Path) -> None:
    """A batch killed with SIGKILL resumes from its journal: no duplicate, nothing lost."""
    journal = tmp_path / "batch.jsonl"
    n = 24
    clock = ScaledClock(100)
    async with FakeGateway(clock=clock, slots=6, processing_time=fixed_processing(90.0)) as gw:
        worker = await start_batch_worker(gw, clock, journal, n)
        try:
            deadline = time.monotonic() + 60
            while True:  # kill once some items finished and others are still running
                events = lines(journal) if journal.exists() else []
                done = sum(e["event"] == "finished" for e in events)
                if done >= 4:
                    break
                assert time.monotonic() < deadline, "the worker made no progress"
                await anyio.sleep(0.02)
        finally:
            worker.kill()  # SIGKILL: no cleanup of any kind in the worker
            await worker.wait()
        created_before = gw.stats.tasks_created
        assert 4 <= created_before < n
        async with make_client(gw, retry=RetryPolicy.no_wait()) as client:
            outcomes = await client.generate_many(batch(n), return_outcomes=True, journal=journal)
    assert [o.index for o in outcomes] == list(range(n))
    duplicates = {p: c for p, c in gw.stats.tasks_per_prompt.items() if c > 1}
    assert duplicates == {}
    ok = [o for o in outcomes if o.ok]
    unknown = [o for o in outcomes if isinstance(o.error, SubmitOutcomeUnknown)]
    assert len(ok) + len(unknown) == n
    # An item reported unknown was mid-submit at the kill: at most one task exists for it.
    for o in unknown:
        assert gw.stats.tasks_per_prompt[o.request.prompt] <= 1
    assert gw.stats.tasks_created == n - sum(
        gw.stats.tasks_per_prompt[o.request.prompt] == 0 for o in unknown
    )


async def test_a_resumed_batch_saves_the_videos_not_on_disk_yet(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Run once without a download folder, rerun with one: the finished items are saved
    from the journal's results (no submit, no status check), each outcome with its path;
    a video already saved is kept, not fetched again (they came back ``path=None``, with
    no file on disk)."""
    journal, videos = tmp_path / "batch.jsonl", tmp_path / "videos"
    requests = batch(3)
    async with make_client(gateway) as client:
        await client.generate_many(requests, journal=journal)
    gets = gateway.stats.outcomes("get")
    async with make_client(gateway) as client:
        again = await client.generate_many(
            requests, return_outcomes=True, journal=journal, download_dir=videos
        )
    assert all(o.ok for o in again)
    assert [o.path is not None and o.path.stat().st_size > 0 for o in again] == [True] * 3
    assert sorted(p.name for p in videos.iterdir()) == sorted(o.path.name for o in again if o.path)
    assert gateway.stats.tasks_created == 3
    assert gateway.stats.outcomes("get") == gets
    downloads = sum(gateway.stats.outcomes("download").values())
    async with make_client(gateway) as client:
        third = await client.generate_many(
            requests, return_outcomes=True, journal=journal, download_dir=videos
        )
    assert [o.path for o in third] == [o.path for o in again]
    assert sum(gateway.stats.outcomes("download").values()) == downloads


async def test_kill_9_mid_download_then_resume_saves_the_video(tmp_path: Path) -> None:
    """A batch killed with SIGKILL while its videos download: the journal has them finished,
    no file is on disk (nor a partial one under the final name); the rerun saves them."""
    journal, videos = tmp_path / "batch.jsonl", tmp_path / "videos"
    n = 3
    clock = ScaledClock(100)
    async with FakeGateway(clock=clock, slots=3, processing_time=fixed_processing(30.0)) as gw:
        gw.inject(Fault.SLOW, on="download", times=None, delay=30.0)
        worker = await start_batch_worker(gw, clock, journal, n, download_dir=videos)
        try:
            with anyio.fail_after(60):
                while True:  # kill once every item finished and its download hangs
                    events = lines(journal) if journal.exists() else []
                    if sum(e["event"] == "finished" for e in events) == n:
                        break
                    await anyio.sleep(0.02)
            await anyio.sleep(0.2)
        finally:
            worker.kill()
            await worker.wait()
        assert not any(p.suffix == ".mp4" for p in videos.iterdir())
        gw.clear_faults()
        async with make_client(gw) as client:
            outcomes = await client.generate_many(
                batch(n), return_outcomes=True, journal=journal, download_dir=videos
            )
        assert all(o.ok and o.path is not None and o.path.exists() for o in outcomes)
        assert gw.stats.tasks_created == n


async def test_refused_submits_are_retried_by_the_next_run(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A batch stopped by a wrong key resumes with the right one: refused is not unknown."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(4)
    async with make_client(gateway, api_key="sk-wrong") as client:
        first = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert not any(o.ok for o in first)
    async with make_client(gateway) as client:
        again = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert all(o.ok for o in again)
    assert max(gateway.stats.tasks_per_prompt.values()) == 1


async def test_a_resumed_batch_fills_free_slots_while_it_checks_old_tasks(
    tmp_path: Path,
) -> None:
    """A rerun whose journal holds 40 tasks (finished upstream meanwhile) submits new items at
    once, while the old ones are still being checked: an attached task no answer has come for
    yet holds no place in the window (a rerun made no submit for 32 s while it re-checked 40
    finished tasks)."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(60)
    async with FakeGateway(
        clock=ScaledClock(300), slots=40, processing_time=fixed_processing(60.0)
    ) as gw:
        async with make_client(gw) as client:
            async for _ in client.as_completed(requests, max_in_flight=40, journal=journal):
                break  # stopped once all 40 are submitted and the first ended
        assert gw.stats.tasks_created == 40
        await gw.clock.sleep(120)  # the rest of the 40 end upstream meanwhile
        gw.inject(Fault.SLOW, on="get", times=None, delay=2.0)  # checks answered slowly
        async with make_client(gw) as client, anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(client.generate_many, requests, journal=journal))
            await anyio.sleep(1.0)  # real seconds: no check has been answered yet
            created = gw.stats.tasks_created
            gw.clear_faults()
            tg.cancel_scope.cancel()
    assert created > 40


async def test_a_not_found_answer_within_the_task_lifetime_is_not_final(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Resumed once with another account's key, every running task reads ``task_not_exist``;
    the next run with the right key still attaches to them and gets their videos, without
    a submit (the journal once kept "not found" for good: paid tasks lost)."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(4)
    async with make_client(gateway) as client:
        with anyio.move_on_after(30 / gateway.clock.scale):  # submitted, none ended (90 s)
            await client.generate_many(requests, journal=journal)
    assert gateway.stats.tasks_created == 4
    gateway.add_account("sk-other-account")
    async with make_client(gateway, api_key="sk-other-account") as client:
        wrong = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert [type(o.error) for o in wrong] == [TaskNotFound] * 4
    async with make_client(gateway) as client:
        right = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert all(o.ok for o in right), [o.error for o in right]
    assert [o.task_id for o in right] == [o.task_id for o in wrong]
    assert gateway.stats.tasks_created == 4


async def test_a_not_found_answer_past_the_task_lifetime_is_final(tmp_path: Path) -> None:
    """A day after its submit, not found is the task's end: recorded, not asked again."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(2)
    async with FakeGateway(clock=ScaledClock(300), processing_time=fixed_processing(90)) as gw:
        async with make_client(gw) as client:
            with anyio.move_on_after(30 / gw.clock.scale):
                await client.generate_many(requests, journal=journal)
        gw.add_account("sk-other-account")
        later = gw.clock.shifted(TASK_LIFETIME)
        async with make_client(gw, api_key="sk-other-account", clock=later) as client:
            first = await client.generate_many(requests, return_outcomes=True, journal=journal)
        gets = sum(gw.stats.gets_per_task.values())
        async with make_client(gw, clock=later) as client:
            again = await client.generate_many(requests, return_outcomes=True, journal=journal)
        assert sum(gw.stats.gets_per_task.values()) == gets
    assert [type(o.error) for o in first + again] == [TaskNotFound] * 4


async def test_a_full_disk_stops_the_batch_with_journal_error_and_touches_nothing_else(
    tmp_path: Path,
) -> None:
    """A real file-size limit on the journal's process: the failed writes leave lines
    buffered, and closing the file fails too. That OSError escaped into the client's task
    group (every item and an unrelated task ended ClientClosedError, and leaving ``async
    with`` raised an ExceptionGroup); the batch now raises JournalError, nothing else."""
    journal = tmp_path / "batch.jsonl"
    clock = ScaledClock(300)
    async with FakeGateway(clock=clock, slots=40, processing_time=fixed_processing(60.0)) as gw:
        done = await anyio.run_process(
            [
                sys.executable,
                str(Path(__file__).with_name("_full_disk_worker.py")),
                gw.base_url,
                str(clock.scale),
                repr(clock.epoch),
                repr(clock.origin),
                str(journal),
            ],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout.decode().splitlines()[-1])
    assert str(report["raised"]).startswith("JournalError: cannot write the journal")
    assert report["unrelated"] is True
    assert report["closed_cleanly"] is True


async def test_retry_failed_resubmits_only_upstreams_own_failures(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A rerun with ``retry_failed=True`` submits again the items upstream failed with
    ``InternalError.Algo`` ("Inference failed, please retry."), as a new attempt in the
    journal; a request the moderation refused comes back from the journal, unsent. A later
    rerun returns the retried items' new outcomes with no request (a rerun returned the same
    failures for ever)."""
    journal = tmp_path / "batch.jsonl"
    requests = [*batch(3), VideoRequest(prompt="[fail] refused", model="wan2.6-t2v")]
    async with make_client(gateway) as client, anyio.create_task_group() as tg:

        async def upstream_hiccups() -> None:
            def healthy() -> list[str]:
                return [t.task_id for t in gateway.tasks() if "[fail]" not in t.prompt]

            while len(healthy()) < 2:  # noqa: ASYNC110 - the gateway's own state
                await anyio.sleep(0.005)
            for task_id in healthy()[:2]:
                gateway.finish_now(
                    task_id,
                    success=False,
                    code="InternalError.Algo",
                    message="Inference failed, please retry.",
                )

        tg.start_soon(upstream_hiccups)
        first = await client.generate_many(requests, return_outcomes=True, journal=journal)
    codes = [getattr(o.error, "code", None) for o in first]
    assert codes.count("InternalError.Algo") == 2
    assert codes[3] == "DataInspectionFailed"
    failed_ids = {
        o.task_id for o in first if getattr(o.error, "code", None) == "InternalError.Algo"
    }
    async with make_client(gateway) as client:
        with pytest.raises(ValueError, match="journal"):
            client.as_completed(requests, retry_failed=True)
        second = await client.generate_many(
            requests, return_outcomes=True, journal=journal, retry_failed=True
        )
    assert [o.ok for o in second] == [True, True, True, False]
    assert isinstance(second[3].error, TaskFailed)
    assert not failed_ids & {o.task_id for o in second}
    assert gateway.stats.tasks_created == 6  # 4, then the 2 retried
    assert gateway.stats.tasks_per_prompt["[fail] refused"] == 1
    retries = [e for e in lines(journal) if e["event"] == "retry"]
    assert sorted(str(e["after"]) for e in retries) == sorted(str(t) for t in failed_ids)
    assert {e["attempt"] for e in retries} == {2}
    async with make_client(gateway) as client:
        third = await client.generate_many(
            requests, return_outcomes=True, journal=journal, retry_failed=True
        )
    assert [o.task_id for o in third] == [o.task_id for o in second]
    assert gateway.stats.tasks_created == 6


async def test_resubmit_unknown_submits_again_the_items_whose_answer_was_lost(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """An item whose submit's answer was lost is reported unknown on every rerun, until one
    asks ``resubmit_unknown=True``: then it is submitted again (its first task did exist:
    two tasks for that prompt, the price the flag names), as a new attempt."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(2)
    gateway.inject(Fault.DROP_AFTER_CREATE, on="submit")
    async with make_client(gateway, max_concurrent_submits=1) as client:
        first = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert isinstance(first[0].error, SubmitOutcomeUnknown)
    async with make_client(gateway) as client:
        again = await client.generate_many(requests, return_outcomes=True, journal=journal)
    assert isinstance(again[0].error, SubmitOutcomeUnknown)
    assert gateway.stats.tasks_created == 2
    async with make_client(gateway) as client:
        third = await client.generate_many(
            requests, return_outcomes=True, journal=journal, resubmit_unknown=True
        )
    assert [o.ok for o in third] == [True, True]
    assert third[1].task_id == first[1].task_id  # the known one was not touched
    assert gateway.stats.tasks_per_prompt[requests[0].prompt] == 2
    retries = [e for e in lines(journal) if e["event"] == "retry"]
    assert [(e["i"], e["after"], e["attempt"]) for e in retries] == [(0, None, 2)]
