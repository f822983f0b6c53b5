"""One request budget for the whole client: submits and polls draw from the same bucket.

A token bucket refilled at ``rate`` requests per clock second. A 429 from anywhere halves the
rate at once (multiplicative decrease, at most once per ``cooldown``, so one burst of 429s
counts once); 429s that keep coming keep halving it, once per ``cooldown``, down to
``min_rate``. Only a ``cooldown`` without any 429 gives back a tenth of the configured rate
(additive increase), and every further quiet ``cooldown`` another tenth: a storm of 429s
drives the rate below the gateway's limit and keeps it there, and the rate recovers once the
storm is over.
"""

from __future__ import annotations

import anyio
import attrs

from ._clock import Clock


@attrs.frozen(kw_only=True)
class RateStats:
    """How the budget has been spent and squeezed."""

    granted: int
    throttles: int
    current_rate: float
    #: The lowest rate the budget was squeezed to so far.
    lowest_rate: float


class RateBudget:
    """A shared token bucket with AIMD back-off on 429.

    Args:
        rate: requests per clock second when nothing is wrong; ``None`` for no limit.
        burst: tokens that may be spent at once after a quiet spell.
        clock: the client's clock.
        min_rate: the floor the rate never drops below.
        cooldown: clock seconds between a decrease and the next step of recovery.
    """

    def __init__(
        self,
        *,
        rate: float | None,
        burst: int,
        clock: Clock,
        min_rate: float = 0.2,
        cooldown: float = 10.0,
    ) -> None:
        self._clock = clock
        self._max_rate = rate
        self._rate = rate
        self._burst = max(1, burst)
        self._min_rate = min_rate if rate is None else min(min_rate, rate)
        self._cooldown = cooldown
        self._tokens = float(self._burst)
        self._stamp = clock.monotonic()
        #: When the rate was last halved.
        self._last_decrease = float("-inf")
        #: When the current recovery step began: the last 429, or the last step.
        self._quiet_since = float("-inf")
        self._lock = anyio.Lock()
        self._granted = 0
        self._throttles = 0
        self._lowest = rate

    @property
    def stats(self) -> RateStats:
        """Requests granted, 429s absorbed and the rate in force now."""
        self._recover(self._clock.monotonic())
        return RateStats(
            granted=self._granted,
            throttles=self._throttles,
            current_rate=self._rate if self._rate is not None else float("inf"),
            lowest_rate=self._lowest if self._lowest is not None else float("inf"),
        )

    async def acquire(self) -> None:
        """Wait for one request's worth of budget."""
        if self._rate is None:
            self._granted += 1
            return
        # The lock makes waiters take turns, so they are served in arrival order.
        async with self._lock:
            while True:
                now = self._clock.monotonic()
                self._refill(now)
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    self._granted += 1
                    return
                assert self._rate is not None
                await self._clock.sleep((1.0 - self._tokens) / self._rate)

    def throttled(self) -> None:
        """Record a 429: halve the rate (once per cooldown) and drain the bucket."""
        now = self._clock.monotonic()
        if self._rate is None:
            # Unlimited until told otherwise: start from a rate the gateway documents as safe.
            self._max_rate = 20.0
            self._rate = 20.0
            self._stamp = now
        self._refill(now)
        self._throttles += 1
        self._tokens = 0.0
        self._quiet_since = now
        if now - self._last_decrease < self._cooldown:
            return  # the same burst of 429s, already answered
        self._last_decrease = now
        self._rate = max(self._min_rate, self._rate / 2)
        self._lowest = self._rate if self._lowest is None else min(self._lowest, self._rate)

    def _refill(self, now: float) -> None:
        self._recover(now)
        assert self._rate is not None
        self._tokens = min(float(self._burst), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def _recover(self, now: float) -> None:
        """Give back a tenth of the configured rate per ``cooldown`` without any 429."""
        if self._rate is None or self._max_rate is None or self._rate >= self._max_rate:
            return
        steps = int((now - self._quiet_since) / self._cooldown)
        if steps > 0:
            self._rate = min(self._max_rate, self._rate + steps * self._max_rate / 10)
            self._quiet_since += steps * self._cooldown
