"""Blocking calls for scripts: ``wan_async.sync.generate(request)``.

Each call runs a :class:`~wan_async.WanClient` to its end on an event loop of its own, in a
thread of its own, and returns what the async call returns; options are those of
``WanClient`` (``api_key``, ``base_url``, ...). Ctrl-C cancels the call: the loop is stopped
cleanly (a submit on the wire still gets its answer, so no created task goes unrecorded)
and ``KeyboardInterrupt`` is raised.

Inside a running event loop (an async web handler, a notebook cell awaiting) these calls
are refused with a ``RuntimeError``: blocking there would stall everything else the loop
serves. Await the async API instead (``await client.generate(request)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar, overload

from ._batch import Outcome
from ._client import WanClient
from ._models import VideoRequest, VideoResult

__all__ = ["generate", "generate_many"]

_T = TypeVar("_T")


def generate(
    request: VideoRequest, *, timeout: float | None = None, **client_options: Any
) -> VideoResult:
    """Submit one task and block until its video is ready (see :meth:`WanClient.generate`).

    Raises:
        RuntimeError: called inside a running event loop (await the async API there).
        WanError: as :meth:`WanClient.generate`.
    """
    _refuse_inside_a_loop("generate", "await client.generate(request)")

    async def run() -> VideoResult:
        async with WanClient(**client_options) as client:
            return await client.generate(request, timeout=timeout)

    return _run_in_own_loop(run)


@overload
def generate_many(
    requests: Iterable[VideoRequest],
    *,
    return_outcomes: Literal[False] = False,
    **options: Any,
) -> list[VideoResult]: ...


@overload
def generate_many(
    requests: Iterable[VideoRequest],
    *,
    return_outcomes: Literal[True],
    **options: Any,
) -> list[Outcome]: ...


def generate_many(
    requests: Iterable[VideoRequest],
    *,
    return_outcomes: bool = False,
    **options: Any,
) -> list[VideoResult] | list[Outcome]:
    """Run a batch and block until every item has ended (see :meth:`WanClient.generate_many`).

    ``options`` holds the batch's own (``max_in_flight``, ``timeout``, ``deadline``,
    ``fail_fast``, ``journal``, ``download_dir``, ``retry_failed``, ``resubmit_unknown``,
    ``on_progress``) and the client's (``api_key``, ...). ``on_progress`` is called on the
    thread that runs the batch's event loop, not the caller's.

    Raises:
        RuntimeError: called inside a running event loop (await the async API there).
    """
    _refuse_inside_a_loop("generate_many", "await client.generate_many(requests)")
    batch_names = {
        "max_in_flight",
        "timeout",
        "deadline",
        "fail_fast",
        "journal",
        "download_dir",
        "retry_failed",
        "resubmit_unknown",
        "on_progress",
    }
    batch = {k: v for k, v in options.items() if k in batch_names}
    client_options = {k: v for k, v in options.items() if k not in batch_names}
    items = list(requests)

    async def run() -> list[VideoResult] | list[Outcome]:
        async with WanClient(**client_options) as client:
            if return_outcomes:
                outcomes: list[Outcome] = await client.generate_many(
                    items, return_outcomes=True, **batch
                )
                return outcomes
            results: list[VideoResult] = await client.generate_many(items, **batch)
            return results

    return _run_in_own_loop(run)


def _refuse_inside_a_loop(name: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    msg = (
        f"wan_async.sync.{name}() was called inside a running event loop, which it would "
        f"block; in async code use the async API: `{instead}` with a WanClient"
    )
    raise RuntimeError(msg)


def _run_in_own_loop(run: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``run()`` on a new event loop in a new thread; Ctrl-C here cancels it there."""
    outcome: list[_T] = []
    failure: list[BaseException] = []
    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        state["loop"] = asyncio.get_running_loop()
        state["task"] = asyncio.current_task()
        started.set()
        outcome.append(await run())

    def thread() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the calling thread
            failure.append(exc)
        finally:
            started.set()

    worker = threading.Thread(target=thread, name="wan_async.sync", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)  # short joins: Ctrl-C reaches the calling thread
    except KeyboardInterrupt:
        started.wait()
        loop, task = state.get("loop"), state.get("task")
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(task.cancel)
        worker.join()
        raise
    if failure:
        if isinstance(failure[0], asyncio.CancelledError):
            raise KeyboardInterrupt from None
        raise failure[0]
    return outcome[0]
