"""A video stored as JPEG frames: one zip file per video, read one frame at a time.

A prepared data set may keep its videos as frames rather than as a compressed stream, so that a
training clip costs exactly its sampled frames and no more. The archive is a plain zip (stored, not
deflated: JPEG is compressed already), so ``unzip`` shows what is inside:

- ``frames.json``: ``{"format": "aim-video/jpeg-frames", "version": 1, "num_frames", "fps",
  "width", "height"}``;
- ``000000.jpg``, ``000001.jpg``, ...: the frames in presentation order, upright, RGB JPEG.

Frames encode and decode with libjpeg-turbo through Pillow (torchvision's JPEG functions give the
same bytes and pixels but are deprecated since 0.29). Readers should go
through :func:`aim_core.video.decode_frames`, which recognises an archive by its first bytes, so a
prepared set reads like any other.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Union

import numpy as np
from PIL import Image

ArchiveSource = Union[str, "os.PathLike[str]", IO[bytes]]

FORMAT = "aim-video/jpeg-frames"
VERSION = 1
META_NAME = "frames.json"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class ArchiveInfo:
    """What ``frames.json`` says about the archive's frames."""

    num_frames: int
    fps: float
    width: int
    height: int


def frame_name(index: int) -> str:
    return f"{index:06d}.jpg"


def is_frame_archive(source: ArchiveSource) -> bool:
    """True when ``source`` starts like a zip file (a file-like source is rewound after peeking)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as handle:
                return handle.read(4) == _ZIP_MAGIC
        except OSError:
            return False
    if not hasattr(source, "seek"):
        return False
    source.seek(0)
    head = source.read(4)
    source.seek(0)
    return head == _ZIP_MAGIC


class FrameArchive:
    """An open archive: :attr:`info` and :meth:`read` of single frames. Use as a context manager.

    Raises ``ValueError`` for a zip that is not a frame archive (no or wrong ``frames.json``).
    """

    def __init__(self, source: ArchiveSource) -> None:
        self._zip = zipfile.ZipFile(source)
        try:
            self.info = _read_info(self._zip)
        except Exception:
            self._zip.close()
            raise

    def __enter__(self) -> FrameArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as uint8 RGB ``(H, W, 3)``."""
        with Image.open(io.BytesIO(self._zip.read(frame_name(index)))) as image:
            return np.asarray(image.convert("RGB"))


def _read_info(archive: zipfile.ZipFile) -> ArchiveInfo:
    try:
        meta = json.loads(archive.read(META_NAME))
    except KeyError:
        raise ValueError(f"a zip file without {META_NAME} is not a frame archive") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{META_NAME}: expected format {FORMAT!r} version {VERSION}, got "
                         f"{meta.get('format')!r} version {meta.get('version')!r}")
    info = ArchiveInfo(num_frames=int(meta["num_frames"]), fps=float(meta["fps"]),
                       width=int(meta["width"]), height=int(meta["height"]))
    if info.num_frames <= 0:
        raise ValueError(f"{META_NAME}: no frames (num_frames {info.num_frames})")
    return info


def write_frame_archive(dest: str | os.PathLike[str] | IO[bytes], frames: Iterable[np.ndarray],
                        fps: float, quality: int = 90) -> ArchiveInfo:
    """Write uint8 RGB ``(H, W, 3)`` frames (all the same size) as an archive; returns its info.

    Frames are encoded and written as they come (``frames.json`` goes last, when the count is
    known), so memory stays at one frame whatever the video's length.
    """
    count, size = 0, None
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:
        for frame in frames:
            if size is None:
                size = frame.shape[:2]
            elif frame.shape[:2] != size:
                raise ValueError(f"frame {count} is {frame.shape[1]}x{frame.shape[0]}, "
                                 f"the first was {size[1]}x{size[0]}")
            data = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(frame)).save(data, "JPEG", quality=quality)
            archive.writestr(frame_name(count), data.getvalue())
            count += 1
        if size is None:
            raise ValueError("a frame archive needs at least one frame")
        info = ArchiveInfo(num_frames=count, fps=float(fps), width=int(size[1]),
                           height=int(size[0]))
        archive.writestr(META_NAME, json.dumps({"format": FORMAT, "version": VERSION,
                                                **info.__dict__}))
    return info
