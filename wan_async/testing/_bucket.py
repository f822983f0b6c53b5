"""The gateway's per-key request limit: a token bucket on the simulator's clock."""

from __future__ import annotations

from .._clock import Clock


class TokenBucket:
    """Allows ``rate`` requests per clock second on average, and bursts of up to ``burst``."""

    def __init__(self, *, rate: float, burst: float, clock: Clock) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one; ``False`` means "answer 429"."""
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
