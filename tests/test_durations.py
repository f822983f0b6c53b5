"""The duration model: priors per kind that yield to what is seen after the first few ends."""

from __future__ import annotations

import math
import random

import pytest

from wan_async import PollPolicy
from wan_async._durations import DurationKey, DurationModel, duration_key, prior_median

WAN26 = duration_key("wan2.6-t2v", None, None)  # 1080p, 5 s: prior 150 s


def draws(median: float, n: int, *, sigma: float = 0.3, seed: int = 0) -> list[float]:
    """``n`` lognormal durations around ``median``."""
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]


def low_quantile(median: float, sigma: float = 0.3, q_z: float = 1.88) -> float:
    """The true ~3rd percentile of a lognormal."""
    return median * math.exp(-q_z * sigma)


def test_before_any_end_a_task_may_end_at_once() -> None:
    """Nothing seen yet: no prior bounds the first check (0.1.0 planned it from half the
    1080p prior, and a task the gateway had after 8 s was first checked after 75 s); a
    shortest duration the user set holds."""
    model = DurationModel()
    assert model.shortest(WAN26) == 0.0
    assert model.shortest(("wan2.6-t2v", "832*480", 5)) == 0.0
    assert DurationModel(PollPolicy(shortest_duration=12.0)).shortest(WAN26) == 12.0


def test_a_model_five_times_faster_than_its_prior_is_believed_after_one_end() -> None:
    """Tasks of 30 s where 150 s were expected: after one end the planner looks early enough."""
    model = DurationModel()
    key: DurationKey = ("fast-model", "1920*1080", 5)
    ends = draws(30.0, 3, seed=1)
    model.observe(key, ends[0])
    assert model.shortest(key) <= 30.0  # 0.1.0: 75 s until three of this kind had ended
    for seconds in ends[1:]:
        model.observe(key, seconds)
    assert model.median(key) == pytest.approx(30.0, rel=0.3)
    assert low_quantile(30.0) * 0.5 <= model.shortest(key) <= low_quantile(30.0) * 1.3


def test_other_kinds_of_a_fast_model_learn_from_it() -> None:
    """Another size and duration of the same fast model is expected fast before its own end."""
    model = DurationModel()
    for seconds in draws(30.0, 3, seed=2):
        model.observe(("fast-model", "1920*1080", 5), seconds)
    other: DurationKey = ("fast-model", "1280*720", 10)
    assert model.median(other) <= 0.4 * prior_median(other)


def test_pooled_ratios_carry_across_kinds() -> None:
    """Upstream twice as slow as the priors on all kinds: a kind never seen is expected slow."""
    model = DurationModel()
    rng = random.Random(3)
    for _ in range(30):
        key = duration_key("wan2.6-t2v", rng.choice(["1280*720", "1920*1080"]), rng.choice([5, 10]))
        model.observe(key, 2 * prior_median(key) * rng.lognormvariate(0.0, 0.3))
    unseen = duration_key("wan2.6-t2v", "1920*1080", 15)
    assert model.median(unseen) / prior_median(unseen) == pytest.approx(2.0, rel=0.2)


def test_an_unknown_model_gets_the_pooled_estimate_with_more_doubt() -> None:
    """A model never seen: the pooled ratio, and a lower shortest (models differ)."""
    model = DurationModel()
    for seconds in draws(75.0, 20, seed=4):  # wan2.6 at half its prior
        model.observe(WAN26, seconds)
    new: DurationKey = ("wan3.0-t2v", "1920*1080", 5)
    assert model.median(new) == pytest.approx(75.0, rel=0.25)
    assert model.shortest(new) < model.shortest(WAN26)
    assert model.median(None) == pytest.approx(75.0, rel=0.25)


def test_identical_durations_narrow_the_spread() -> None:
    """Every task taking 90 s: the planner soon looks just before 90 s."""
    model = DurationModel()
    for _ in range(10):
        model.observe(WAN26, 90.0)
    assert 70.0 <= model.shortest(WAN26) <= 90.0


def test_a_change_of_speed_is_followed() -> None:
    """Upstream slows from 150 s to 300 s: older ends fade and the estimate follows."""
    model = DurationModel()
    for seconds in draws(150.0, 40, seed=5):
        model.observe(WAN26, seconds)
    for seconds in draws(300.0, 40, seed=6):
        model.observe(WAN26, seconds)
    assert model.median(WAN26) == pytest.approx(300.0, rel=0.2)


def test_one_absurd_end_moves_the_estimate_only_so_far() -> None:
    """A 2 s success among 150 s ones does not make the planner poll every task at once."""
    model = DurationModel()
    for seconds in draws(150.0, 20, seed=7):
        model.observe(WAN26, seconds)
    before = model.shortest(WAN26)
    model.observe(WAN26, 2.0)
    assert model.shortest(WAN26) >= 0.5 * before


def test_observe_says_when_plans_should_be_redone() -> None:
    """A move of more than the replan ratio is reported once; confirming ends are not."""
    model = DurationModel(replan_ratio=1.2)
    assert model.observe(WAN26, 30.0)  # the first end: far from the prior
    assert model.generation == 1
    for _ in range(20):  # the spread narrows: the shortest rises a few times
        model.observe(WAN26, 30.0)
    assert not any(model.observe(WAN26, 30.0) for _ in range(10))  # then nothing moves
    generation = model.generation
    assert model.observe(("other", "1920*1080", 5), 600.0) is True  # new kind, far off
    assert model.generation == generation + 1


@pytest.mark.parametrize("bad", [0.0, -5.0, math.inf, math.nan])
def test_nonsense_durations_are_ignored(bad: float) -> None:
    """Zero, negative, infinite or NaN durations teach nothing."""
    model = DurationModel()
    assert not model.observe(WAN26, bad)
    assert model.observed == 0
