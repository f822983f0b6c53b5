"""Batches under failure: no duplicate task, no lost task id, no hang, no false "unknown"."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from wan_async import (
    AuthenticationError,
    BatchAborted,
    ClientClosedError,
    DeadlineExceeded,
    JournalError,
    ModelNotFoundError,
    QuotaExceededError,
    RetryPolicy,
    ServerError,
    SubmitOutcomeUnknown,
    VideoRequest,
    VideoResult,
)
from wan_async._journal import Journal
from wan_async.testing import FakeGateway, Fault, ScaledClock

from ._batch_worker import batch
from .conftest import SCALE, fixed_processing, make_client, start_batch_worker

pytestmark = pytest.mark.anyio


def lines(path: Path) -> list[dict[str, Any]]:
    """The journal's complete lines, decoded."""
    return [json.loads(t) for t in path.read_text().splitlines() if t.endswith("}")]


async def wait_for(condition: Any, what: str, seconds: float = 60) -> None:
    """Wait (real seconds) until ``condition()`` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        await anyio.sleep(0.02)


def duplicates(gw: FakeGateway) -> dict[str, int]:
    """Prompts that got more than one task."""
    return {p: c for p, c in gw.stats.tasks_per_prompt.items() if c > 1}


# -- issue 9.1: two runs of one journaled batch ------------------------------------------


async def test_a_second_process_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    """While one process runs a journaled batch, another run of it submits nothing."""
    journal = tmp_path / "batch.jsonl"
    n = 30
    clock = ScaledClock(100)
    async with FakeGateway(clock=clock, slots=8, processing_time=fixed_processing(120)) as gw:
        worker = await start_batch_worker(gw, clock, journal, n)
        try:
            await wait_for(
                lambda: journal.exists() and '"submitted"' in journal.read_text(),
                "the first run submitted nothing",
            )
            async with make_client(gw) as client:
                with pytest.raises(JournalError, match="in use by another run"):
                    await client.generate_many(batch(n), journal=journal)
            created_while_both = gw.stats.tasks_created
            assert await worker.wait() == 0
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        assert created_while_both <= n
        assert gw.stats.tasks_created == n
        assert duplicates(gw) == {}
        # Once the first run has let go, the journal is free again (and all is finished).
        async with make_client(gw) as client:
            again = await client.generate_many(batch(n), return_outcomes=True, journal=journal)
        assert all(o.ok for o in again)
        assert gw.stats.tasks_created == n


async def test_two_batches_on_one_journal_in_one_process(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Two concurrent runs of a journaled batch in one process: the second is refused."""
    journal = tmp_path / "batch.jsonl"
    opened = await Journal.open(journal, batch(3))
    try:
        async with make_client(gateway) as client:
            with pytest.raises(JournalError, match="in use"):
                await client.generate_many(batch(3), journal=journal)
    finally:
        await opened.aclose()
    assert gateway.stats.tasks_created == 0


# -- issue 9.3: submits on the wire when the batch stops ----------------------------------


