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
- **Restarts lose nothing**: each task id is appended to a JSON-lines file (one line, fsynced
  before the 202), and at start-up the app re-attaches every stored id younger than a day (the
  gateway forgets tasks after 24 h), so tasks submitted before a deploy or a crash are still
  answered. Several worker processes on one host may share the file: appends never overwrite
  each other, and a POST costs the same at 100,000 stored ids as at ten. The file is compacted
  (ids older than a day dropped) at start-up and every hour while the app runs.
- **Several workers on one port** (``--workers N``, each a process listening with
  ``SO_REUSEPORT``) answer for every task once they share the fleet's Redis store
  (``WAN_REDIS_URL``): a task submitted on one worker is answered on any other from the store
  (``client.latest``), polled by one worker only, within one request budget for the key.
  Without it, each worker answers for its own tasks only (a 404 on the others): a
  multi-worker deployment needs the Redis store. The file store below is for restarts.
- **A paid task is always answered**: once the submit has succeeded, a store that fails
  (a full disk, a read-only volume) costs the task its re-attachment after a restart, logged
  as an ERROR naming it, never the caller's 202: a 500 would make the caller retry and pay for
  the same video twice.

The store uses ``fcntl.flock``: POSIX only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
    TaskSnapshot,
    TaskStatus,
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
#: Seconds (of the client's clock) between two compactions of the store while the app runs.
COMPACT_EVERY = 3600.0
#: Read and write for the owner only: the store holds the task ids of paying users.
PRIVATE = 0o600


@dataclass(frozen=True)
class Settings:
    """Where the gateway is and where task ids are stored."""

    store_path: Path
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    #: The client's clock (tests share a ScaledClock with their FakeGateway).
    clock: Clock | None = None
    #: Seconds of that clock between two compactions of the store while the app runs.
    compact_every: float = COMPACT_EVERY


class TaskStore:
    """The task ids to re-attach after a restart: a JSON-lines file that several worker
    processes on one host may share.

    - A submit appends one record, ``{"task_id": ..., "submitted_at": ...}``, in one
      ``os.write`` to the file opened with ``O_APPEND``, fsynced before the caller's 202: no
      writer overwrites another's ids, and an append costs the same whatever the file holds.
    - Each record *starts* with a newline: one torn by a crash (a full disk, a power cut)
      spoils only itself, never the record appended after it. Reading skips what does not
      parse, and reads the old format too (one JSON object, ``{"tasks": {id: time}}``).
    - :meth:`compact` drops the expired ids: it writes the ids kept to a temporary file of its
      own (``mkstemp``, same folder) and renames it over the store, holding an exclusive
      ``flock`` on ``<store>.lock``. Every append holds that lock shared, and opens the store
      by name only once it holds it: it appends to the current file, never to one a compaction
      has just renamed away, and a compaction never drops a line being appended.
    - Every file is created 0600.

    The methods other than :meth:`add` block: call them off the event loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: The lock, in a file of its own: the store is replaced, the lock file never is (nor
        #: deleted: a process holding it open would then lock a file no one else sees).
        self.lock_path = path.with_name(path.name + ".lock")

    async def add(self, task_id: str, submitted_at: float) -> None:
        """Store one more id, on disk before the caller answers its user."""
        await anyio.to_thread.run_sync(self.append, task_id, submitted_at)

    def append(self, task_id: str, submitted_at: float) -> None:
        """Append one id and fsync it.

        Raises:
            OSError: the store or its lock file cannot be written.
        """
        record = _record(task_id, submitted_at)
        with self._locked(fcntl.LOCK_SH):
            # Opened by name under the lock: a compaction replaces the store only while no
            # append holds the lock, so this is the current file.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE)
            try:
                created = os.fstat(fd).st_size == 0
                written = os.write(fd, record)
                if written != len(record):
                    msg = f"short write to {str(self.path)!r}: {written} of {len(record)} bytes"
                    raise OSError(msg)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_folder(self.path.parent)

    def read(self) -> dict[str, float]:
        """The stored ids (task id -> Unix time of submit); none if there is no file.

        No lock needed: the store is only ever replaced whole, and a torn record is skipped.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        return {task_id: at for task_id, (at, _) in _parse(data).items()}

    def compact(self, now: float, *, max_age: float = MAX_AGE) -> dict[str, float]:
        """Drop the ids ``max_age`` seconds old or older at ``now``; return the ids kept.

        The file is rewritten only if that changes it (ids dropped, torn records, the old
        format), so compacting often costs a read.

        Raises:
            OSError: the store cannot be read, or needs rewriting and cannot be.
        """
        with self._locked(fcntl.LOCK_EX):
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""
            kept = {
                task_id: (at, record)
                for task_id, (at, record) in _parse(data).items()
                if now - at < max_age
            }
            # The records kept as they were stored: no need to serialize them again.
            compacted = b"".join(record for _, record in kept.values())
            if compacted != data:
                self._replace(compacted)
        return {task_id: at for task_id, (at, _) in kept.items()}

    def _replace(self, data: bytes) -> None:
        # A temporary name no other writer uses (mkstemp, created 0600), renamed into place:
        # a crash leaves the old file or the new one, never half of one.
        fd, temporary = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_folder(self.path.parent)

    @contextlib.contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        # A descriptor of its own for each holder: flock belongs to the open file, so threads
        # of one process sharing one descriptor would release each other's lock.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, PRIVATE)
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)  # which releases the lock


