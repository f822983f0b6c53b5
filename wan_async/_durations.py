"""How long upstream works on a task: priors that yield to evidence after the first few ends.

A task's duration is modelled as ``prior(kind) * exp(x)``: ``prior`` scales the documented
example (about 150 s for a 1080p 5 s video, SPEC §6) by size and duration, and the log-ratio
``x`` is learned on three nested levels, each one the prior of the next:

* the whole service (every task this client has seen end),
* one model (its name: a model may be five times faster than the prior, or new),
* one kind (model, size, duration).

Each level is a normal estimate of the mean of ``x`` that starts from its parent's and moves
towards its own observations as fast as their spread allows (a kind with one observation already
leans most of the way to it), with older observations forgotten gradually so that a change in
upstream's speed shows. The spread of ``x`` within one kind is learned from consecutive
observations of the same kind.

What the planner reads is a low quantile, :meth:`DurationModel.shortest`: a task of that kind
is unlikely to end sooner. An unknown model gets the whole service's estimate, widened by how
much models are seen to differ.
"""

from __future__ import annotations

import math
from typing import Protocol

#: (model, size, duration) — what decides how long generation takes.
DurationKey = tuple[str, str, int]

_DEFAULT_SIZE = "1920*1080"
_DEFAULT_DURATION = 5
#: SPEC §6: 153 s of work for a 1080p 5 s video; 1-5 minutes overall.
_PRIOR_1080P_5S = 150.0
#: How far the mean log-ratio of the whole service may be from the prior: anywhere. The prior
#: says how kinds compare (a 10 s video takes about twice a 5 s one), never how long the
#: service takes: that is the gateway's to decide, and is learned from the first end.
_SERVICE_SD = math.inf
#: How far one model may be from the service (log 5 = 1.6 is four of these: a model five times
#: faster than its prior is unusual but not implausible, and it is believed after one end).
_MODEL_SD = 0.6
#: How far one kind may be from its model (the prior's scaling by size and duration may be off).
_KIND_SD = 0.25
#: Prior spread of the log duration within one kind, and its weight in observations.
_WITHIN_SD = 0.3
_WITHIN_WEIGHT = 2.0
_WITHIN_FLOOR = 0.03
#: The quantile read by shortest(): about the 3rd percentile of a normal.
_LOW_Z = 1.88
#: How many recent observations a level remembers (older ones fade geometrically).
_MEMORY = 25.0
#: Once a kind has this many ends, a new one is taken at most this many spreads from the mean.
_MIN_FOR_CLIP = 3.0
_CLIP_SD = 4.0


def duration_key(model: str, size: str | None, duration: int | None) -> DurationKey:
    """The key under which tasks of this kind share what is learned about their durations."""
    return (model, size or _DEFAULT_SIZE, duration or _DEFAULT_DURATION)


def prior_median(key: DurationKey | None) -> float:
    """The duration expected of a kind before anything is learned, in seconds."""
    if key is None:
        return _PRIOR_1080P_5S
    _, size, duration = key
    return _PRIOR_1080P_5S * _size_factor(size) * duration / 5


def _size_factor(size: str) -> float:
    w, _, h = size.partition("*")
    try:
        pixels = int(w) * int(h)
    except ValueError:
        return 1.0
    return 0.4 if pixels <= 420_000 else 0.6 if pixels <= 1_000_000 else 1.0


class _HasShortest(Protocol):
    @property
    def shortest_duration(self) -> float | None: ...


class _Level:
    """Recency-weighted count and mean of the log-ratios seen at one level."""

    __slots__ = ("mean", "weight")

    def __init__(self) -> None:
        self.weight = 0.0
        self.mean = 0.0

    def add(self, x: float) -> None:
        self.weight = self.weight * (1 - 1 / _MEMORY) + 1.0
        self.mean += (x - self.mean) / self.weight

    def posterior(
        self, prior_mean: float, prior_var: float, noise_var: float
    ) -> tuple[float, float]:
        """The estimate of this level's mean: its prior moved towards what it has seen."""
        if self.weight == 0.0:
            return prior_mean, prior_var
        precision = 1 / prior_var + self.weight / noise_var
        mean = (prior_mean / prior_var + self.weight * self.mean / noise_var) / precision
        return mean, 1 / precision


