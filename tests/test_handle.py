"""Task handles: what a wait raises, and that settled handles stay cheap to await."""

from __future__ import annotations

import traceback

import pytest

from wan_async import (
    DeadlineExceeded,
    Outcome,
    TaskFailed,
    TaskStatus,
    VideoRequest,
    WanClient,
)

pytestmark = pytest.mark.anyio


async def test_wait_timeout_is_deadline_exceeded_naming_the_task(client: WanClient) -> None:
    """A wait that times out raises DeadlineExceeded (a TimeoutError) with the id and status."""
    handle = await client.submit(VideoRequest(prompt="a slow river", model="wan2.6-t2v"))
    with pytest.raises(TimeoutError) as info:
        await handle.wait(timeout=0.001)  # the first check waits for the first refresh
    error = info.value
    assert isinstance(error, DeadlineExceeded)
    assert error.task_id == handle.task_id
    assert handle.task_id in str(error)
    assert "not seen by a status check yet" in str(error)
    assert error.last_status is None
    while handle.status is TaskStatus.NOT_START:
        await client.clock.sleep(5)
    with pytest.raises(DeadlineExceeded) as info:
        await handle.wait(timeout=0.001)
    assert info.value.last_status == handle.status.value
    assert f"last seen {handle.status.value}" in str(info.value)
    assert (await handle.wait()).task_id == handle.task_id


def frames(error: BaseException) -> int:
    """How many frames the error's traceback holds."""
    return len(traceback.extract_tb(error.__traceback__))


async def test_awaiting_a_failed_handle_again_does_not_grow_its_traceback(
    client: WanClient,
) -> None:
    """The thousandth await of a failed handle raises with a traceback as short as the first."""
    handle = await client.submit(VideoRequest(prompt="[fail] a storm", model="wan2.6-t2v"))
    with pytest.raises(TaskFailed) as info:
        await handle
    first = frames(info.value)
    for _ in range(1000):
        with pytest.raises(TaskFailed) as info:
            await handle
    assert frames(info.value) == first


def test_unwrapping_an_outcome_again_does_not_grow_its_traceback() -> None:
    """Outcome.unwrap() re-raises the stored error with the traceback it was stored with."""
    try:
        raise ValueError("boom")
    except ValueError as exc:
        outcome = Outcome(index=0, request=VideoRequest(prompt="p", model="m"), error=exc)
    with pytest.raises(ValueError, match="boom") as info:
        outcome.unwrap()
    first = frames(info.value)
    for _ in range(1000):
        with pytest.raises(ValueError, match="boom") as info:
            outcome.unwrap()
    assert frames(info.value) == first
