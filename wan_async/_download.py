"""Saving a finished video from the storage host (SPEC §3.3): streamed, atomic, retried.

A video URL is a signed object-storage URL on another host, valid for 24 hours after the task
finished. A download:

* never sends the gateway's ``Authorization`` header (:meth:`Transport.stream`), and never logs
  the URL's query string, which is the signature;
* writes each chunk, as it arrives, to a temporary file beside the destination (same
  filesystem), off the event loop: memory stays flat whatever the video's size;
* checks the length received against ``Content-Length``, fsyncs, then moves the file into place
  in one atomic step: the destination is absent or the whole video, never a part. Any failure
  (cancellation included) removes the temporary file;
* is retried like any idempotent GET (connection errors, timeouts, 408, 429, 5xx, bodies cut
  short) with the client's :class:`RetryPolicy`, but outside the gateway's request budget (it
  is another host) and bounded by its own semaphore, apart from polls and submits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import secrets
import time
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import anyio

from ._clock import Clock
from ._exceptions import DeadlineExceeded, IncompleteDownload, StorageError, VideoURLExpired
from ._models import VideoResult
from ._retry import RetryPolicy, call_with_retries
from ._transport import Stream, Transport, redact_url

logger = logging.getLogger("wan_async")

#: Bytes read (and written) at a time: few thread hops, and still a flat memory profile.
_CHUNK = 1 << 18
#: Seconds after which a temporary file nobody writes to is a killed download's leftover.
_STALE_PART = 600.0
#: Words by which a 400 from the storage host says the URL has expired (OSS, S3).
_EXPIRY_HINTS = ("expired", "accessdenied")


async def download(
    source: VideoResult | str,
    path: str | os.PathLike[str],
    *,
    transport: Transport,
    policy: RetryPolicy,
    clock: Clock,
    rng: random.Random,
    slots: anyio.Semaphore,
    overwrite: bool,
    timeout: float | None,
) -> Path:
    """Save the video of ``source`` at ``path`` (see :meth:`WanClient.download`).

    Args:
        source: a finished task's result, or a video URL.
        path: the file to write, or an existing directory to write ``<task_id>.mp4`` in.
        transport: fetches the URL without the gateway's key.
        policy: how transient failures are retried.
        clock: where retry delays and ``timeout`` are measured.
        rng: the jitter of retry delays.
        slots: bounds the downloads running at once (held per attempt, not while waiting
            to retry).
        overwrite: replace an existing file.
        timeout: clock seconds for the whole download, retries and waiting for a slot included.

    Returns:
        The path of the saved file.

    Raises:
        FileExistsError: the file exists and ``overwrite`` is false.
        VideoURLExpired: the storage host refused the signed URL.
        DeadlineExceeded: ``timeout`` passed; nothing was saved.
        WanError: the download failed for good; nothing was saved.
    """
    url, task_id = _source(source)
    shown = redact_url(url)
    name = _file_name(task_id, url)
    dest = await anyio.to_thread.run_sync(_destination, Path(path), name, overwrite)
    what = f"download of task {task_id}" if task_id else f"download of {shown}"

    async def once() -> Path:
        async with slots:
            return await _attempt(transport, url, dest, task_id=task_id, overwrite=overwrite)

    async def run() -> Path:
        return await call_with_retries(
            once,
            policy=policy,
            clock=clock,
            rng=rng,
            submit=False,
            # The gateway's budget counts requests to the gateway; the storage host is another.
            before_attempt=_no_budget,
            what=what,
        )

    if timeout is None:
        return await run()
    with anyio.move_on_after(max(0.0, timeout) / clock.scale):
        return await run()
    msg = f"{what} did not finish within {timeout:g} s; nothing was saved to {str(dest)!r}"
    raise DeadlineExceeded(msg, task_id=task_id)


async def _attempt(
    transport: Transport, url: str, dest: Path, *, task_id: str | None, overwrite: bool
) -> Path:
    """One try: stream into a temporary file and move it into place, or leave nothing."""
    try:
        async with transport.stream(url) as stream:
            # The file is made only once the answer is a 2xx: an expired URL touches no disk.
            part = await _PartFile.create(dest)
            try:
                received = await _copy(stream, part)
                await part.commit(dest, overwrite=overwrite)
                logger.debug("saved %s (%d bytes) to %s", stream.url, received, dest)
            except BaseException:
                # Shielded: a cancelled download (a timeout) must still clean up after itself.
                with anyio.CancelScope(shield=True):
                    await part.discard()
                raise
    except StorageError as exc:
        if _is_expired(exc):
            raise VideoURLExpired(
                task_id=task_id,
                status=exc.status,
                code=exc.code,
                message=exc.message,
                request_id=exc.request_id,
            ) from exc
        raise
    return dest


async def _copy(stream: Stream, part: _PartFile) -> int:
    """Write the body chunk by chunk; return its length once checked."""
    received = 0
    while chunk := await stream.read(_CHUNK):
        await part.write(chunk)
        received += len(chunk)
    expected = stream.content_length
    # With a Content-Encoding the declared length is the encoded one: nothing to compare.
    if expected is not None and not stream.encoded and received != expected:
        raise IncompleteDownload(url=stream.url, expected=expected, received=received)
    return received


def _is_expired(error: StorageError) -> bool:
    """Whether the storage host's error means the signed URL is no longer usable.

    OSS answers 403 ``AccessDenied`` "Request has expired" (and 403 for a bad signature, whose
    remedy is the same: a fresh URL); some stores answer 400 with the same words.
    """
    if error.status == 403:
        return True
    if error.status != 400:
        return False
    said = " ".join(filter(None, (error.code, error.message, error.snippet))).lower()
    return any(hint in said for hint in _EXPIRY_HINTS)


class _PartFile:
    """A temporary file beside the destination, written off the event loop."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self._file = file

    @classmethod
    async def create(cls, dest: Path) -> _PartFile:
        """Create a new, empty temporary file in ``dest``'s folder."""
        return await anyio.to_thread.run_sync(cls._create, dest)

    @classmethod
    def _create(cls, dest: Path) -> _PartFile:
        # Hidden, and unique per attempt. Exclusive creation never reuses someone else's file;
        # unlike mkstemp's 0600, the mode follows the umask, as the final file's should.
        path = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
        return cls(path, path.open("xb"))

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""
        await anyio.to_thread.run_sync(self._file.write, chunk)

    async def commit(self, dest: Path, *, overwrite: bool) -> None:
        """Flush and fsync the file, then move it to ``dest`` in one atomic step.

        Raises:
            FileExistsError: ``dest`` appeared meanwhile and ``overwrite`` is false.
        """
        await anyio.to_thread.run_sync(self._commit, dest, overwrite)

    def _commit(self, dest: Path, overwrite: bool) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if overwrite:
            os.replace(self.path, dest)
        else:
            _move_no_clobber(self.path, dest)
        _fsync_dir(dest.parent)

    async def discard(self) -> None:
        """Close and remove the file; never raises (the error that led here matters more)."""
        await anyio.to_thread.run_sync(self._discard)

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def _move_no_clobber(source: Path, dest: Path) -> None:
    """Move ``source`` to ``dest`` atomically unless ``dest`` exists.

    ``os.replace`` would silently replace a file made after the check that opened the download
    (say, by a concurrent download to the same path); a hard link fails instead.
    """
    try:
        os.link(source, dest)
    except FileExistsError:
        raise _exists(dest) from None
    except OSError:
        # A filesystem without hard links: check, then replace (a race of microseconds).
        if os.path.lexists(dest):
            raise _exists(dest) from None
        os.replace(source, dest)
        return
    source.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _source(source: VideoResult | str) -> tuple[str, str | None]:
    """The URL and task id (if known) of what to download."""
    if isinstance(source, VideoResult):
        url, task_id = source.video_url, source.task_id
    elif isinstance(source, str):
        url, task_id = source, None
    else:
        msg = f"download() takes a VideoResult or a URL, got {type(source).__name__}"
        raise TypeError(msg)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        msg = f"the video URL is not an http(s) URL: {redact_url(url)!r}"
        raise ValueError(msg)
    return url, task_id