def _record(task_id: str, submitted_at: float) -> bytes:
    line = json.dumps({"task_id": task_id, "submitted_at": submitted_at}, allow_nan=False)
    return b"\n" + line.encode()


def _parse(data: bytes) -> dict[str, tuple[float, bytes]]:
    """Each id of a store's contents, with its time and its record as stored (the last one for
    an id stored twice), skipping whatever is not a whole, valid record."""
    text = data.decode("utf-8", errors="replace")
    tasks: dict[str, tuple[float, bytes]] = {}
    start = 0
    if text.startswith("{"):
        # Perhaps the old format, one JSON object: read once, rewritten by the next compaction.
        with contextlib.suppress(ValueError):
            head, end = json.JSONDecoder().raw_decode(text)
            if isinstance(head, dict) and isinstance(head.get("tasks"), dict):
                for task_id, value in head["tasks"].items():
                    at = _time(value)
                    if isinstance(task_id, str) and at is not None:
                        tasks[task_id] = (at, _record(task_id, at))
                start = end
    for line in text[start:].split("\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn by a crash
        if isinstance(record, dict):
            task_id, at = record.get("task_id"), _time(record.get("submitted_at"))
            if isinstance(task_id, str) and at is not None:
                tasks[task_id] = (at, b"\n" + line.encode())
    return tasks


def _time(value: object) -> float | None:
    """A record's time (a finite number of seconds), or None if ``value`` is not one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _fsync_folder(folder: Path) -> None:
    """Make a file's creation or rename durable: fsync the folder holding it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class State:
    """What the handlers share while the app runs: the client and the tasks it answers for."""

    client: WanClient
    store: TaskStore
    #: Every task this app answers for. The poller forgets a task once it has ended (and
    #: ``attach`` would then start watching it afresh), so finished handles are kept here...
    handles: dict[str, TaskHandle] = field(default_factory=dict)
    #: ...until a day after their submit (Unix time here), when the gateway forgets them too.
    submitted_at: dict[str, float] = field(default_factory=dict)

    def track(self, handle: TaskHandle, submitted_at: float) -> None:
        """Answer for ``handle`` from now on."""
        self.handles[handle.task_id] = handle
        self.submitted_at[handle.task_id] = submitted_at

    def forget_ended(self, now: float) -> None:
        """Stop answering for the tasks that have ended and are past the gateway's lifetime."""
        for task_id, at in list(self.submitted_at.items()):
            if now - at >= MAX_AGE and self.handles[task_id].done():
                del self.handles[task_id]
                del self.submitted_at[task_id]


SETTINGS = web.AppKey("settings", Settings)
STATE = web.AppKey("state", State)


def create_app(
    *,
    store_path: str | os.PathLike[str],
    base_url: str | None = None,
    api_key: str | None = None,
    clock: Clock | None = None,
    compact_every: float = COMPACT_EVERY,
) -> web.Application:
    """The app: ``POST /videos`` and ``GET /videos/{task_id}``.

    Args:
        store_path: the file of task ids to re-attach at start-up (JSON lines; several
            workers on one host may share it).
        base_url: the gateway (default: ``$WAN_BASE_URL``, else the documented service).
        api_key: the gateway key (default: ``$WAN_API_KEY``).
        clock: the client's clock, for tests.
        compact_every: seconds of the client's clock between two compactions of the store.
    """
    if not (math.isfinite(compact_every) and compact_every > 0):
        msg = f"compact_every must be a positive number of seconds, got {compact_every!r}"
        raise ValueError(msg)
    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = Settings(
        store_path=Path(store_path),
        base_url=base_url,
        api_key=api_key,
        clock=clock,
        compact_every=compact_every,
    )
    app.cleanup_ctx.append(wan_client)
    app.router.add_post("/videos", create_video)
    app.router.add_get("/videos/{task_id}", get_video, name="video")
    return app


async def wan_client(app: web.Application) -> AsyncIterator[None]:
    """Open the one client at start-up, re-attach the stored tasks, compact the store now and
    then; close it all at shutdown."""
    settings = app[SETTINGS]
    store = TaskStore(settings.store_path)
    async with WanClient(
        api_key=settings.api_key, base_url=settings.base_url, clock=settings.clock
    ) as client:
        state = State(client=client, store=store)
        for task_id, at in (await _stored_ids(store, client.clock.time())).items():
            try:
                # attach() only starts watching: the poller checks them all, at its own pace.
                state.track(client.attach(task_id), at)
            except ValueError:
                logger.warning("not re-attaching %r from %s: not a task id", task_id, store.path)
        app[STATE] = state
        compactor = asyncio.create_task(_compact_periodically(state, settings.compact_every))
        try:
            yield
        finally:
            compactor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await compactor


async def _stored_ids(store: TaskStore, now: float) -> dict[str, float]:
    """The ids to re-attach, compacting the store on the way if it can be."""
    try:
        return await anyio.to_thread.run_sync(store.compact, now)
    except OSError:
        logger.exception("cannot compact the task store %s: re-attaching its ids as is", store.path)
    stored = await anyio.to_thread.run_sync(store.read)
    return {task_id: at for task_id, at in stored.items() if now - at < MAX_AGE}


async def _compact_periodically(state: State, every: float) -> None:
    """Drop expired tasks from the store and from memory every ``every`` seconds."""
    clock = state.client.clock
    while True:
        await clock.sleep(every)
        now = clock.time()
        state.forget_ended(now)
        try:
            await anyio.to_thread.run_sync(state.store.compact, now)
        except Exception:
            logger.exception(
                "cannot compact the task store %s; next try in %g s", state.store.path, every
            )


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
    submitted_at = state.client.clock.time()
    state.track(handle, submitted_at)
    try:
        await state.store.add(handle.task_id, submitted_at)
    except Exception:
        # The task exists and is billed: its caller gets its id whatever the store says (a
        # 500 would make it retry, and pay for a second video).
        logger.exception(
            "task %s was submitted but could not be stored in %s: it will not be re-attached "
            "after a restart",
            handle.task_id,
            state.store.path,
        )
    location = str(request.app.router["video"].url_for(task_id=handle.task_id))
    body = {"task_id": handle.task_id, "status_url": location}
    return json_response(body, status=202, headers={"Location": location})


async def get_video(request: web.Request) -> web.Response:
    """The task as the shared poller last saw it: no gateway request per call. A task of
    another worker is answered from the fleet's store (with ``WAN_REDIS_URL``)."""
    state = request.app[STATE]
    task_id = request.match_info["task_id"]
    handle = state.handles.get(task_id)
    if handle is not None:
        return json_response(describe(handle))
    snapshot = None
    if state.client.store is not None:  # without one, this worker knows only its own
        with contextlib.suppress(ValueError):  # not a task id
            snapshot = await state.client.latest(task_id)
    if snapshot is None:
        return _error(404, "not_found", "no video with this task id was submitted here")
    return json_response(describe_snapshot(snapshot))


def describe_snapshot(snapshot: TaskSnapshot) -> dict[str, Any]:
    """A stored snapshot (another worker's task) as JSON, as :func:`describe` answers."""
    body: dict[str, Any] = {
        "task_id": snapshot.task_id,
        "status": snapshot.status.value,
        "done": snapshot.is_terminal,
        "progress": snapshot.progress,
    }
    if snapshot.updated_at is not None:
        body["updated_at"] = snapshot.updated_at.isoformat()
    if snapshot.status is TaskStatus.SUCCESS:
        body["video_url"] = snapshot.video_url
    elif snapshot.status is TaskStatus.FAILURE:
        body["error"] = {
            "type": "TaskFailed",
            "code": snapshot.fail_code,
            "message": snapshot.fail_message,
        }
    return body


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
    """aiohttp's own error answers (404, 405, 413, a crash's 500) in JSON too, like the app's;
    ``X-Worker`` on every answer says which worker process gave it."""
    response = await _json_errors(request, handler)
    response.headers["X-Worker"] = str(os.getpid())
    return response


async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        # reuse_port: several worker processes listen on one port, the kernel spreads the
        # connections between them.
        await web.TCPSite(runner, args.host, args.port, reuse_port=args.workers > 1).start()
        print(
            f"worker {os.getpid()} serving on http://{args.host}:{args.port}/videos; "
            "Ctrl-C to stop",
            flush=True,
        )
        # SIGTERM (a deploy, or the first worker stopping the others) closes cleanly: the
        # client hands its unfinished tasks over to the fleet at once.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main() -> None:
    """Serve the app until Ctrl-C."""
    parser = argparse.ArgumentParser(description="A video backend on wan_async.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--store",
        default="tasks.json",
        help="task ids to re-attach at start (workers on one host may share it)",
    )
    parser.add_argument("--simulate", action="store_true", help="use the built-in simulator")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on the port (set WAN_REDIS_URL so that each answers for all)",
    )
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.simulate and args.workers > 1:
        parser.error(
            "--simulate runs a simulator per process: for several workers run "
            "`python -m wan_async.testing` and point WAN_BASE_URL at it"
        )
    children = []
    for _ in range(args.workers - 1):
        # Forked before any event loop exists: each worker is a process of its own.
        pid = os.fork()
        if pid == 0:
            children = []
            break
        children.append(pid)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
