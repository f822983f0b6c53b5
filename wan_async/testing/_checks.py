"""Argument checks shared by the simulator's constructors: each names the bad argument."""

from __future__ import annotations

import math
from collections.abc import Iterable


def positive(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name} must be a number, got {value!r}"
        raise TypeError(msg)
    if not (math.isfinite(value) and value > 0):
        msg = f"{name} must be a finite number > 0, got {value!r}"
        raise ValueError(msg)
    return float(value)


def non_negative(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a finite number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name} must be a number of seconds, got {value!r}"
        raise TypeError(msg)
    if not (math.isfinite(value) and value >= 0):
        msg = f"{name} must be a finite number of seconds >= 0, got {value!r}"
        raise ValueError(msg)
    return float(value)


def check_probability(name: str, value: float) -> float:
    """Return ``value`` as a float if it lies between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        msg = f"{name} must be between 0 and 1, got {value!r}"
        raise ValueError(msg)
    return float(value)


def positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a positive integer, got {value!r}"
        raise ValueError(msg)
    return value


def non_negative_int(name: str, value: int) -> int:
    """Return ``value`` if it is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"{name} must be an integer >= 0, got {value!r}"
        raise ValueError(msg)
    return value


def check_port(name: str, value: int) -> None:
    """Accept a TCP port number, 0 meaning "any free port"."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        msg = f"{name} must be an integer 0-65535 (0: any free port), got {value!r}"
        raise ValueError(msg)


def check_choice(name: str, value: str, options: tuple[str, ...]) -> None:
    """Accept one of ``options``."""
    if value not in options:
        allowed = ", ".join(repr(o) for o in options)
        msg = f"{name} must be one of {allowed}, got {value!r}"
        raise ValueError(msg)


def check_delay_range(value: tuple[float, float], name: str = "shared_delay") -> None:
    """Accept ``(low, high)`` seconds with ``0 <= low <= high``."""
    try:
        low, high = value
        ok = 0 <= float(low) <= float(high) and math.isfinite(float(high))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        msg = f"{name} must be (low, high) seconds with 0 <= low <= high, got {value!r}"
        raise ValueError(msg)


def check_schedule(
    name: str, value: Iterable[tuple[float, int]], minimum: int
) -> list[tuple[float, int]]:
    """Accept ``[(seconds, count), ...]`` with seconds >= 0 and counts >= ``minimum``.

    Returns:
        The changes sorted by time (stable: of two at the same time, the later one wins).
    """
    try:
        changes = [(float(at), count) for at, count in value]
    except (TypeError, ValueError):
        msg = f"{name} must be a list of (seconds, count) pairs, got {value!r}"
        raise ValueError(msg) from None
    for at, count in changes:
        bad = isinstance(count, bool) or not isinstance(count, int) or count < minimum
        if bad or not (math.isfinite(at) and at >= 0):
            msg = f"{name}: ({at!r}, {count!r}) needs seconds >= 0 and a count >= {minimum}"
            raise ValueError(msg)
    return sorted(changes, key=lambda change: change[0])
