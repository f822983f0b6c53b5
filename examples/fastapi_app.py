"""A FastAPI backend on wan_async, for several worker processes behind one port.

Run it with the fleet's Redis store, so that every worker answers for every task::

    pip install 'wan-async[redis]' fastapi uvicorn
    WAN_API_KEY=... WAN_REDIS_URL=redis://localhost:6379/0 \\
        uvicorn --app-dir examples fastapi_app:app --workers 4 --port 8080
    curl -X POST localhost:8080/videos -H 'content-type: application/json' \\
        -d '{"prompt": "a paper boat", "size": "1280*720"}'
    curl localhost:8080/videos/<task_id>

The recipe:

- **One client per worker, opened in the lifespan**: ``WanClient()`` reads ``WAN_API_KEY``,
  ``WAN_BASE_URL`` and ``WAN_REDIS_URL``; with the last, the workers form one fleet: each task
  is polled by the worker that submitted it (another adopts it if that one dies), the request
  budget is one for the key, and the status of any task is in the store.
- ``POST /videos`` validates the body (400 with every problem), submits, and answers 202 with
  the task id at once. A submit whose answer was lost is a 502 that says so: the task may
  exist, so the caller must not simply retry.
- ``GET /videos/{task_id}`` answers from ``client.latest(task_id)``: the store's snapshot,
  whichever worker submitted the task, at no gateway request. ``X-Worker`` says which worker
  process answered.

Without ``WAN_REDIS_URL`` each worker knows only its own tasks (a 404 on the others): a
multi-worker deployment needs the Redis store.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from wan_async import (
    BadRequestError,
    ModelNotFoundError,
    RateLimitedError,
    SubmitOutcomeUnknown,
    TaskSnapshot,
    TaskStatus,
    ValidationError,
    VideoRequest,
    WanClient,
    WanError,
)

DEFAULT_MODEL = "wan2.6-t2v"
#: Request fields a caller may set (``prompt`` is required).
FIELDS = frozenset(field.name for field in attrs.fields(VideoRequest))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client for the worker's lifetime; closing it hands its unfinished tasks over to
    the other workers at once (with the store)."""
    async with WanClient() as client:
        app.state.client = client
        yield


app = FastAPI(title="videos on wan_async", lifespan=lifespan)


@app.middleware("http")
async def worker_header(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Say which worker process answered (for looking into a multi-worker deployment)."""
    response = await call_next(request)
    response.headers["X-Worker"] = str(os.getpid())
    return response


def _client(request: Request) -> WanClient:
    client: WanClient = request.app.state.client
    return client


@app.post("/videos", status_code=202)
async def create_video(body: dict[str, Any], request: Request) -> JSONResponse:
    """Validate, submit, and answer 202 with the task id without waiting for the video."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise HTTPException(
            400, {"error": "invalid_request", "message": f"unknown fields {unknown}"}
        )
    if "prompt" not in body:
        raise HTTPException(400, {"error": "invalid_request", "message": "prompt is required"})
    try:
        video = VideoRequest(**{"model": DEFAULT_MODEL, **body})
    except ValidationError as exc:
        problems = [{"field": p.field, "allowed": p.allowed} for p in exc.problems]
        raise HTTPException(
            400,
            {"error": "invalid_request", "message": str(exc).splitlines()[0], "problems": problems},
        ) from None
    try:
        handle = await _client(request).submit(video)
    except WanError as exc:
        raise _submit_error(exc) from None
    location = f"/videos/{handle.task_id}"
    return JSONResponse(
        {"task_id": handle.task_id, "status_url": location},
        status_code=202,
        headers={"Location": location},
    )


@app.get("/videos/{task_id}")
async def get_video(task_id: str, request: Request) -> dict[str, Any]:
    """The task as its owner last saw it, from this worker or the fleet's store."""
    try:
        snapshot = await _client(request).latest(task_id)
    except ValueError:
        snapshot = None
    if snapshot is None:
        raise HTTPException(404, {"error": "not_found", "message": "no video with this task id"})
    return describe(snapshot)


def describe(snapshot: TaskSnapshot) -> dict[str, Any]:
    """A snapshot as JSON: status, progress, and the video URL or the failure once ended."""
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
        body["error"] = {"code": snapshot.fail_code, "message": snapshot.fail_message}
    return body


def _invalid(message: str, **extra: object) -> HTTPException:
    return HTTPException(400, {"error": "invalid_request", "message": message, **extra})


def _submit_error(exc: WanError) -> HTTPException:
    """A failed submit as an answer the caller can act on."""
    if isinstance(exc, ModelNotFoundError):
        return HTTPException(400, {"error": "model_not_found", "message": exc.message or str(exc)})
    if isinstance(exc, SubmitOutcomeUnknown):
        # Never resubmit blindly: the task may exist and be billed.
        return HTTPException(502, {"error": "submit_outcome_unknown", "message": str(exc)})
    if isinstance(exc, BadRequestError):
        return HTTPException(400, {"error": "rejected_upstream", "message": str(exc)})
    if isinstance(exc, RateLimitedError):
        return HTTPException(503, {"error": "busy", "message": "the gateway asks to slow down"})
    return HTTPException(502, {"error": "gateway_error", "message": str(exc)})
