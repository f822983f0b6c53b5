"""The planning rule: the first refresh at which a task may have ended."""

from __future__ import annotations

from wan_async._models import TaskStatus
from wan_async._schedule import earliest_end, next_check


def plain(target: float) -> float:
    """A next_refresh that asks exactly at the target (to read the earliest end off)."""
    return target


def test_a_not_start_answer_does_not_push_the_earliest_end_back() -> None:
    """Submitted at 0, 75 s of work at least: still NOT_START at 40 s, check at 75 s, not 115."""
    end = earliest_end(
        status=TaskStatus.NOT_START,
        submitted_at=0.0,
        refreshed_at=None,
        started_at=None,
        shortest=75.0,
        period=15.0,
    )
    when = next_check(earliest=end, seen_at=40.0, next_refresh=plain)
    assert when == 75.0  # 0.1.0 restarted the count at every NOT_START answer: 115 s


def test_the_earliest_end_counts_from_the_start_once_running() -> None:
    """Seen running with upstream's start at 100 s: not before 175 s, whatever the status."""
    for status in (TaskStatus.IN_PROGRESS, TaskStatus.QUEUED):
        end = earliest_end(
            status=status,
            submitted_at=0.0,
            refreshed_at=130.0,
            started_at=100.0,
            shortest=75.0,
            period=15.0,
        )
        assert end == 175.0


def test_still_queued_at_a_refresh_means_not_before_that_refresh_plus_the_work() -> None:
    """QUEUED at the refresh of 100 s: it cannot end before 175 s."""
    end = earliest_end(
        status=TaskStatus.QUEUED,
        submitted_at=0.0,
        refreshed_at=100.0,
        started_at=None,
        shortest=75.0,
        period=15.0,
    )
    assert end == 175.0


def test_running_without_a_start_time_started_within_the_last_period() -> None:
    """IN_PROGRESS at 100 s with no start stamp: it started after 85 s at the earliest."""
    end = earliest_end(
        status=TaskStatus.IN_PROGRESS,
        submitted_at=0.0,
        refreshed_at=100.0,
        started_at=None,
        shortest=75.0,
        period=15.0,
    )
    assert end == 160.0


def test_nothing_bounds_a_task_attached_by_id_before_its_first_refresh() -> None:
    """No submit time, not refreshed: ask at the next refresh."""
    assert (
        earliest_end(
            status=TaskStatus.NOT_START,
            submitted_at=None,
            refreshed_at=None,
            started_at=None,
            shortest=75.0,
            period=15.0,
        )
        is None
    )


def test_never_before_the_latest_answer() -> None:
    """A check is never planned before the answer that prompted it."""
    end = earliest_end(
        status=TaskStatus.QUEUED,
        submitted_at=0.0,
        refreshed_at=10.0,
        started_at=None,
        shortest=75.0,
        period=15.0,
    )
    assert next_check(earliest=end, seen_at=200.0, next_refresh=plain) == 200.0
    assert next_check(earliest=None, seen_at=200.0, next_refresh=plain) == 200.0
