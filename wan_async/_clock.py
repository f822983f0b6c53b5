"""Clocks: where the client and the simulator read time and wait.

Everything that schedules (the poller, deadlines, the simulator's refresh loop) asks a
:class:`Clock` instead of :mod:`time`, so a test or a benchmark can compress minutes of
gateway time into seconds by sharing one :class:`ScaledClock` between a
:class:`~wan_async.testing.FakeGateway` and a :class:`~wan_async.WanClient`.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """What the library needs from a clock: two readings, a sleep and its speed."""

    @property
    def scale(self) -> float:
        """How many clock seconds pass per real second (1.0 for the system clock)."""
        ...

    def time(self) -> float:
        """Return the current Unix time in seconds, as the gateway would stamp it."""
        ...

    def monotonic(self) -> float:
        """Return a monotonic reading in clock seconds, for measuring intervals."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` clock seconds."""
        ...


class SystemClock:
    """The real clock: Unix time, ``time.monotonic`` and ``anyio.sleep``.

    Args:
        offset: seconds added to every :meth:`time` reading, to play a machine whose clock is
            ahead of (positive) or behind (negative) the gateway's; intervals are unchanged.
    """

    scale = 1.0

    def __init__(self, *, offset: float = 0.0) -> None:
        self._offset = _finite("offset", offset)

    @property
    def offset(self) -> float:
        """Seconds this clock's :meth:`time` reads ahead of the system's (negative: behind)."""
        return self._offset

    def shifted(self, seconds: float) -> SystemClock:
        """A system clock reading ``seconds`` more than this one (negative: less)."""
        return SystemClock(offset=self._offset + _finite("seconds", seconds))

    def time(self) -> float:
        return time.time() + self._offset

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()" if self._offset == 0 else f"SystemClock(offset={self._offset:+g})"


class ScaledClock:
    """A clock that runs ``scale`` times faster than real time.

    Args:
        scale: clock seconds per real second; ``100`` turns a 15 s gateway tick into 0.15 s.
        epoch: the Unix time the clock reads at ``origin`` (default: the real time now).
        origin: the ``time.monotonic()`` reading at which the clock reads ``epoch`` (default:
            now). Monotonic time is machine-wide, so two processes given the same ``epoch``
            and ``origin`` share one clock (a simulator in one, a client in the other).
    """

    def __init__(
        self, scale: float, *, epoch: float | None = None, origin: float | None = None
    ) -> None:
        if not scale > 0:
            msg = f"scale must be a positive number, got {scale!r}"
            raise ValueError(msg)
        self._scale = float(scale)
        self._real_origin = time.monotonic() if origin is None else float(origin)
        self._epoch = time.time() if epoch is None else float(epoch)

    @property
    def scale(self) -> float:
        return self._scale

    def monotonic(self) -> float:
        return (time.monotonic() - self._real_origin) * self._scale

    def time(self) -> float:
        return self._epoch + self.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self._scale)

    @property
    def epoch(self) -> float:
        """The Unix time the clock read at its origin."""
        return self._epoch

    @property
    def origin(self) -> float:
        """The ``time.monotonic()`` reading at which the clock read ``epoch``."""
        return self._real_origin

    def shifted(self, seconds: float) -> ScaledClock:
        """A clock at the same rate and origin whose :meth:`time` reads ``seconds`` more.

        It plays a client machine whose clock is ahead of (positive) or behind (negative) the
        gateway's: ``WanClient(clock=gw.clock.shifted(+7))`` sees the gateway's Unix stamps
        7 s in its past. Intervals, sleeps and :meth:`monotonic` are the same on both clocks.
        """
        epoch = self._epoch + _finite("seconds", seconds)
        return ScaledClock(self._scale, epoch=epoch, origin=self._real_origin)

    def step(self, seconds: float) -> None:
        """Step this clock's wall time by ``seconds`` (back if negative), as NTP or a restored
        VM does: :meth:`time` jumps, :meth:`monotonic` and sleeps go on undisturbed."""
        self._epoch += _finite("seconds", seconds)

    def __repr__(self) -> str:
        return f"ScaledClock(scale={self._scale:g})"


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"{name} must be a finite number of seconds, got {value!r}"
        raise ValueError(msg)
    return float(value)
