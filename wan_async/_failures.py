"""Upstream's failure codes as data: which failed tasks are worth submitting again.

A task that ends in FAILURE is billed or not by upstream's rules, but whether the *same*
request may succeed next time depends only on why it failed. Upstream's codes are
``Family`` or ``Family.Detail`` (``InternalError.Algo``, ``Throttling.RateQuota``); the
family decides. A code in neither table (a new one, or none at all) is not retried:
resubmitting costs money, so only failures known to be upstream's own trouble are.
"""

from __future__ import annotations

#: Upstream's own trouble: the same request may well succeed when submitted again.
RETRY_WORTHY = frozenset(
    {
        "InternalError",  # "Inference failed, please retry." (InternalError.Algo), timeouts
        "Throttling",  # upstream's own quotas and rate limits
        "RequestTimeOut",
        "ServiceUnavailable",
        "SystemError",
    }
)

#: The request itself (or the account) is the cause: the same request fails again.
NEVER_RETRY = frozenset(
    {
        "DataInspectionFailed",  # content moderation
        "IPInfringementSuspect",
        "InvalidParameter",
        "InvalidApiKey",
        "AccessDenied",
        "Arrearage",  # the account is out of credit
        "ModelNotFound",
    }
)


def retry_worthy(code: str | None) -> bool:
    """Whether a task that failed with upstream's ``code`` may succeed if submitted again."""
    if not code:
        return False
    family = code.split(".", 1)[0]
    return family in RETRY_WORTHY and family not in NEVER_RETRY
