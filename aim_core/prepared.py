"""Prepared storage: each video stored once with its short side and frame rate fixed, in a form
whose clips cost little to decode.

Raw videos come at any size and rate, mostly H.264 with a keyframe every 250 frames, so a sampled
clip decodes far more frames than it returns. A prepared copy fixes both (so the model's
``frame_interval`` means the same time span in every video) and stores either

- ``h264``: an MP4 with a keyframe every ``gop`` frames (closed GOPs, ``moov`` first so object
  stores read it in one pass), where seek-aware decoding reaches any frame by decoding at most
  ``gop`` frames; or
- ``jpeg``: a JPEG-frame archive (:mod:`aim_core.frame_archive`), where a frame costs one JPEG.

Both read back through :func:`aim_core.video.decode_frames` and :func:`~aim_core.video.probe_video`
like any video. The default (H.264, a keyframe every 2 frames, no B-frames, x264's ``fastdecode``
tune, crf 18) is the smallest form that ``benchmarks/decode.py`` measured within the budget of
20 ms of CPU per 8x16 clip for decoding plus augmentation with room for a loaded machine: 15 ms
against the raw file's 56, at 14x its bytes, keeping 35.5 dB of the raw frames (the README has the
table). Sparser keyframes trade CPU for bytes (GOP 4: 17 ms, 20 under load, at 0.66x the bytes);
B-frames cost 25% more CPU after a seek (the decoder runs on to the next anchor before it can show
a wanted frame), CABAC and deblocking nearly twice as much; all-intra and JPEG frames save another
3-4 ms, at 4 dB less, JPEG at 2.3x the bytes.

The rate is changed by frame selection, not interpolation: prepared frame ``j`` is the source
frame on screen at time ``j / fps`` (the last one shown at or before it, by the source's own
timestamps, so variable-rate sources come out at a constant rate); frames are dropped or
repeated, never blended, so every prepared frame is a real frame of the source.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .config import X264_PARAMS, PrepareConfig
from .frame_archive import write_frame_archive
from .storage import Location, file_sha256, is_uri
from .video import Keyframes, Source, iter_frames, probe_video

@dataclass(frozen=True)
class PreparedVideo:
    """What one prepared file holds, for the data set's manifest."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float             # seconds: num_frames / fps
    size_bytes: int
    sha256: str                 # of the prepared file
    keyframes: Keyframes | None  # h264: for decode_frames(keyframes=...); jpeg: None


