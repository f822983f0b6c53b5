"""The client's request budget: no rate of its own; the gateway's 429s set one, under a cap.

**Unlimited by default.** Only the user's ``cap`` (a hard ceiling) and the gateway's rate
limiter set a rate; nothing here assumes how many seconds the gateway wants between requests.
Without a cap, and until 429s call for a back-off, :meth:`RateBudget.acquire` only counts.
Every constant is a number of the budget's own answers, or a share of them.

**The share.** :meth:`RateBudget.answered` hears of every answer, poll or submit, and whether
it was a rate limiter's 429. The share of limited answers is their exponentially weighted
mean, each answer weighing ``1/memory``.

**Back off on evidence, once per window.** A decrease needs the share above ``tolerance``
and, because over 32 answers the share alone is noise (a random 4 % lifts it past 0.1 in
nearly every run of 2,000 answers), evidence: the limited answers beyond the tolerated share,
``e = max(0, e + limited - tolerance)``, must reach ``memory / 4``. A real limiter (half the
answers limited) fills that in about twenty answers; a random 4 % did not in 300 runs of
20,000. A decrease spends the evidence, and the next needs ``memory // 2`` more answers, so a
burst of 429s counts once. It halves the lower of the rate in force and the recent grant rate
(over the last ``memory`` grants, ``(n - 1) / (newest - oldest)``: what the client really
sent). With neither known (unlimited, and fewer than two grants or all at one instant) it
waits for the next answer. It never goes below ``min_rate`` (or the cap, if lower).

**Recover linearly while 429s stay rare.** An episode's first decrease sets its ``base``;
then every ``memory // 2`` consecutive answers with the share under ``tolerance / 2`` add
``base / 8``. A decrease after a recovery step starts a new episode, so a step is an
eighth of the rate the last push-back left, not of a burst long past. Recovery stops
at the cap, which ends the episode; without a cap the budget is unlimited again once the rate
reaches four times ``base`` with the share still low.

**Polls keep their share.** With a rate in force, two lanes of tokens, ``"poll"`` and
``"submit"``, fill at ``rate * poll_share`` and the rest. Each holds its share of a burst of
``max(1, rate)`` tokens, but at least one, so either kind can be served from its own lane;
what overflows one lane spills into the other. A request takes from its own lane, and from
the other only while no request of the other kind waits: a waiting poll is never overtaken by
a submit for the poll lane, and either kind may use the whole rate while the other is idle.
Each kind is served in arrival order. A decrease shrinks the lanes to their new size; the
first rate after an unlimited spell starts them empty.

**One budget for a fleet.** With a task store (:attr:`RateBudget.fleet`), the rate in force
is the fleet's: a decrease or a recovery step is proposed to the store, which takes at most
one change per cooldown (the time this client's last ``memory // 2`` requests took at the
rate being left), however many clients saw the same 429s, and every client adopts what the
store holds (:meth:`RateBudget.adopt`). Tokens then come from the store's one bucket, with
the same two lanes (a submit never takes from the poll lane there). While the store cannot
be reached, the lanes are local again, at the client's share of the rate (the rate divided
by the clients alive when last known).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal, Protocol

import anyio
import attrs

from ._clock import Clock
from ._exceptions import StoreUnavailable

RequestKind = Literal["poll", "submit"]


class FleetRate(Protocol):
    """The fleet's side of a request budget (see :mod:`wan_async._fleet`). Rates are in
    requests per clock second, waits in clock seconds."""

    @property
    def shared(self) -> bool:
        """Whether tokens come from the fleet's store now (it is reachable)."""
        ...

    def portion(self) -> float:
        """This client's part of the rate while the store cannot be reached."""
        ...

    async def take(self, kind: RequestKind, rate: float, poll_share: float) -> float:
        """Take a token of the fleet's bucket: 0, or the wait first (nothing taken).

        Raises:
            StoreUnavailable: the store cannot be reached.
        """
        ...

    def propose(self, rate: float | None, *, decrease: bool, cooldown: float) -> None:
        """This client's budget moved to ``rate``: propose it to the fleet (in the
        background; the fleet answers with :meth:`RateBudget.adopt`)."""
        ...


