"""The public surface: exactly what wan_async re-exports, typed, with one error root."""

from __future__ import annotations

import inspect
import pydoc
import re
from pathlib import Path

import attrs
import pytest

import wan_async
import wan_async.testing

PUBLIC = [
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


def test_all_is_pinned() -> None:
    """Adding or removing a public name is a deliberate change to this list."""
    assert wan_async.__all__ == PUBLIC
    for name in PUBLIC:
        assert hasattr(wan_async, name), name


def test_every_exception_derives_from_wan_error() -> None:
    """One root for every error the library raises."""
    errors = [
        obj
        for name in PUBLIC
        if inspect.isclass(obj := getattr(wan_async, name)) and issubclass(obj, BaseException)
    ]
    assert errors
    assert all(issubclass(e, wan_async.WanError) for e in errors)


def test_exception_tree_is_drawn_in_the_docstring() -> None:
    """The tree in _exceptions.py's docstring names every exception class."""
    from wan_async import _exceptions

    doc = _exceptions.__doc__ or ""
    for name in PUBLIC:
        obj = getattr(wan_async, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert name in doc, name


def test_typed_package() -> None:
    """py.typed ships, and the testing package is public."""
    assert (Path(wan_async.__file__).parent / "py.typed").exists()
    assert "FakeGateway" in wan_async.testing.__all__
    assert wan_async.__version__ == "0.1.0"


@pytest.mark.parametrize(
    "cls", [wan_async.Outcome, wan_async.VideoResult, wan_async.TaskSnapshot, wan_async.Usage]
)
def test_help_documents_every_field_of_the_results(cls: type) -> None:
    """``help(Outcome)`` (and the other result types) says what each public field means:
    ``#:`` comments are invisible to ``help()``, so the class docstring lists them."""
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    described = set(re.findall(r"^\s{8}(\w+(?:, \w+)*):", cls.__doc__ or "", re.MULTILINE))
    names = {name.strip() for line in described for name in line.split(",")}
    public = {f.name for f in attrs.fields(cls) if not f.name.startswith("_")}
    assert public <= names, public - names
    assert "Attributes:" in text
