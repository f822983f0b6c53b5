"""The object storage that serves finished videos through signed, expiring URLs (SPEC §3.3).

It runs as its own aiohttp site on its own port, so a client that sends the gateway's
``Authorization`` header to "another host" can be caught (each download records whether
it carried one).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.resources
import random
import uuid
from collections.abc import Callable
from urllib.parse import quote

from aiohttp import web

from .._clock import Clock
from ._wire import unix

ACCESS_KEY_ID = "LTAI5tFakeGatewayKey0001"
#: The bundled clip (package data), made by ``tools/make_test_video.py``.
SAMPLE_VIDEO_NAME = "test_pattern.mp4"
#: Something like the ``ftyp`` box that opens an MP4 file, so sized bytes look the part.
_MP4_HEADER = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"

_XML_ERROR = """<?xml version="1.0" encoding="UTF-8"?>
<Error>
  <Code>{code}</Code>
  <Message>{message}</Message>
  <RequestId>{request_id}</RequestId>
  <HostId>videos.fake-oss.example</HostId>
</Error>
"""


@functools.cache
def sample_video() -> bytes:
    """The bundled clip every task's video is by default: a real, playable MP4.

    A 2 s, 160x90 H.264 (yuv420p) test pattern with a quiet AAC tone, ``moov`` before
    ``mdat`` (fast start), about 32 KB.
    """
    return importlib.resources.files(__package__).joinpath(SAMPLE_VIDEO_NAME).read_bytes()


def video_content(task_id: str, size: int | None = None) -> bytes:
    """The video of ``task_id``, the same on every call.

    Args:
        task_id: the task whose video it is.
        size: ``None`` for the bundled clip (:func:`sample_video`, the same for every task);
            else ``size`` deterministic bytes behind an MP4-like header (not playable), for
            tests that need large or task-specific downloads.
    """
    if size is None:
        return sample_video()
    body = _MP4_HEADER + random.Random(f"video:{task_id}").randbytes(max(0, size))
    return body[:size]


class Signer:
    """Signs and checks download URLs with a secret only the simulator knows."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def signature(self, task_id: str, expires: int) -> str:
        """The hex signature of ``task_id``'s URL expiring at ``expires``."""
        message = f"GET\n{expires}\n/videos/{task_id}.mp4".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def url(self, base_url: str, task_id: str, expires: int) -> str:
        """A signed URL for ``task_id`` valid until Unix time ``expires``."""
        return (
            f"{base_url}/videos/{quote(task_id)}.mp4?Expires={expires}"
            f"&OSSAccessKeyId={ACCESS_KEY_ID}&Signature={self.signature(task_id, expires)}"
        )

    def valid(self, task_id: str, expires: str, signature: str) -> bool:
        """Whether ``signature`` is right for ``task_id`` and ``expires`` (as sent)."""
        if not expires.isdigit():
            return False
        expected = self.signature(task_id, int(expires))
        return hmac.compare_digest(expected, signature)


class VideoStore:
    """Answers ``GET /videos/<task_id>.mp4`` once the fault layer has let a request through.

    Args:
        clock: where "now" is read, to expire URLs.
        signer: checks the URL's signature.
        video_bytes: size of every video, or ``None`` for the bundled clip.
        produced_at: the time ``task_id``'s video was produced, or ``None`` if there is none.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        signer: Signer,
        video_bytes: int | None,
        produced_at: Callable[[str], float | None],
    ) -> None:
        self._clock = clock
        self._signer = signer
        self._video_bytes = video_bytes
        self._produced_at = produced_at

    def answer(self, request: web.Request) -> tuple[web.Response, bytes | None]:
        """The response for ``request``, and the bytes it carries when it is a success."""
        name = request.match_info["name"]
        task_id = name.removesuffix(".mp4")
        if not name.endswith(".mp4") or self._produced_at(task_id) is None:
            return _xml_error(404, "NoSuchKey", "The specified key does not exist."), None
        query = request.query
        expires = query.get("Expires", "")
        if "Signature" not in query or "OSSAccessKeyId" not in query:
            return _xml_error(403, "AccessDenied", "Anonymous access is forbidden."), None
        if not self._signer.valid(task_id, expires, query["Signature"]):
            text = "The request signature we calculated does not match the signature you provided."
            return _xml_error(403, "SignatureDoesNotMatch", text), None
        if unix(self._clock.time()) > int(expires):
            return _xml_error(403, "AccessDenied", "Request has expired."), None
        return _ranged(request, video_content(task_id, self._video_bytes))


def _ranged(request: web.Request, content: bytes) -> tuple[web.Response, bytes | None]:
    """Serve ``content`` whole, or the part a ``Range`` header asks for."""
    headers = {"Accept-Ranges": "bytes", "x-oss-request-id": _oss_request_id()}
    size = len(content)
    if "Range" not in request.headers:
        return _video(200, content, headers), content
    try:
        start, stop, _ = request.http_range.indices(size)
    except ValueError:
        start, stop = 0, 0
    if start >= stop:
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers), None
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    part = content[start:stop]
    return _video(206, part, headers), part


def _video(status: int, content: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=content, content_type="video/mp4", headers=headers)


def _xml_error(status: int, code: str, message: str) -> web.Response:
    request_id = _oss_request_id()
    body = _XML_ERROR.format(code=code, message=message, request_id=request_id)
    return web.Response(
        status=status,
        text=body,
        content_type="application/xml",
        headers={"x-oss-request-id": request_id},
    )


def _oss_request_id() -> str:
    return uuid.uuid4().hex[:24].upper()
