"""A web backend on wan_async: submit videos over HTTP, answer status from the shared poller.

Run it offline against the built-in simulator, then talk to it with curl::

    python examples/webapp.py --simulate
    curl -X POST localhost:8080/videos -d '{"prompt": "a paper boat", "size": "1280*720"}'
    curl localhost:8080/videos/<task_id>

Against a gateway: ``WAN_API_KEY=... python examples/webapp.py`` (``WAN_BASE_URL`` for another
deployment).

The recipe:

- **One client for the app's lifetime** (``cleanup_ctx``): one aiohttp session, one shared
  poller watching every task, one request budget shared by all users of the app.
- ``POST /videos`` validates the body (400 with every problem at once), submits, and answers
  202 with the task id at once: generation takes minutes, no request waits for it. A model
  the gateway does not serve is the caller's mistake too: 400 with the gateway's message.
- Strict JSON both ways: a body with ``NaN`` or ``Infinity`` (JavaScript, not JSON) is a 400,
  and every answer, errors included, is valid JSON.
- ``GET /videos/{task_id}`` answers from the task's handle, which the shared poller keeps up to
  date: polling the app every second costs the gateway nothing more (the poller asks the
  gateway only when an answer can be new).
- **Restarts lose nothing**: each task id is written to a small JSON file before the 202, and
  at start-up the app re-attaches every stored id younger than a day (the gateway forgets
  tasks after 24 h), so tasks submitted before a deploy or a crash are still answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import attrs
from aiohttp import web

from wan_async import (
    BadRequestError,
    Clock,
    ModelNotFoundError,
    RateLimitedError,
    SubmitOutcomeUnknown,
    TaskHandle,
    ValidationError,
    VideoRequest,
    WanClient,
    WanError,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "wan2.6-t2v"
#: Request fields a client of the app may set (``prompt`` is required).
FIELDS = frozenset(field.name for field in attrs.fields(VideoRequest))
#: Stored ids older than this are not re-attached: the gateway forgets tasks after 24 hours.
MAX_AGE = 24 * 3600.0


@dataclass(frozen=True)
class Settings:
    """Where the gateway is and where task ids are stored."""

    store_path: Path
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    #: The client's clock (tests share a ScaledClock with their FakeGateway).
    clock: Clock | None = None


class TaskStore:
    """The task ids to re-attach after a restart: a small JSON file, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ids: dict[str, float] = {}
        self._lock = asyncio.Lock()

    def load(self) -> dict[str, float]:
        """Read the stored ids (task id -> Unix time of submit); none if there is no file."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        self._ids = {str(k): float(v) for k, v in data.get("tasks", {}).items()}
        return dict(self._ids)

    async def save(self, task_ids: dict[str, float]) -> None:
        """Store exactly ``task_ids`` (dropping the ones no longer worth keeping)."""
        async with self._lock:
            self._ids = dict(task_ids)
            await anyio.to_thread.run_sync(self._write)

    async def add(self, task_id: str, submitted_at: float) -> None:
        """Store one more id, on disk before the caller answers its user."""
        async with self._lock:
            self._ids[task_id] = submitted_at
            await anyio.to_thread.run_sync(self._write)

    def _write(self) -> None:
        # Write beside, then rename: a crash leaves the old file or the new one, never half.
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({"tasks": self._ids}, indent=1), encoding="utf-8")
        os.replace(temporary, self.path)


@dataclass
class State:
    """What the handlers share while the app runs: the client and the tasks it answers for."""

    client: WanClient
    store: TaskStore
    #: Every task this app answers for. The poller forgets a task once it has ended (and
    #: ``attach`` would then start watching it afresh), so finished handles are kept here.
    handles: dict[str, TaskHandle]


SETTINGS = web.AppKey("settings", Settings)
STATE = web.AppKey("state", State)


def create_app(
    *,
    store_path: str | os.PathLike[str],
    base_url: str | None = None,
    api_key: str | None = None,
    clock: Clock | None = None,
) -> web.Application:
    """The app: ``POST /videos`` and ``GET /videos/{task_id}``.

    Args:
        store_path: the JSON file of task ids to re-attach at start-up.
        base_url: the gateway (default: ``$WAN_BASE_URL``, else the documented service).
        api_key: the gateway key (default: ``$WAN_API_KEY``).
        clock: the client's clock, for tests.
    """
    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = Settings(
        store_path=Path(store_path), base_url=base_url, api_key=api_key, clock=clock
    )
    app.cleanup_ctx.append(wan_client)
    app.router.add_post("/videos", create_video)
    app.router.add_get("/videos/{task_id}", get_video, name="video")
    return app


async def wan_client(app: web.Application) -> AsyncIterator[None]:
    """Open the one client at start-up, re-attach the stored tasks; close it at shutdown."""
    settings = app[SETTINGS]
    store = TaskStore(settings.store_path)
    stored = store.load()
    async with WanClient(
        api_key=settings.api_key, base_url=settings.base_url, clock=settings.clock
    ) as client:
        now = client.clock.time()
        recent = {task_id: at for task_id, at in stored.items() if now - at < MAX_AGE}
        # attach() only starts watching: the poller checks them all, at its own pace.
        handles = {task_id: client.attach(task_id) for task_id in recent}
        if recent != stored:
            await store.save(recent)
        app[STATE] = State(client=client, store=store, handles=handles)
        yield


async def create_video(request: web.Request) -> web.Response:
    """Validate, submit, and answer 202 with the task id without waiting for the video."""
    state = request.app[STATE]
    fields, problem = await _request_fields(request)
    if problem is not None:
        return problem
    try:
        video = VideoRequest(**fields)
    except ValidationError as exc:
        problems = [
            {"field": p.field, "value": p.value, "allowed": p.allowed} for p in exc.problems
        ]
        return _error(400, "invalid_request", str(exc).splitlines()[0], problems=problems)
    try:
        handle = await state.client.submit(video)
    except WanError as exc:
        return _submit_error(exc)
    state.handles[handle.task_id] = handle
    await state.store.add(handle.task_id, state.client.clock.time())
    location = str(request.app.router["video"].url_for(task_id=handle.task_id))
    body = {"task_id": handle.task_id, "status_url": location}
    return json_response(body, status=202, headers={"Location": location})


async def get_video(request: web.Request) -> web.Response:
    """The task as the shared poller last saw it: no gateway request per call."""
    handle = request.app[STATE].handles.get(request.match_info["task_id"])
    if handle is None:
        return _error(404, "not_found", "no video with this task id was submitted here")
    return json_response(describe(handle))


def describe(handle: TaskHandle) -> dict[str, Any]:
    """A handle as JSON: status, progress, and the video URL or the error once done."""
    body: dict[str, Any] = {
        "task_id": handle.task_id,
        "status": handle.status.value,
        "done": handle.done(),
    }
    snapshot = handle.snapshot
    if snapshot is not None:
        body["progress"] = snapshot.progress
        if snapshot.updated_at is not None:
            body["updated_at"] = snapshot.updated_at.isoformat()
    if handle.done():
        error = handle.exception()
        if error is None:
            body["video_url"] = handle.result().video_url
        else:
            code = getattr(error, "code", None)
            body["error"] = {"type": type(error).__name__, "code": code, "message": str(error)}
    return body


async def _request_fields(request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
    """The request fields of a POST body, or the 400 to answer instead."""
    try:
        body = json.loads(await request.text(), parse_constant=_not_json)
    except ValueError as exc:
        # NaN and Infinity are JavaScript, not JSON: refused like any other bad body.
        return {}, _error(400, "invalid_json", f"the body must be a JSON object ({exc})")
    if not isinstance(body, dict):
        return {}, _error(400, "invalid_json", "the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        return {}, _error(400, "invalid_request", f"unknown fields {unknown}")
    if "prompt" not in body:
        return {}, _error(400, "invalid_request", "prompt is required")
    return {"model": DEFAULT_MODEL, **body}, None


def _submit_error(exc: WanError) -> web.Response:
    """A failed submit as an answer the app's own client can act on."""
    if isinstance(exc, ModelNotFoundError):
        # The gateway says 503, but the model was the caller's choice: theirs to fix.
        return _error(400, "model_not_found", exc.message or str(exc))
    if isinstance(exc, SubmitOutcomeUnknown):
        # Never resubmit blindly: the task may exist and be billed.
        return _error(502, "submit_outcome_unknown", str(exc))
    if isinstance(exc, BadRequestError):
        return _error(400, "rejected_upstream", str(exc))
    if isinstance(exc, RateLimitedError):
        return _error(503, "busy", "the gateway asks to slow down; retry later")
    return _error(502, "gateway_error", str(exc))


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": code, "message": message, **extra}, status=status)