class DurationModel:
    """How long upstream works on a task, per kind: a prior that yields to evidence fast.

    Args:
        policy: anything with a ``shortest_duration`` (a :class:`~wan_async.PollPolicy`): the
            shortest duration to assume before any task has been seen to end (default: half
            the prior, at least 30 s).
        replan_ratio: :meth:`observe` reports a move when the shortest duration of the kind
            observed, or of kinds not yet seen, changed by more than this factor since the last
            report.
    """

    def __init__(self, policy: _HasShortest | None = None, *, replan_ratio: float = 1.2) -> None:
        self._blind = policy.shortest_duration if policy is not None else None
        self._replan = math.log(replan_ratio)
        self._service = _Level()
        self._models: dict[str, _Level] = {}
        self._kinds: dict[DurationKey, _Level] = {}
        #: Within-kind spread: recency-weighted sum of squared deviations and its weight.
        self._spread_sum = _WITHIN_WEIGHT * _WITHIN_SD**2
        self._spread_weight = _WITHIN_WEIGHT
        self._seen = 0
        self._cache: dict[DurationKey | None, tuple[float, float]] = {}
        #: The shortest durations last reported, per kind and for unseen kinds (key None).
        self._reported: dict[DurationKey | None, float] = {}
        self._generation = 0

    @property
    def generation(self) -> int:
        """How many times :meth:`observe` has reported that estimates moved enough to re-plan."""
        return self._generation

    @property
    def observed(self) -> int:
        """How many durations have been observed."""
        return self._seen

    def observe(self, key: DurationKey | None, seconds: float) -> bool:
        """Record that upstream worked ``seconds`` on a task of this kind.

        Returns:
            Whether the shortest duration of this kind, or of kinds not seen yet, moved by more
            than ``replan_ratio`` since last reported: planned checks of outstanding tasks
            should then be re-planned (their first check may now be too late, or too early).
        """
        if not seconds > 0 or math.isinf(seconds):
            return False
        # What existing plans were made with, if nothing was reported for them yet.
        for scope in (key, None):
            if scope not in self._reported:
                self._reported[scope] = self.shortest(scope) / prior_median(scope)
        x = math.log(seconds / prior_median(key))
        if key is not None:
            kind = self._kinds.get(key)
            if kind is not None and kind.weight >= _MIN_FOR_CLIP:
                # One absurd end (a cached result, a clock jump) moves the estimate, but only
                # so far: a real change of speed still shows within a few ends.
                mean, var = self._estimate(key)
                reach = _CLIP_SD * math.sqrt(var + self.within_var)
                x = min(mean + reach, max(mean - reach, x))
            if kind is not None and kind.weight > 0:
                # The spread within a kind, from how far a new end falls from the kind's own mean.
                deviation = (x - kind.mean) ** 2 * kind.weight / (kind.weight + 1)
                decay = 1 - 1 / _MEMORY
                self._spread_sum = self._spread_sum * decay + deviation
                self._spread_weight = self._spread_weight * decay + 1.0
            self._kinds.setdefault(key, _Level()).add(x)
            self._models.setdefault(key[0], _Level()).add(x)
        self._service.add(x)
        self._seen += 1
        self._cache.clear()
        moved = self._moved(key) | self._moved(None)
        if moved:
            self._generation += 1
        return moved

    def _moved(self, key: DurationKey | None) -> bool:
        now = self.shortest(key) / prior_median(key)
        before = self._reported[key]
        if now == before or (
            before > 0 and now > 0 and abs(math.log(now / before)) <= self._replan
        ):
            return False
        self._reported[key] = now
        return True

    def median(self, key: DurationKey | None) -> float:
        """The duration expected of a task of this kind, in seconds."""
        mean, _ = self._estimate(key)
        return prior_median(key) * math.exp(mean)

    def shortest(self, key: DurationKey | None) -> float:
        """Seconds of work a task of this kind is unlikely to undercut (a low quantile)."""
        if self._seen == 0:
            # Nothing seen: a task may end at any time (unless the user said otherwise).
            return self._blind if self._blind is not None else 0.0
        mean, var = self._estimate(key)
        return prior_median(key) * math.exp(mean - _LOW_Z * math.sqrt(var + self.within_var))

    @property
    def within_var(self) -> float:
        """The variance of a log duration within one kind, as learned."""
        return max(_WITHIN_FLOOR**2, self._spread_sum / self._spread_weight)

    def _estimate(self, key: DurationKey | None) -> tuple[float, float]:
        """Mean and variance of the log-ratio expected for this kind."""
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        within = self.within_var
        # Observations at a level vary by more than the spread within one kind: by how much the
        # kinds (and models) they come from differ.
        mean, var = self._service.posterior(0.0, _SERVICE_SD**2, within + _KIND_SD**2)
        if key is None:
            result = (mean, var + _MODEL_SD**2 + _KIND_SD**2)
        else:
            model = self._models.get(key[0])
            var += _MODEL_SD**2
            if model is not None:
                mean, var = model.posterior(mean, var, within + _KIND_SD**2)
            var += _KIND_SD**2
            kind = self._kinds.get(key)
            if kind is not None:
                mean, var = kind.posterior(mean, var, within)
            result = (mean, var)
        self._cache[key] = result
        return result