_KINDS: tuple[RequestKind, RequestKind] = ("poll", "submit")
_OTHER: dict[RequestKind, RequestKind] = {"poll": "submit", "submit": "poll"}
#: Tokens a grant may fall short of one: float refills land a hair under after an exact sleep.
_EPSILON = 1e-9


@attrs.frozen(kw_only=True)
class RateStats:
    """How the budget has been spent and squeezed."""

    #: Requests granted so far.
    granted: int
    #: Limited answers (429s from a rate limiter) seen so far.
    throttles: int
    #: Requests per clock second in force now; ``inf`` when unlimited.
    current_rate: float
    #: The lowest rate the budget was squeezed to so far; ``inf`` if never.
    lowest_rate: float
    #: The exponentially weighted share of limited answers.
    limited_share: float


class RateBudget:
    """A request budget that the gateway's 429s set, under an optional hard cap.

    Args:
        cap: the most requests per clock second, ever; ``None`` for no cap.
        clock: the client's clock; times are read from ``monotonic()``, waits are its
            ``sleep()``.
        poll_share: the part of the rate kept for polls, which submits cannot take while a
            poll waits; strictly between 0 and 1.
        tolerance: the share of limited answers that is accepted as noise; strictly between
            0 and 1.
        memory: answers the share remembers (each weighs ``1/memory``), and grants the recent
            grant rate is measured over; at least 2.
        min_rate: the floor a decrease never goes below, in requests per clock second.

    Raises:
        ValueError: if an argument is out of its range.
    """

    def __init__(
        self,
        *,
        cap: float | None,
        clock: Clock,
        poll_share: float = 0.5,
        tolerance: float = 0.1,
        memory: int = 32,
        min_rate: float = 0.05,
    ) -> None:
        if cap is not None:
            cap = _positive("cap", cap)
        poll_share = _fraction("poll_share", poll_share)
        tolerance = _fraction("tolerance", tolerance)
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 2:
            msg = f"memory must be a whole number of answers, at least 2, got {memory!r}"
            raise ValueError(msg)
        min_rate = _positive("min_rate", min_rate)
        #: The fleet this budget is one client's share of (with a task store), if any.
        self.fleet: FleetRate | None = None
        #: Whether the local lanes serve (no fleet, or its store out of reach).
        self._alone = True
        self._clock = clock
        self._cap = cap
        self._shares: dict[RequestKind, float] = {"poll": poll_share, "submit": 1 - poll_share}
        self._tolerance = tolerance
        self._memory = memory
        self._window = memory // 2
        self._floor = min_rate if cap is None else min(min_rate, cap)
        #: Requests per clock second in force; ``None`` while unlimited.
        self._rate = cap
        #: The rate the episode's first decrease set; ``None`` outside an episode.
        self._base: float | None = None
        #: Whether the episode has taken a recovery step: a decrease after one starts anew.
        self._recovered = False
        self._share = 0.0
        #: Limited answers beyond the tolerated share, since the share was last within it.
        self._excess = 0.0
        # No decrease yet, so none is too recent.
        self._since_decrease = self._window
        #: Consecutive answers with the share under half the tolerance, since the last change.
        self._calm = 0
        self._grant_times: deque[float] = deque(maxlen=memory)
        self._granted = 0
        self._throttles = 0
        self._lowest = math.inf
        self._stamp = clock.monotonic()
        self._tokens: dict[RequestKind, float] = {kind: self._lane_size(kind) for kind in _KINDS}
        self._locks: dict[RequestKind, anyio.Lock] = {kind: anyio.Lock() for kind in _KINDS}
        self._waiting: dict[RequestKind, int] = dict.fromkeys(_KINDS, 0)
        #: The sleep of each kind's first waiter, cancelled when its wait may have shortened.
        self._naps: dict[RequestKind, anyio.CancelScope | None] = dict.fromkeys(_KINDS)

    @property
    def stats(self) -> RateStats:
        """Requests granted, limited answers seen, and the rate in force now."""
        return RateStats(
            granted=self._granted,
            throttles=self._throttles,
            current_rate=math.inf if self._rate is None else self._rate,
            lowest_rate=self._lowest,
            limited_share=self._share,
        )

    async def acquire(self, kind: RequestKind = "poll") -> None:
        """Wait for one request's worth of budget.

        Args:
            kind: which lane the request draws on.

        Raises:
            ValueError: if ``kind`` is neither ``"poll"`` nor ``"submit"``.
        """
        if kind not in _OTHER:
            msg = f"kind must be 'poll' or 'submit', got {kind!r}"
            raise ValueError(msg)
        if self._rate is None:
            self._grant(self._clock.monotonic())
            return
        other = _OTHER[kind]
        self._waiting[kind] += 1
        try:
            # One waiter per kind at a time looks at the tokens: arrival order within a kind.
            async with self._locks[kind]:
                if await self._take_shared(kind):
                    return
                while (wait := self._try_take(kind)) > 0:
                    with anyio.CancelScope() as nap:
                        self._naps[kind] = nap
                        try:
                            await self._clock.sleep(wait)
                        finally:
                            self._naps[kind] = None
        finally:
            self._waiting[kind] -= 1
            if not self._waiting[kind]:
                # The other kind's waiter may now borrow this lane: it should look again.
                self._wake(other)

    async def _take_shared(self, kind: RequestKind) -> bool:
        """Take a token from the fleet's bucket, waiting as it says; False if there is no
        fleet or its store cannot be reached (the local lanes serve then)."""
        fleet = self.fleet
        if fleet is None:
            return False
        while fleet.shared:
            self._alone = False
            rate = self._rate
            if rate is None:
                self._grant(self._clock.monotonic())
                return True
            try:
                wait = await fleet.take(kind, rate, self._shares["poll"])
            except StoreUnavailable:
                break
            if wait <= 0:
                self._grant(self._clock.monotonic())
                return True
            with anyio.CancelScope() as nap:
                self._naps[kind] = nap
                try:
                    await self._clock.sleep(wait)
                finally:
                    self._naps[kind] = None
        if not self._alone:
            # Alone from now: the local lanes start empty, at this client's share, so the
            # fleet's rate is never exceeded (tokens kept from before would be a burst).
            self._alone = True
            self._stamp = self._clock.monotonic()
            self._tokens = dict.fromkeys(_KINDS, 0.0)
        return False

    def adopt(self, rate: float | None, *, peer: bool = True) -> None:
        """The fleet's rate is ``rate`` (requests per clock second, None: unlimited): take it
        as this client's. ``peer``: another client moved it; a decrease then spends this
        client's evidence (the same 429s). Not ``peer``: the store's answer to this client's
        own proposal (the rate in force, if the store took none within its cooldown)."""
        if self._cap is not None:
            rate = self._cap if rate is None else min(rate, self._cap)
        if rate == self._rate:
            return
        now = self._clock.monotonic()
        self._refill(now)
        if peer and rate is not None and (self._rate is None or rate < self._rate):
            self._excess = 0.0
            self._since_decrease = 0
            if self._base is None or self._recovered:
                self._base, self._recovered = rate, False
        elif peer and rate is None:
            self._base = None
        self._set_rate(rate, now, told=True)

    def answered(self, *, limited: bool) -> None:
        """Record one answer from the gateway, poll or submit.

        Args:
            limited: whether it was a rate limiter's 429.
        """
        now = self._clock.monotonic()
        # Tokens earned so far are earned at the rate that was in force.
        self._refill(now)
        seen = 1.0 if limited else 0.0
        if limited:
            self._throttles += 1
        self._share += (seen - self._share) / self._memory
        self._excess = max(0.0, self._excess + seen - self._tolerance)
        self._since_decrease += 1
        self._calm = self._calm + 1 if self._share < self._tolerance / 2 else 0
        if (
            self._share > self._tolerance
            and self._excess >= self._memory / 4
            and self._since_decrease >= self._window
        ):
            self._decrease(now)
        elif self._base is not None and self._calm >= self._window:
            self._recover(self._base, now)

    def _decrease(self, now: float) -> None:
        granted = self._grant_rate()
        if granted is not None and self.fleet is not None:
            # The fleet's rate is what is halved: this client sent about its portion of it.
            granted /= self.fleet.portion()
        known = [r for r in (self._rate, granted) if r is not None]
        if not known:
            return  # nothing measured to halve yet: the next answer tries again
        rate = max(self._floor, min(known) / 2)
        if self._base is None or self._recovered:
            self._base = rate
            self._recovered = False
        self._excess = 0.0
        self._since_decrease = 0
        self._set_rate(rate, now)

    def _recover(self, base: float, now: float) -> None:
        assert self._rate is not None  # an episode always has a rate in force
        stepped = self._rate + base / 8
        self._recovered = True
        # Within half a step counts as there: sums of steps fall a rounding error short.
        if self._cap is not None and stepped + base / 16 >= self._cap:
            self._base = None
            self._set_rate(self._cap, now)
        elif self._cap is None and stepped + base / 16 >= 4 * base:
            self._base = None
            self._set_rate(None, now)
        else:
            self._set_rate(stepped, now)

    def _set_rate(self, rate: float | None, now: float, *, told: bool = False) -> None:
        fleet = self.fleet
        if fleet is not None and not told:
            # The cooldown: how long this client's last `window` requests took at the rate
            # being left (the next change needs that much new evidence anyway).
            pace = self._rate if self._rate is not None else self._grant_rate()
            cooldown = self._window / pace if pace else 0.0
            decrease = rate is not None and (self._rate is None or rate < self._rate)
            fleet.propose(rate, decrease=decrease, cooldown=cooldown)
            if fleet.shared:
                return  # the rate the store holds after it comes back through adopt()
        if rate is not None:
            self._lowest = min(self._lowest, rate)
            if self._rate is None:
                self._tokens = dict.fromkeys(_KINDS, 0.0)
                self._stamp = now
        self._rate = rate
        self._calm = 0
        if rate is not None:
            for kind in _KINDS:
                self._tokens[kind] = min(self._tokens[kind], self._lane_size(kind))
        for kind in _KINDS:
            self._wake(kind)

    def _grant_rate(self) -> float | None:
        """Grants per clock second over the last ``memory`` grants; ``None`` if unmeasurable."""
        times = self._grant_times
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    def _try_take(self, kind: RequestKind) -> float:
        """Take one token for ``kind`` and return 0, or return how long to wait first."""
        now = self._clock.monotonic()
        self._refill(now)
        if self._rate is None:
            self._grant(now)
            return 0.0
        other = _OTHER[kind]
        own = self._tokens[kind]
        if own >= 1 - _EPSILON:
            self._tokens[kind] = own - 1
            self._grant(now)
            return 0.0
        rate = self._local_rate()
        assert rate is not None
        if self._waiting[other]:
            return (1 - own) / (rate * self._shares[kind])
        both = own + self._tokens[other]
        if both >= 1 - _EPSILON:
            self._tokens[kind] = 0.0
            self._tokens[other] = both - 1
            self._grant(now)
            return 0.0
        # Until both lanes are full, together they fill at the whole rate.
        return (1 - both) / rate

    def _grant(self, now: float) -> None:
        self._granted += 1
        self._grant_times.append(now)

    def _local_rate(self) -> float | None:
        """The rate the local lanes fill at: all of it, or this client's portion of the
        fleet's while its store cannot be reached."""
        if self._rate is None or self.fleet is None:
            return self._rate
        return self._rate * self.fleet.portion()

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        rate = self._local_rate()
        if rate is None or not elapsed:
            return
        filled = {k: self._tokens[k] + elapsed * rate * self._shares[k] for k in _KINDS}
        for kind in _KINDS:
            other = _OTHER[kind]
            spill = max(0.0, filled[other] - self._lane_size(other))
            self._tokens[kind] = min(self._lane_size(kind), filled[kind] + spill)

    def _lane_size(self, kind: RequestKind) -> float:
        rate = self._local_rate()
        if rate is None:
            return 1.0  # unused while unlimited
        return max(1.0, self._shares[kind] * max(1.0, rate))

    def _wake(self, kind: RequestKind) -> None:
        nap = self._naps[kind]
        if nap is not None:
            nap.cancel()


def _positive(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        msg = f"{name} must be a positive, finite number of requests per second, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        msg = f"{name} must be a number strictly between 0 and 1, got {value!r}"
        raise ValueError(msg)
    return float(value)