def json_response(body: Any, *, status: int = 200, **kwargs: Any) -> web.Response:
    """An answer in strict JSON: a float that JSON cannot hold (NaN, infinity) becomes null."""
    return web.json_response(_finite(body), status=status, dumps=_strict_dumps, **kwargs)


_strict_dumps = functools.partial(json.dumps, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _not_json(name: str) -> Any:
    msg = f"{name} is not a JSON value"
    raise ValueError(msg)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own error answers (404, 405, 413, a crash's 500) in JSON too, like the app's."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"error": "http_error", "message": exc.reason}
        allow = exc.headers.get("Allow")
        return json_response(body, status=exc.status, headers={"Allow": allow} if allow else None)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal_error", "the app failed; see its log")


async def _serve(args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        options: dict[str, Any] = {}
        if args.simulate:
            from wan_async.testing import FakeGateway, ScaledClock

            clock = ScaledClock(60)
            gateway = await stack.enter_async_context(FakeGateway(clock=clock))
            options = {"base_url": gateway.base_url, "api_key": gateway.api_key, "clock": clock}
        runner = web.AppRunner(create_app(store_path=args.store, **options))
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"serving on http://{args.host}:{args.port}/videos; Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    """Serve the app until Ctrl-C."""
    parser = argparse.ArgumentParser(description="A video backend on wan_async.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--store", default="tasks.json", help="task ids to re-attach at start")
    parser.add_argument("--simulate", action="store_true", help="use the built-in simulator")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
