"""A request's video, from its body or an allowed URI, to test views, within the replica's limits.

Whatever a client sends costs a 4xx with a JSON reason, never the replica: a body over
``serve.max_upload_bytes`` is refused before it is read whole (413), an empty one is a 400, a file
that is not a video or is cut short a 422, a URI outside ``serve.allowed_uri_prefixes`` a 403 (the
default allows none: a client must not make the replica read its disks or buckets), one that names
nothing a 404. Decoding runs in the replica's decode threads, off the event loop, through the one
path every command uses (:func:`~pipelines.evaluation.evaluate.load_views`); a
:class:`DeadlineReader` under it stops PyAV at its next read once ``serve.decode_timeout_s`` has
passed, and the request gets its answer (422) at the deadline whatever PyAV is doing.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import posixpath
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Iterator

import torch

from aim_core.config import Config
from aim_core.storage import Location, is_uri, scheme
from aim_core.video import VideoDecodeError

from pipelines.evaluation.evaluate import load_views


class RequestError(Exception):
    """A request the replica refuses: the HTTP status and the reason, for the JSON answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DecodeTimeout(Exception):
    """Raised by :class:`DeadlineReader` once the request's decode time is spent."""


class DeadlineReader(io.RawIOBase):
    """A seekable binary file that refuses to be read after ``deadline`` (``time.monotonic``).

    PyAV reads its input through ``read``/``seek`` as it demuxes, and passes an exception raised
    there on to its caller, so decoding stops at the next read past the deadline.
    """

    def __init__(self, raw: IO[bytes], deadline: float, name: str) -> None:
        super().__init__()
        self.raw, self.deadline, self.name = raw, deadline, name

    def _check(self) -> None:
        if time.monotonic() > self.deadline:
            raise DecodeTimeout(self.name)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._check()
        data = self.raw.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check()
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


# ----------------------------------------------------------------------------------------------
# What a request names
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Upload:
    """A video sent as the request body."""

    data: bytes

    @contextmanager
    def open(self, max_bytes: int) -> Iterator[IO[bytes]]:
        yield io.BytesIO(self.data)

    @property
    def name(self) -> str:
        return "upload"


@dataclass(frozen=True)
class StoredVideo:
    """A video the replica reads itself: a local path or a URI the policy allowed."""

    location: str

    @contextmanager
    def open(self, max_bytes: int) -> Iterator[IO[bytes]]:
        from pyarrow.fs import FileType

        try:
            where = Location.of(self.location)
            info = where.info()
        except Exception as exc:  # pyarrow raises several types for bad or unreachable URIs
            raise RequestError(422, f"{self.location}: cannot open ({exc})") from None
        if info.type != FileType.File:
            raise RequestError(404, f"{self.location}: no such file")
        if info.size > max_bytes:
            raise RequestError(413, f"{self.location}: {info.size} bytes, over the limit of "
                                    f"{max_bytes} (serve.max_upload_bytes)")
        with where.fs.open_input_file(where.path) as handle:
            yield handle

    @property
    def name(self) -> str:
        return self.location


VideoSource = Upload | StoredVideo


@dataclass(frozen=True)
class UriPolicy:
    """Which locations a JSON request's ``uri`` may name: under one of ``prefixes`` (absolute
    folders, or URI prefixes such as ``s3://bucket/videos/``), once ``..`` and links are resolved.
    """

    prefixes: tuple[str, ...] = ()

    def check(self, uri: str) -> str:
        """The location to read, or :class:`RequestError` 403 naming ``uri``."""
        location = _normalised(uri)
        if location is not None and any(_under(location, _normalised(p) or p)
                                         for p in self.prefixes):
            return location
        why = ("this server reads uploads only (serve.allowed_uri_prefixes is empty)"
               if not self.prefixes else
               "it is outside the locations this server may read (serve.allowed_uri_prefixes)")
        raise RequestError(403, f"may not read {uri!r}: {why}")


def _normalised(uri: str) -> str | None:
    """An absolute local path with links resolved, or a URI without ``.`` / ``..`` segments;
    None for a relative path."""
    if scheme(uri) == "file":
        uri = uri[len("file://"):]
    if not is_uri(uri):
        return os.path.realpath(uri) if os.path.isabs(uri) else None
    head, _, path = uri.partition("://")
    if any(part in (".", "..") for part in path.split("/")):
        return None
    return f"{head.lower()}://{posixpath.normpath(path) if path else ''}"


def _under(location: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return location == prefix or location.startswith(prefix + "/")


def video_source(body: bytes, content_type: str, policy: UriPolicy) -> VideoSource:
    """The body as an upload, or a JSON ``{"uri": ...}`` checked against ``policy``."""
    if not body:
        raise RequestError(400, 'empty request body: send the video file as the body, or JSON '
                                '{"uri": "..."}')
    if not content_type.split(";")[0].strip().lower() == "application/json":
        return Upload(body)
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise RequestError(400, f"the JSON body does not parse ({exc})") from None
    if not isinstance(request, dict) or not isinstance(request.get("uri"), str):
        raise RequestError(400, 'a JSON body is {"uri": "<path or URI of a video>"}')
    unknown = sorted(set(request) - {"uri"})
    if unknown:
        raise RequestError(400, f"{unknown[0]}: unknown field; a JSON body has only \"uri\"")
    return StoredVideo(policy.check(request["uri"]))


async def read_body(content_length: str | None, chunks: AsyncIterator[bytes],
                    max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``max_bytes``."""
    over = f"over the upload limit of {max_bytes} bytes (serve.max_upload_bytes)"
    if content_length and content_length.isdigit() and int(content_length) > max_bytes:
        raise RequestError(413, f"a body of {content_length} bytes is {over}")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"the body is {over}")
        parts.append(chunk)
    return b"".join(parts)


# ----------------------------------------------------------------------------------------------
# Decoding within the time limit
# ----------------------------------------------------------------------------------------------

def decode_views(source: VideoSource, cfg: Config, deadline: float, max_bytes: int
                 ) -> torch.Tensor:
    """The model's test views of ``source`` (blocking: runs in a decode thread)."""
    try:
        with source.open(max_bytes) as raw:
            return load_views(DeadlineReader(raw, deadline, source.name), cfg)
    except VideoDecodeError as exc:
        raise RequestError(422, f"not a readable video: {exc}") from None


async def decode_within(executor: Executor, source: VideoSource, cfg: Config, limit_s: float,
                        max_bytes: int) -> torch.Tensor:
    """:func:`decode_views` in ``executor``, answered within ``limit_s`` of its start (time spent
    waiting for a free decode thread does not count)."""
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    def job() -> torch.Tensor:
        loop.call_soon_threadsafe(started.set)
        return decode_views(source, cfg, time.monotonic() + limit_s, max_bytes)

    future = loop.run_in_executor(executor, job)
    timeout = RequestError(422, f"{source.name}: decoding took longer than the limit of "
                                f"{limit_s:g} s (serve.decode_timeout_s)")
    await started.wait()
    try:
        return await asyncio.wait_for(future, limit_s)
    except (asyncio.TimeoutError, DecodeTimeout):
        raise timeout from None
