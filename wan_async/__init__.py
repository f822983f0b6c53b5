"""wan_async: an asyncio-native client for the Wan text-to-video API behind its gateway."""

from __future__ import annotations

from ._batch import Outcome
from ._client import ClientStats, WanClient
from ._clock import Clock, ScaledClock, SystemClock
from ._config import DEFAULT_BASE_URL, Timeouts
from ._estimate import Estimate, EstimateLine, estimate
from ._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchAborted,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceeded,
    DecodeError,
    DownloadError,
    IncompleteDownload,
    JournalError,
    ModelNotFoundError,
    PermissionDeniedError,
    Problem,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    StatusUnavailable,
    StorageError,
    StoreUnavailable,
    SubmitOutcomeUnknown,
    TaskFailed,
    TaskNotFound,
    TransportError,
    UnexpectedRedirect,
    ValidationError,
    VideoURLExpired,
    WanConnectionError,
    WanError,
    WanTimeoutError,
)
from ._handle import TaskHandle
from ._models import TaskCreated, TaskSnapshot, TaskStatus, Usage, VideoRequest, VideoResult
from ._progress import BatchProgress, ProgressCallback
from ._redis import RedisStore
from ._retry import RetryPolicy
from ._rules import MODEL_RULES, ModelRules
from ._schedule import PollPolicy
from ._shared_journal import SharedJournal
from ._store import MemoryStore, StoredTask, TaskStore
from ._stream import OutcomeStream
from ._transport import trace_config
from ._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "MODEL_RULES",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BatchAborted",
    "BatchProgress",
    "ClientClosedError",
    "ClientStats",
    "Clock",
    "ConfigurationError",
    "DeadlineExceeded",
    "DecodeError",
    "DownloadError",
    "Estimate",
    "EstimateLine",
    "IncompleteDownload",
    "JournalError",
    "MemoryStore",
    "ModelNotFoundError",
    "ModelRules",
    "Outcome",
    "OutcomeStream",
    "PermissionDeniedError",
    "PollPolicy",
    "Problem",
    "ProgressCallback",
    "QuotaExceededError",
    "RateLimitedError",
    "RedisStore",
    "RetryPolicy",
    "ScaledClock",
    "ServerError",
    "SharedJournal",
    "StatusUnavailable",
    "StorageError",
    "StoreUnavailable",
    "StoredTask",
    "SubmitOutcomeUnknown",
    "SystemClock",
    "TaskCreated",
    "TaskFailed",
    "TaskHandle",
    "TaskNotFound",
    "TaskSnapshot",
    "TaskStatus",
    "TaskStore",
    "Timeouts",
    "TransportError",
    "UnexpectedRedirect",
    "Usage",
    "ValidationError",
    "VideoRequest",
    "VideoResult",
    "VideoURLExpired",
    "WanClient",
    "WanConnectionError",
    "WanError",
    "WanTimeoutError",
    "__version__",
    "estimate",
    "trace_config",
]