def _file_name(task_id: str | None, url: str) -> str | None:
    """The file name for a download into a directory, or ``None`` if none is safe."""
    if task_id is not None:
        name = f"{task_id}.mp4"
    else:
        name = PurePosixPath(unquote(urlsplit(url).path)).name
        if name and not PurePosixPath(name).suffix:
            name += ".mp4"
    # Task ids and URLs are opaque: refuse a name that would climb out of the directory.
    if name in ("", ".", "..", ".mp4") or any(c in name for c in "/\\\0"):
        return None
    return name


def _destination(path: Path, name: str | None, overwrite: bool) -> Path:
    """The file to write: ``path``, or ``name`` inside ``path`` when it is a directory.

    Also removes what killed downloads to the same file left behind (see
    :func:`_remove_stale_parts`).
    """
    if path.is_dir():
        if name is None:
            msg = f"cannot name a file after this task or URL; pass a file path, not {str(path)!r}"
            raise ValueError(msg)
        path = path / name
        if path.is_dir():
            msg = f"{str(path)!r} is a directory"
            raise IsADirectoryError(msg)
    if not path.parent.is_dir():
        msg = (
            f"cannot save to {str(path)!r}: the folder {str(path.parent)!r} does not exist; "
            "create it first (nothing was downloaded)"
        )
        raise FileNotFoundError(msg)
    if not overwrite and os.path.lexists(path):
        raise _exists(path)
    _remove_stale_parts(path)
    return path


def _remove_stale_parts(dest: Path) -> None:
    """Remove temporary files of earlier downloads to ``dest`` that nobody writes any more.

    A download that was killed (``kill -9``, a power cut) cannot remove its own. A live one
    writes a chunk at least every read timeout, so one untouched for ``_STALE_PART`` seconds
    is a leftover, not another process's download in progress.
    """
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.[0-9a-f]{{12}}\.part")
    cutoff = time.time() - _STALE_PART
    with contextlib.suppress(OSError):
        for entry in os.scandir(dest.parent):
            if pattern.fullmatch(entry.name) and entry.stat().st_mtime < cutoff:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(f"{str(path)!r} already exists; pass overwrite=True to replace it")


async def _no_budget() -> None:
    return None
