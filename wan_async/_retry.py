"""Retry rules (SPEC §2, §4): what may be tried again, and how long to wait before it.

A GET (a status query, a download) is safe to repeat, so it is retried on connection errors,
timeouts, 408, 429, 5xx and answers that are not the API's JSON. A submit is retried only when
the gateway certainly did not create the task (``task_may_exist`` is false): the connection
could not be opened, or the gateway itself answered 429 or 5xx with its own JSON error. When a
submit's outcome is unknown it is never repeated: the caller gets
:class:`~wan_async.SubmitOutcomeUnknown` and decides.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import attrs

from ._clock import Clock
from ._exceptions import APIError, RateLimitedError, WanError

logger = logging.getLogger("wan_async")

_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often, and after how long, a failed request is tried again.

    Delays are exponential (``initial * multiplier ** n``, at most ``maximum``) with jitter,
    in clock seconds; a ``Retry-After`` header, when sent, is honoured instead, up to
    ``maximum``: a server asking for longer gets its error raised at once (a proxy's
    ``Retry-After: 86400`` must not hang a caller for a day). A retry whose wait would pass
    the caller's deadline is not attempted either.

    Args:
        attempts: tries in all, the first included (1 disables retries). Answers of a rate
            limiter (429) are counted apart, against ``rate_limited_attempts``.
        rate_limited_attempts: tries in all while the answers are a rate limiter's 429s: they
            say "slower", not "failed", and the request budget spaces the tries out as such
            answers grow common.
        initial: the first delay.
        maximum: the longest delay, and the longest ``Retry-After`` obeyed.
        multiplier: growth of the delay per attempt.
        wait: ``False`` retries at once: for tests (see :meth:`no_wait`).
    """

    attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    rate_limited_attempts: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    initial: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    maximum: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))
    multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    wait: bool = True

    @classmethod
    def no_wait(cls, attempts: int = 5) -> RetryPolicy:
        """A policy that retries at once: for tests."""
        return cls(attempts=attempts, wait=False)

    def delay(self, attempt: int, *, retry_after: float | None, rng: random.Random) -> float:
        """Clock seconds to wait after failed try number ``attempt`` (1-based)."""
        if not self.wait:
            return 0.0
        if retry_after is not None:
            return retry_after
        backoff = min(self.maximum, self.initial * self.multiplier ** (attempt - 1))
        # "Equal jitter": at least half the backoff, so retries spread without bunching at 0.
        return backoff / 2 + rng.uniform(0, backoff / 2)


def should_retry(error: WanError, *, submit: bool) -> bool:
    """Whether ``error`` may be retried: transient, and (for a submit) certainly not created."""
    if not error.retryable:
        return False
    return not (submit and error.task_may_exist)


async def call_with_retries(
    call: Callable[[], Awaitable[_T]],
    *,
    policy: RetryPolicy,
    clock: Clock,
    rng: random.Random,
    submit: bool,
    before_attempt: Callable[[], Awaitable[None]],
    what: str,
) -> _T:
    """Run ``call`` until it succeeds, fails for good, or the attempts run out.

    Args:
        call: one attempt.
        policy: attempts and delays.
        clock: where to wait.
        rng: jitter source.
        submit: the call is a submit (retried only when certainly not created).
        before_attempt: awaited before every attempt (draws on the request budget).
        what: names the call in log lines.

    Raises:
        WanError: the last attempt's error.
    """
    attempt = failed = limited = 0
    while True:
        attempt += 1
        await before_attempt()
        try:
            return await call()
        except WanError as exc:
            if isinstance(exc, RateLimitedError) and policy.attempts > 1:
                limited += 1
                count, most = limited, policy.rate_limited_attempts
            else:
                failed += 1
                count, most = failed, policy.attempts
            spent = count >= most
            if spent or not should_retry(exc, submit=submit):
                raise
            retry_after = exc.retry_after if isinstance(exc, APIError) else None
            if policy.wait and retry_after is not None and retry_after > policy.maximum:
                logger.info(
                    "%s failed (%s); the server asks to wait %.0fs, more than the retry "
                    "policy's maximum of %.0fs: not retried",
                    what,
                    exc,
                    retry_after,
                    policy.maximum,
                )
                raise
            delay = policy.delay(attempt, retry_after=retry_after, rng=rng)
            left = anyio.current_effective_deadline() - anyio.current_time()
            if not math.isinf(left) and delay / clock.scale >= left:
                logger.info("%s failed (%s); no time left before the deadline to retry", what, exc)
                raise
            logger.info(
                "%s failed (%s); retry %d/%d in %.1fs",
                what,
                exc,
                count,
                most - 1,
                delay,
            )
            await clock.sleep(delay)
