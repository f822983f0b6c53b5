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
    # Nobody has been asked since the latest refreshes: no evidence either way.
    assert est.not_before("b", now=18.5, next_check=_at(18.5)) == -math.inf
    assert est.not_before("a", now=18.5, next_check=_never) == -math.inf


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