async def test_a_deadline_lets_a_submit_on_the_wire_finish_and_reports_its_task(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """A batch deadline during a slow submit: the item reports the task it created."""
    journal = tmp_path / "batch.jsonl"
    gateway.inject(Fault.SLOW, on="submit", delay=0.6)
    async with make_client(gateway) as client:
        outcomes = await client.generate_many(
            batch(1), return_outcomes=True, journal=journal, deadline=0.2 * SCALE
        )
    (only,) = outcomes
    assert isinstance(only.error, DeadlineExceeded)
    assert gateway.stats.tasks_created == 1
    (task,) = gateway.tasks()
    assert only.task_id == task.task_id
    assert only.error.task_id == task.task_id
    assert any(
        (e["event"], e.get("i"), e.get("task_id")) == ("submitted", 0, task.task_id)
        for e in lines(journal)
    )


async def test_leaving_as_completed_during_a_submit_keeps_its_task_id(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """Breaking out of as_completed while a submit is on the wire still records its task."""
    journal = tmp_path / "batch.jsonl"
    requests = batch(3)
    requests[0] = VideoRequest(prompt="[fail] refused at once", model="wan2.6-t2v")
    gateway.inject(Fault.SLOW, on="submit", delay=0.5, times=2)
    async with make_client(gateway, max_concurrent_submits=3) as client:
        async for _ in client.as_completed(requests, journal=journal):
            break  # the failed item 0 ends first; items 1 and 2 are on the wire
        await anyio.sleep(0.8)
    created = {t.task_id for t in gateway.tasks()}
    recorded = {e["task_id"] for e in lines(journal) if e["event"] == "submitted"}
    assert recorded == created
    assert len(created) == 3


async def test_closing_the_client_during_a_submit_reports_its_task(gateway: FakeGateway) -> None:
    """aclose() while a batch's submit is on the wire: the item is reported with its task id."""
    gateway.inject(Fault.SLOW, on="submit", delay=0.5)
    outcomes: list[Any] = []
    async with make_client(gateway) as client:

        async def run() -> None:
            outcomes.extend(await client.generate_many(batch(1), return_outcomes=True))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await anyio.sleep(0.2)
            await client.aclose()
    (only,) = outcomes
    (task,) = gateway.tasks()
    assert only.task_id == task.task_id
    assert isinstance(only.error, BatchAborted)
    assert isinstance(only.error.cause, ClientClosedError)


# -- issue 9.4: "submitting" only when a request may go out -------------------------------


async def test_kill_9_reports_unknown_only_the_submits_on_the_wire(tmp_path: Path) -> None:
    """After kill -9, only items whose request was sent read as unknown, not queued ones."""
    journal = tmp_path / "batch.jsonl"
    n = 50
    clock = ScaledClock(100)
    async with FakeGateway(clock=clock, slots=50, processing_time=fixed_processing(600)) as gw:
        gw.inject(Fault.SLOW, on="submit", delay=0.3, times=1000)
        worker = await start_batch_worker(gw, clock, journal, n, submits=2)
        try:
            await wait_for(lambda: gw.stats.tasks_created >= 5, "the worker submitted nothing")
        finally:
            worker.kill()  # SIGKILL: no cleanup of any kind in the worker
            await worker.wait()
        gw.clear_faults()
        await anyio.sleep(0.4)  # let the slow answers to the dead worker finish
        created_before = gw.stats.tasks_created
        async with make_client(gw, retry=RetryPolicy.no_wait()) as client:
            outcomes = await client.generate_many(batch(n), return_outcomes=True, journal=journal)
    unknown = [o for o in outcomes if isinstance(o.error, SubmitOutcomeUnknown)]
    # At most the two submits that were on the wire; 0.1.0 reported 45 of 50.
    assert len(unknown) <= 2
    assert created_before < 20
    assert sum(o.ok for o in outcomes) == n - len(unknown)
    assert duplicates(gw) == {}


# -- issue 9.7: the adaptive window after failed submits ----------------------------------


async def test_failed_first_submits_do_not_stall_the_adaptive_window(
    gateway: FakeGateway,
) -> None:
    """If the first submits all fail, the batch goes on with the rest instead of waiting."""
    gateway.inject(Fault.UNAVAILABLE, on="submit", times=8)
    async with make_client(gateway, retry=RetryPolicy(attempts=1)) as client:
        with anyio.fail_after(10):
            outcomes = await client.generate_many(batch(12), return_outcomes=True)
    assert sum(isinstance(o.error, ServerError) for o in outcomes) == 8
    assert sum(o.ok for o in outcomes) == 4


# -- issue 9.12: what stops a batch -------------------------------------------------------


async def test_an_unknown_model_fails_its_item_only() -> None:
    """503 model_not_found is one item's error; the other items run to their videos."""
    requests = batch(4)
    requests[1] = VideoRequest(prompt="a new model", model="wan9-t2v")
    async with (
        FakeGateway(clock=ScaledClock(SCALE), processing_time=fixed_processing(60)) as gw,
        make_client(gw) as client,
    ):
        outcomes = await client.generate_many(requests, return_outcomes=True)
    assert isinstance(outcomes[1].error, ModelNotFoundError)
    assert [o.ok for o in outcomes] == [True, False, True, True]


async def test_a_refused_key_stops_submitting_but_waits_for_tasks_already_billed() -> None:
    """Out of quota at item 3: items 0-2 still deliver their videos, the rest never go out."""
    async with (
        FakeGateway(clock=ScaledClock(SCALE), quota=3, processing_time=fixed_processing(60)) as gw,
        make_client(gw, max_concurrent_submits=1) as client,
    ):
        outcomes = await client.generate_many(batch(8), return_outcomes=True, max_in_flight=4)
    assert [o.ok for o in outcomes[:3]] == [True, True, True]
    assert all(o.task_id for o in outcomes[:3])
    assert isinstance(outcomes[3].error, QuotaExceededError)
    for late in outcomes[4:]:
        assert isinstance(late.error, BatchAborted)
        assert isinstance(late.error.cause, QuotaExceededError)
        assert late.task_id is None
    assert gw.stats.tasks_created == 3


async def test_a_key_revoked_mid_batch_reports_every_task_with_its_id() -> None:
    """A 401 on status checks fails every waiting item with its task id; the batch stops."""
    async with FakeGateway(clock=ScaledClock(SCALE), processing_time=fixed_processing(600)) as gw:
        async with make_client(gw) as client:
            ids = [(await client.create_task(r)).task_id for r in batch(3)]
        journal_free = batch(3)
        async with make_client(gw, api_key="sk-revoked") as client:
            handles = [client.attach(i) for i in ids]
            with anyio.fail_after(5):
                for handle in handles:
                    with pytest.raises(AuthenticationError):
                        await handle
            outcomes = await client.generate_many(journal_free, return_outcomes=True)
    assert all(isinstance(o.error, (AuthenticationError, BatchAborted)) for o in outcomes)
    assert gw.stats.tasks_created == 3


# -- issue 9.9: nothing escapes a batch into the caller ----------------------------------


async def test_a_journal_that_fails_mid_batch_ends_that_batch_only(
    gateway: FakeGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JournalError mid-batch is raised to the batch's reader; the caller's body goes on."""
    writes = 0
    real = Journal._write_sync

    def failing_after_three(self: Journal, line: dict[str, Any]) -> None:
        nonlocal writes
        writes += 1
        if writes > 3:
            raise JournalError("cannot write the journal: disk full")
        real(self, line)

    monkeypatch.setattr(Journal, "_write_sync", failing_after_three)
    async with make_client(gateway) as client:
        other = await client.submit(VideoRequest(prompt="not in the batch", model="wan2.6-t2v"))
        seen: list[Any] = []

        async def read_the_batch() -> None:
            async for outcome in client.as_completed(batch(4), journal=tmp_path / "j.jsonl"):
                seen.append(outcome)

        with pytest.raises(JournalError, match="disk full"):
            await read_the_batch()
        assert sorted(o.index for o in seen) == [0, 1, 2, 3]
        created = {t.task_id for t in gateway.tasks()} - {other.task_id}
        assert {o.task_id for o in seen if o.task_id} == created
        # The caller's body and the client's other tasks were never cancelled.
        assert isinstance(await other, VideoResult)


async def test_an_exception_from_saving_is_that_items_outcome(
    gateway: FakeGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ValueError while saving a video fails that item only, keeping its result."""
    async with make_client(gateway) as client:
        real = client.download

        async def picky(result: VideoResult, path: Any, **kwargs: Any) -> Path:
            if result.task_id == gateway.tasks()[0].task_id:
                raise ValueError("no safe file name")
            return await real(result, path, **kwargs)

        monkeypatch.setattr(client, "download", picky)
        outcomes = await client.generate_many(
            batch(3), return_outcomes=True, download_dir=tmp_path / "videos"
        )
        assert isinstance(outcomes[0].error, ValueError)
        assert outcomes[0].result is not None
        assert [o.ok for o in outcomes[1:]] == [True, True]


async def test_aclose_from_another_task_leaves_the_opener_running(gateway: FakeGateway) -> None:
    """Any task may close the client; the body that entered it is not cancelled by that."""
    reached_the_end = False
    async with make_client(gateway) as client:
        handle = await client.submit(VideoRequest(prompt="closing", model="wan2.6-t2v"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.aclose)
        with pytest.raises(ClientClosedError):
            await handle
        await anyio.sleep(0.05)  # a checkpoint: a cancelled body would stop here
        reached_the_end = True
        assert client.closed
    assert reached_the_end


# -- issue 9.13: the recorded cause on resume ---------------------------------------------


async def test_resume_reports_the_cause_the_journal_recorded(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    """An item whose answer was lost is reported on resume with the cause then recorded."""
    journal = tmp_path / "batch.jsonl"
    gateway.inject(Fault.DROP_AFTER_CREATE, on="submit")
    async with make_client(gateway, max_concurrent_submits=1) as client:
        first = await client.generate_many(batch(2), return_outcomes=True, journal=journal)
    assert isinstance(first[0].error, SubmitOutcomeUnknown)
    async with make_client(gateway) as client:
        again = await client.generate_many(batch(2), return_outcomes=True, journal=journal)
    error = again[0].error
    assert isinstance(error, SubmitOutcomeUnknown)
    assert error.reason is not None
    assert "connection broke" in error.reason
    assert "previous run stopped" not in str(error)
    assert "connection broke" in str(error)


# -- issue 9.16: a task id never leaves download_dir --------------------------------------


async def test_a_task_id_with_a_slash_stays_inside_download_dir(
    client: Any, tmp_path: Path
) -> None:
    """The batch saver makes a safe file name of any task id."""
    result = await client.generate(VideoRequest(prompt="escape", model="wan2.6-t2v"))
    folder = tmp_path / "videos"
    save = await client._saver(folder)
    crafted = VideoResult(task_id="../../escaped", video_url=result.video_url)
    path = await save(0, crafted)
    assert path.parent == folder
    assert path.name == "0-______escaped.mp4"
    assert [p.name async for p in anyio.Path(tmp_path).iterdir()] == ["videos"]
