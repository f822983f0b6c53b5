"""wan_async: an asyncio-native client for the Wan text-to-video API behind its gateway."""

from __future__ import annotations

from ._client import WanClient
from ._clock import Clock, ScaledClock, SystemClock
from ._config import DEFAULT_BASE_URL, Timeouts
from ._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    DecodeError,
    ModelNotFoundError,
    PermissionDeniedError,
    Problem,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    SubmitOutcomeUnknown,
    TaskFailed,
    TaskNotFound,
    TransportError,
    ValidationError,
    WanConnectionError,
    WanError,
    WanTimeoutError,
)
from ._models import TaskCreated, TaskSnapshot, TaskStatus, Usage, VideoRequest, VideoResult
from ._rules import MODEL_RULES, ModelRules
from ._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "MODEL_RULES",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "Clock",
    "ConfigurationError",
    "DecodeError",
    "ModelNotFoundError",
    "ModelRules",
    "PermissionDeniedError",
    "Problem",
    "QuotaExceededError",
    "RateLimitedError",
    "ScaledClock",
    "ServerError",
    "SubmitOutcomeUnknown",
    "SystemClock",
    "TaskCreated",
    "TaskFailed",
    "TaskNotFound",
    "TaskSnapshot",
    "TaskStatus",
    "Timeouts",
    "TransportError",
    "Usage",
    "ValidationError",
    "VideoRequest",
    "VideoResult",
    "WanClient",
    "WanConnectionError",
    "WanError",
    "WanTimeoutError",
    "__version__",
]