def prepared_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Upright ``(width, height)`` with the short side fixed and the long side rounded to even."""
    long_side = max(width, height) * short_side / min(width, height)
    even = max(2, 2 * round(long_side / 2))
    return (even, short_side) if width >= height else (short_side, even)


def resample(frames: Iterable[tuple[Fraction, np.ndarray]], rate: Fraction,
             last_duration: Fraction) -> Iterator[np.ndarray]:
    """The frame on screen at each instant ``j / rate`` of the source's span.

    ``frames`` are ``(time, image)`` in presentation order, times in seconds from the first; a
    frame stays on screen until the next one, the last for ``last_duration``. So 30 fps to 30 is
    the identity, 30 to 15 keeps every second frame, 30 to 25 drops one in six.
    """
    j, current, shown_at = 0, None, Fraction(0)
    for time, image in frames:
        while current is not None and j / rate < time:
            yield current
            j += 1
        current, shown_at = image, time
    if current is None:
        return
    while j / rate < shown_at + last_duration:
        yield current
        j += 1


def prepare_video(source: Source | np.ndarray, dest: str | os.PathLike[str],
                  fmt: PrepareConfig, *, source_fps: float | None = None) -> PreparedVideo:
    """Convert one video into prepared storage at ``dest`` (a local path or a URI).

    ``source`` is a video file (or file-like), or uint8 RGB ``(T, H, W, 3)`` frames shown at
    ``source_fps``. Nothing appears at ``dest`` unless the whole file was written: a local file is
    written under a temporary name and renamed, a URI is uploaded in one request.
    Unreadable sources raise :class:`aim_core.video.VideoDecodeError`.
    """
    fmt.validate()
    frames, size, last_duration = _source(source, fmt.short_side, source_fps)
    resampled = resample(frames, fmt.rate, last_duration)
    dest = os.fspath(dest)
    if is_uri(dest):
        with tempfile.TemporaryDirectory(prefix="aim_prepare_") as folder:
            local = os.path.join(folder, "video" + fmt.suffix)
            _write(resampled, local, size, fmt)
            Location.of(dest).write_bytes(Path(local).read_bytes())
            return _describe_file(local, dest, fmt)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    partial = os.path.join(os.path.dirname(dest) or ".",
                           f".{os.path.basename(dest)}.partial-{os.getpid()}")
    try:
        _write(resampled, partial, size, fmt)
        os.replace(partial, dest)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return _describe_file(dest, dest, fmt)


def _source(source: Source | np.ndarray, short_side: int, source_fps: float | None
            ) -> tuple[Iterator[tuple[Fraction, np.ndarray]], tuple[int, int], Fraction]:
    """Timed frames at the prepared size, that size, and how long the last frame is shown."""
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != np.uint8 or not len(source):
            raise ValueError(f"frames: expected uint8 (T, H, W, 3) with T >= 1, got "
                             f"{source.dtype} {source.shape}")
        if not source_fps or source_fps <= 0:
            raise ValueError(f"source_fps: expected a positive number with frames, got "
                             f"{source_fps!r}")
        rate = Fraction(source_fps).limit_denominator(1001)
        size = prepared_size(source.shape[2], source.shape[1], short_side)
        return _resized(source, rate, size), size, 1 / rate
    info = probe_video(source)
    size = prepared_size(info.width, info.height, short_side)
    rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(30)
    return iter_frames(source, size), size, 1 / rate


def _resized(frames: np.ndarray, rate: Fraction, size: tuple[int, int]
             ) -> Iterator[tuple[Fraction, np.ndarray]]:
    for index, image in enumerate(frames):
        if image.shape[1::-1] != size:  # swscale, as decoding resizes
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            image = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
        yield index / rate, image


def _write(frames: Iterable[np.ndarray], path: str, size: tuple[int, int],
           fmt: PrepareConfig) -> None:
    if fmt.codec == "jpeg":
        write_frame_archive(path, frames, float(fmt.rate), quality=fmt.jpeg_quality)
    else:
        write_h264(path, frames, size, fmt)


def write_h264(path: str, frames: Iterable[np.ndarray], size: tuple[int, int],
               fmt: PrepareConfig) -> None:
    """Encode RGB frames of ``size`` as MP4/H.264 with a keyframe exactly every ``fmt.gop``.

    Scene-cut keyframes are off so the seek cost is the same everywhere; x264's GOPs are closed
    by default, so every keyframe is a clean entry point. The macroblock tree is off
    (``X264_PARAMS``): x264 (core 165) reads uninitialised memory in it on small frames, so the
    same frames could give another file from one process to the next; off, a prepared file
    depends only on its source. With keyframes this close it has little to propagate: on 340x256
    Kinetics-like footage at GOP 2, off gave 10-16% fewer bytes at 0.1 dB less against the
    generated frames (0.9 dB less against the raw file's frames, ``benchmarks/decode.py``).
    """
    with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fmt.rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = fmt.gop
        stream.codec_context.max_b_frames = fmt.bframes
        options = {"crf": str(fmt.crf), "preset": fmt.preset, "sc_threshold": "0",
                   "x264-params": X264_PARAMS}
        stream.options = {**options, "tune": "fastdecode"} if fmt.fast_decode else options
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            frame.time_base = 1 / fmt.rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _describe_file(local: str, name: str, fmt: PrepareConfig) -> PreparedVideo:
    info = probe_video(local, keyframes=fmt.codec == "h264")
    return PreparedVideo(path=name, num_frames=info.num_frames, fps=info.fps, width=info.width,
                         height=info.height, duration=info.num_frames / info.fps,
                         size_bytes=os.path.getsize(local), sha256=file_sha256(local),
                         keyframes=info.keyframes)
