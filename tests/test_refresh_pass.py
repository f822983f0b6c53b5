"""The pass neighbours (``RefreshEstimator.not_before``): a pass refreshes tasks one after
another in the order they were created, so the task before this one in the pass tells when a
check of this one is early. Pure: times are passed in, nothing is awaited."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import pytest

from wan_async._refresh import RefreshEstimator

# Gateway and client clocks agree here; the pass sleeps about 4 s and reaches task "b" 50 ms
# after task "a"; one round trip is 10 ms.
RTT = 0.01


def _seen_in_one_pass(*, stamps: dict[str, float]) -> RefreshEstimator:
    """Tasks submitted at 0 (in the order of ``stamps``), each refreshed once at its own time
    and seen fresh 0.2 s after it; then refreshed again 4 s later and seen fresh likewise."""
    est = RefreshEstimator(hint=4.0)
    for task in stamps:
        est.observe_submit(task, sent=0.0, received=RTT, created=0)
    for offset in (0.0, 4.0):
        for task, at in stamps.items():
            sent = at + offset + 0.2
            est.observe(task, sent=sent, received=sent + RTT, stamp=math.floor(at + offset))
    return est


def _never(_: Hashable) -> float:
    return math.inf


def _at(when: float, task: str = "a") -> Callable[[Hashable], float]:
    return lambda key: when if key == task else math.inf


def test_nothing_defers_a_check_while_the_pass_is_on_time() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35})
    # Nobody has been asked since the latest refreshes, nor is being asked: no evidence.
    assert est.not_before("b", now=18.5, next_check=_at(18.6)) == -math.inf
    assert est.not_before("a", now=18.5, next_check=_never) == -math.inf


def test_a_task_waits_for_the_answer_of_the_one_before_it_asked_now() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35})
    # "a" is due now (or under way): its answer tells whether the pass reached "b".
    step = est.period * 0.25 / 16
    assert est.not_before("b", now=18.5, next_check=_at(18.5)) == pytest.approx(18.5 + step)
    assert est.not_before("b", now=18.5, next_check=_at(-math.inf)) == pytest.approx(18.5 + step)


def test_a_task_waits_while_the_one_before_it_in_the_pass_is_stale() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35})
    # "a" asked where its next refresh was due (about 18.3): stale, the pass runs late.
    est.observe("a", sent=18.6, received=18.6 + RTT, stamp=14)
    own = est.forecast("b", 18.6)
    assert own is not None
    # "a" is asked again at 18.7: "b" waits until that answer is in.
    later = est.not_before("b", now=18.6, next_check=_at(18.7))
    assert later == 18.7 + RTT
    # While "a"'s check is under way (-inf: now) or waits its turn, "b" looks again a
    # sixteenth of the lag budget (a quarter of the 4 s period) later, not every round trip.
    step = est.period * 0.25 / 16
    assert est.not_before("b", now=18.65, next_check=_at(-math.inf)) == pytest.approx(18.65 + step)
    assert est.not_before("b", now=18.65, next_check=_at(18.6)) == pytest.approx(18.65 + step)


def test_no_wait_for_a_task_that_is_not_asked_again_in_time() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35})
    est.observe("a", sent=18.6, received=18.6 + RTT, stamp=14)
    assert est.not_before("b", now=18.6, next_check=_never) == -math.inf
    # Planned well past the lag the forecasts allow: it cannot tell in time either.
    assert est.not_before("b", now=18.6, next_check=_at(25.0)) == -math.inf


def test_once_the_task_before_is_seen_refreshed_nothing_holds_a_check_back() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35})
    # "a" stale at 18.6, then fresh at 18.9: its refresh came in (18.6, 18.9], late.
    est.observe("a", sent=18.6, received=18.6 + RTT, stamp=14)
    assert est.not_before("b", now=18.62, next_check=_at(18.9)) > 18.62  # waits on "a"
    est.observe("a", sent=18.9, received=18.9 + RTT, stamp=18)
    # "b" came right after "a" in that pass: it goes, deferred by nothing but a pass step
    # after "a"'s refresh (none learned yet).
    assert est.not_before("b", now=18.92, next_check=_never) <= 18.92
    # Before "a"'s refresh could have come, it would still have waited (the old rule
    # deferred it by as much as "a" was late, to about 19.05).
    assert est.not_before("b", now=18.5, next_check=_never) > 18.5


def test_a_fresh_answer_names_the_next_tasks_in_the_pass_not_seen_in_it() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35, "c": 10.4})
    est.observe("a", sent=18.5, received=18.5 + RTT, stamp=18)  # the pass of 18.3
    follow = est.followers("a")
    assert [key for key, _, _ in follow] == ["b", "c"]
    (_, b_at, b_aimed), (_, c_at, _) = follow
    # Due right after "a"'s refresh (seen by 18.5), one pass step apart (none learned yet).
    assert b_at == pytest.approx(18.5 + RTT / 2)
    assert c_at >= b_at
    # A check of "b" aimed at this pass is planned no later than its forecast plus the lag
    # budget (a quarter of the 4 s period); later ones aim at a later pass.
    assert 18.35 < b_aimed <= 18.35 + 1.0 + 1.5
    # "b" seen in this pass already: only "c" is left to move; "c" never moves "a" or "b".
    est.observe("b", sent=18.51, received=18.51 + RTT, stamp=18)
    assert [key for key, _, _ in est.followers("a")] == ["c"]
    est.observe("c", sent=18.52, received=18.52 + RTT, stamp=18)
    assert est.followers("c") == []


def test_the_pass_step_is_learned_from_moved_checks() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35, "c": 10.4, "d": 10.45})
    assert est.spacing == 0.0
    est.observe("a", sent=18.36, received=18.36 + RTT, stamp=18)
    # "b" asked at once after "a" was seen refreshed: stale, the pass had not reached it.
    est.pulled("b")
    est.observe("b", sent=18.37, received=18.37 + RTT, stamp=14)
    first = est.spacing
    assert first == pytest.approx(RTT)  # at least a round trip
    est.pulled("c")
    est.observe("c", sent=18.5, received=18.5 + RTT, stamp=14)
    assert est.spacing == pytest.approx(1.5 * first)
    # A fresh one shortens it a little; a check not moved teaches nothing.
    est.pulled("b")
    est.observe("b", sent=18.6, received=18.6 + RTT, stamp=18)
    assert est.spacing == pytest.approx(1.5 * first * 0.98)
    est.observe("d", sent=18.6, received=18.6 + RTT, stamp=14)
    assert est.spacing == pytest.approx(1.5 * first * 0.98)
    # Never past a share of the lag budget (a quarter period, over 4 neighbours).
    for _ in range(40):
        est.pulled("d")
        est.observe("d", sent=18.7, received=18.7 + RTT, stamp=14)
    assert est.spacing <= est.period * 0.25 / 4 + 1e-9


def test_only_the_task_before_counts_not_the_one_after() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35, "c": 10.4})
    # "c" (after "b" in the pass) stale says nothing of "b": "b" comes before it.
    est.observe("c", sent=18.7, received=18.7 + RTT, stamp=14)
    assert est.not_before("b", now=18.7, next_check=_at(18.8, "c")) == -math.inf
    # "b" stale does defer "c".
    est.observe("b", sent=18.7, received=18.7 + RTT, stamp=14)
    assert est.not_before("c", now=18.7, next_check=_at(18.8, "b")) == 18.8 + RTT


def test_a_forgotten_task_is_skipped_for_the_one_before_it() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35, "c": 10.4})
    est.observe("a", sent=18.6, received=18.6 + RTT, stamp=14)
    est.forget("b")  # ended: the pass no longer refreshes it
    assert est.not_before("c", now=18.6, next_check=_at(18.7)) == 18.7 + RTT
    est.forget("a")
    assert est.not_before("c", now=18.6, next_check=_at(18.7)) == -math.inf


def test_a_deferral_never_exceeds_the_lag_budget() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35})
    est.observe("a", sent=18.6, received=18.6 + RTT, stamp=14)
    own = est.forecast("b", 18.6)
    assert own is not None
    # "a" is asked again just inside the budget: "b" waits no longer than its own forecast
    # plus a quarter period.
    ahead = own.high + 0.9
    later = est.not_before("b", now=18.6, next_check=_at(ahead))
    assert later <= own.high + 1.0


# -- tasks not refreshed yet: placed by the task before them in their first pass ------------


def _one_pass() -> RefreshEstimator:
    """Tasks "a" and "b" (submitted at 0) refreshed at 10.3 / 10.35 and seen then."""
    est = RefreshEstimator(hint=4.0)
    for task in ("a", "b"):
        est.observe_submit(task, sent=0.0, received=RTT, created=0)
    est.observe("a", sent=10.5, received=10.5 + RTT, stamp=10)
    est.observe("b", sent=10.55, received=10.55 + RTT, stamp=10)
    return est


def _two_passes_then(*, b_in_second: bool) -> RefreshEstimator:
    """As :func:`_one_pass`; in the next pass "a" is refreshed at 14.3 and seen at 14.5, "b"
    (at 14.35) seen only if ``b_in_second``."""
    est = _one_pass()
    est.observe("a", sent=14.5, received=14.5 + RTT, stamp=14)
    if b_in_second:
        est.observe("b", sent=14.55, received=14.55 + RTT, stamp=14)
    return est


def test_a_task_created_while_a_pass_runs_is_first_refreshed_in_the_next_one() -> None:
    # "c" is created at 14.32, after the pass that refreshes "a" at 14.3 began but before it
    # reached "b" (at 14.35): a pass refreshes the tasks unfinished when it began, so "c"
    # comes right after "b" in the pass of about 18.35 (before this rule: in the pass that
    # was running, right after "b"'s refresh there).
    est = _one_pass()
    est.observe_submit("c", sent=14.32, received=14.32 + RTT, created=14)
    forecast = est.forecast("c", 14.33)
    assert forecast is not None
    # Two periods on from "b"'s latest refresh, within twice the spread of an estimate not
    # certified yet (an eighth of the period).
    assert 18.3 <= forecast.expected <= 18.6
    assert forecast.high <= forecast.expected + 1.0
    # So it is asked in that pass (in the middle of a forecast still wide), not in this one.
    assert est.ask_at("c", after=14.33, now=14.33) >= 16.0
    # Once "a" and "b" are seen refreshed in this pass, it still is.
    est.observe("a", sent=14.5, received=14.5 + RTT, stamp=14)
    est.observe("b", sent=14.55, received=14.55 + RTT, stamp=14)
    later = est.forecast("c", 14.33)
    assert later is not None
    assert 18.3 <= later.expected <= 18.6


def test_a_task_created_before_a_pass_began_is_forecast_in_it_after_the_one_before() -> None:
    # "c" created at 13.0, before the pass of 14.3: it comes right after "b" in that pass.
    est = _one_pass()
    est.observe_submit("c", sent=13.0, received=13.0 + RTT, created=13)
    forecast = est.forecast("c", 13.0 + RTT)
    assert forecast is not None
    assert 14.35 <= forecast.high <= 14.55 + 1.0


def test_a_new_task_waits_for_the_new_task_before_it() -> None:
    # "c" and "d" created together at 13: "c" is refreshed first. While "c" is being asked,
    # "d" waits for that answer (before this rule: nothing deferred a task never refreshed).
    est = _two_passes_then(b_in_second=False)
    for task in ("c", "d"):
        est.observe_submit(task, sent=13.0, received=13.0 + RTT, created=13)
    assert est.not_before("d", now=14.6, next_check=_at(-math.inf, "c")) > 14.6
    assert est.not_before("d", now=14.6, next_check=_never) == -math.inf


def test_a_fresh_answer_names_new_tasks_created_before_its_pass_began() -> None:
    est = _two_passes_then(b_in_second=False)
    est.observe_submit("c", sent=13.0, received=13.0 + RTT, created=13)  # before 14.3
    est.observe_submit("d", sent=14.52, received=14.52 + RTT, created=14)  # after
    est.observe("b", sent=14.55, received=14.55 + RTT, stamp=14)
    assert [key for key, _, _ in est.followers("b")] == ["c"]


def test_a_moved_check_of_a_new_task_teaches_nothing_of_the_step() -> None:
    # A new task stale where it was moved may only have been created after the pass began.
    est = _two_passes_then(b_in_second=True)
    est.observe_submit("c", sent=13.0, received=13.0 + RTT, created=13)
    est.pulled("c")
    est.observe("c", sent=14.56, received=14.56 + RTT, stamp=None)
    assert est.spacing == 0.0


def test_the_nearest_task_before_that_tells_counts_not_only_the_next_one() -> None:
    est = _seen_in_one_pass(stamps={"a": 10.3, "b": 10.35, "c": 10.4})
    # "a" is being asked now; "b" (between) is not: "c" waits for "a"'s answer.
    assert est.not_before("c", now=18.5, next_check=_at(-math.inf, "a")) > 18.5
    # "a" seen refreshed in the new pass: "c" comes two steps after it, not before.
    est.observe("a", sent=18.5, received=18.5 + RTT, stamp=18)
    assert est.not_before("c", now=18.5, next_check=_never) == pytest.approx(
        18.5 + RTT / 2 + 2 * est.spacing
    )
