"""Video decoding (PyAV) and the frame-index samplers of the AIM recipes.

Decoding is the cost centre of video training, so :func:`decode_frames` does only what the
sampled indices need: it seeks to the keyframe before the first wanted frame when that is far from
the start, stops right after the last wanted frame, and converts to RGB (resizing on the way, in
swscale) only the frames that are returned. Every failure to read a file surfaces as
:class:`VideoDecodeError`, so ingest can skip and report bad files instead of dying on them.

Frame indices are presentation order, counted from 0. The samplers are pure functions of their
arguments and a ``numpy.random.Generator``; they follow mmaction2's ``SampleFrames`` as the released
AIM configs use it: dense clips (Kinetics) and ``frame_uniform`` segments (SSv2, Diving-48), with
TSN-style segments as an alternative.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, TYPE_CHECKING, Union

import av
import numpy as np

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream

    from aim_core.config import Config, DataConfig

Source = Union[str, "os.PathLike[str]", IO[bytes]]

# Below this frame index decoding from the start is about as cheap as a seek plus decoder flush.
SEEK_MIN_FRAMES = 16


class VideoDecodeError(RuntimeError):
    """A file cannot be read as video (corrupt, truncated, empty, audio-only, missing).

    The message names the source and says why; ingest catches this to skip and report the file.
    """


@contextmanager
def open_video_source(path: str) -> Iterator[str | IO[bytes]]:
    """What :func:`decode_frames` reads: a local path as is (PyAV opens it fastest), a URI
    (``s3://``, ``gs://``) as a seekable pyarrow file. A missing, empty or unreachable file fails
    here with a message naming it."""
    from pyarrow.fs import FileType

    from .storage import Location

    try:
        location = Location.of(path)
        info = location.info()
    except Exception as exc:  # pyarrow raises several types for bad or unreachable URIs
        raise VideoDecodeError(f"{path}: cannot open ({exc})") from exc
    if info.type != FileType.File:
        missing = info.type == FileType.NotFound
        raise VideoDecodeError(f"{path}: {'no such file' if missing else 'not a file'}")
    if info.size == 0:
        raise VideoDecodeError(f"{path}: empty file")
    with location.open_for_reading() as source:
        yield source


@dataclass
class VideoInfo:
    """What :func:`probe_video` learns about a file's first video stream.

    ``width`` and ``height`` are those of the upright frames :func:`decode_frames` returns (the
    coded size, swapped for a 90/270 degree rotation). ``rotation`` is the counter-clockwise angle
    (0, 90, 180 or 270) applied to coded frames to show them upright, as the display matrix says.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float
    rotation: int


# ----------------------------------------------------------------------------------------------
# Opening and probing
# ----------------------------------------------------------------------------------------------

def _describe(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


@contextmanager
def _open(source: Source) -> Iterator[tuple[InputContainer, VideoStream]]:
    """Open ``source``, yield it with its first video stream; PyAV errors become VideoDecodeError.

    File-like sources are rewound first, so the same BytesIO can be probed and then decoded.
    """
    name = _describe(source)
    if not isinstance(source, (str, os.PathLike)) and hasattr(source, "seek"):
        source.seek(0)
    try:
        container = av.open(os.fspath(source) if isinstance(source, (str, os.PathLike)) else source,
                            mode="r")
    except (av.FFmpegError, OSError) as exc:
        raise VideoDecodeError(f"{name}: cannot open as a media file ({exc})") from exc
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoDecodeError(f"{name}: no video stream (streams: {', '.join(kinds)})")
        yield container, container.streams.video[0]
    except (av.FFmpegError, OSError) as exc:
        raise VideoDecodeError(f"{name}: decoding failed ({exc})") from exc
    finally:
        container.close()


def _rotation(stream: VideoStream, frame: av.VideoFrame | None) -> int:
    """Counter-clockwise degrees in {0, 90, 180, 270} that make the frames upright.

    FFmpeg attaches the container's display matrix to decoded frames (``frame.rotation``, CCW);
    old files carry a ``rotate`` tag instead, which is clockwise. Mirroring in the matrix (rare)
    is ignored.
    """
    ccw = frame.rotation if frame is not None else 0
    if not ccw:
        tag = str(stream.metadata.get("rotate", "0")).strip()
        ccw = -int(tag) if tag.lstrip("-").isdigit() else 0
    return int(round(ccw / 90)) * 90 % 360


def rotate_upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate an (H, W, C) image counter-clockwise by ``rotation`` degrees (a multiple of 90)."""
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    return np.rot90(image, k=(rotation // 90) % 4) if rotation % 360 else image


def _first_frame_and_count(container: InputContainer,
                           stream: VideoStream,
                           count: bool) -> tuple[av.VideoFrame | None, int]:
    """Decode just the first frame (for its rotation side data) and, if asked, count packets.

    Counting demuxes without decoding: one packet per frame for the codecs we meet, and cheap.
    The final empty packet flushes the decoder, so a file with a single frame still yields it.
    """
    first, packets = None, 0
    for packet in container.demux(stream):
        if packet.size:
            packets += 1
        if first is None:
            frames = packet.decode()
            first = frames[0] if frames else None
        if first is not None and not count:
            break
    return first, packets


def probe_video(source: Source) -> VideoInfo:
    """Frame count, rate, upright size, duration and rotation of the first video stream.

    Uses the container's frame count when it has one (MP4), otherwise counts packets (MKV, WebM).
    Decodes one frame, because rotation lives in frame side data and because a file whose first
    frame does not decode is not worth sampling.
    """
    name = _describe(source)
    with _open(source) as (container, stream):
        first, packets = _first_frame_and_count(container, stream, count=not stream.frames)
        num_frames = stream.frames or packets
        if first is None or num_frames <= 0:
            raise VideoDecodeError(f"{name}: no decodable video frames")
        rotation = _rotation(stream, first)
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else (num_frames / duration if duration else 0.0)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(num_frames=num_frames, fps=fps, width=width, height=height,
                         duration=duration or (num_frames / fps if fps else 0.0), rotation=rotation)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

def _configure_threads(stream: VideoStream, threads: int) -> None:
    # AUTO lets FFmpeg use frame and slice threads; 0 asks it to pick the count.
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = max(int(threads), 0)


def _constant_rate(stream: VideoStream) -> Fraction | None:
    """The frame rate when timestamps can be trusted to map to indices, else None.

    FFmpeg's average rate equals its base (least common) rate for constant-frame-rate files; when
    they differ the file is variable-rate, and indices are counted in decode order instead.
    """
    avg, base = stream.average_rate, stream.base_rate
    if avg and base and avg == base and stream.time_base:
        return Fraction(avg)
    return None


def _counted(frames: Iterator[av.VideoFrame]) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decoders emit frames in presentation order, so counting them gives presentation indices."""
    return enumerate(frames)


def _timestamped(first: av.VideoFrame, first_index: int, frames: Iterator[av.VideoFrame],
                 start_pts: int, time_base: Fraction, fps: Fraction
                 ) -> Iterator[tuple[int, av.VideoFrame]]:
    """After a seek, derive indices from timestamps: index = (pts - start) * time_base * fps."""
    yield first_index, first
    index = first_index
    for frame in frames:
        if frame.pts is None:
            index += 1
        else:
            index = round((frame.pts - start_pts) * time_base * fps)
        yield index, frame


def _seek(container: InputContainer, stream: VideoStream,
          target: int) -> Iterator[tuple[int, av.VideoFrame]] | None:
    """Seek to the keyframe at or before frame ``target`` and index frames from there.

    Returns None when the landing cannot be trusted (no timestamps, off the frame grid, or past the
    target), in which case the caller decodes from the start instead.
    """
    fps = _constant_rate(stream)
    if fps is None:
        return None
    time_base = Fraction(stream.time_base)
    start_pts = stream.start_time or 0
    try:
        container.seek(start_pts + int(target / (fps * time_base)), backward=True, any_frame=False,
                       stream=stream)
        frames = container.decode(stream)
        first = next(frames, None)
    except av.FFmpegError:
        return None
    if first is None or first.pts is None:
        return None
    position = (first.pts - start_pts) * time_base * fps
    index = round(position)
    if abs(position - index) > 0.25 or not 0 <= index <= target:
        return None
    return _timestamped(first, index, frames, start_pts, time_base, fps)


def _pick(frames: Iterator[tuple[int, av.VideoFrame]], wanted: list[int]
          ) -> dict[int, av.VideoFrame]:
    """Map each wanted index (sorted, unique) to the frame on screen at that index.

    That is the frame with the index itself, or the last one before it when timestamps skip it,
    or the last frame of the file for indices past the end. Stops as soon as all are found.
    """
    picked: dict[int, av.VideoFrame] = {}
    pos, last = 0, None
    for index, frame in frames:
        while pos < len(wanted) and wanted[pos] < index:
            picked[wanted[pos]] = last if last is not None else frame
            pos += 1
        while pos < len(wanted) and wanted[pos] == index:
            picked[index] = frame
            pos += 1
        last = frame
        if pos == len(wanted):
            break
    if last is None:
        raise VideoDecodeError("no decodable video frames")
    for index in wanted[pos:]:
        picked[index] = last
    return picked


def _output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def _to_rgb(frame: av.VideoFrame, short_side: int | None, rotation: int) -> np.ndarray:
    """RGB (H, W, 3) uint8, resized by swscale in the same pass as the colour conversion.

    The short side does not change under rotation, so resizing before rotating gives the same size.
    """
    width, height = _output_size(frame.width, frame.height, short_side)
    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
    return rotate_upright(rgb, rotation)


def _check_indices(indices: Sequence[int]) -> list[int]:
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        raise ValueError("decode_frames needs at least one frame index")
    if wanted[0] < 0:
        raise ValueError(f"frame indices must be >= 0, got {wanted[0]}")
    return wanted


def decode_frames(source: Source, indices: Sequence[int], short_side: int | None = None,
                  threads: int = 1) -> np.ndarray:
    """Decode the frames at ``indices`` as uint8 RGB ``(T, H, W, 3)``, in the order given.

    Indices are presentation-order positions from 0 and may repeat or be unsorted. Rule for short
    files: an index past the last frame gets the last frame (the samplers already loop or clamp;
    this is the safety net). Frames come out upright (the display rotation is applied) and, with
    ``short_side``, resized so their shorter side has that length, keeping the aspect ratio.

    Only the needed span is decoded: a seek to the keyframe before the first wanted frame when it is
    at least ``SEEK_MIN_FRAMES`` in (constant-frame-rate files only; variable-rate files are decoded
    from the start and frames counted), and a stop right after the last wanted frame. ``threads`` is
    FFmpeg's decoder thread count (0: FFmpeg chooses).
    """
    wanted = _check_indices(indices)
    picked = None
    if wanted[0] >= SEEK_MIN_FRAMES:
        picked = _decode(source, wanted, short_side, threads, seek=True)
    if picked is None:  # no seek, or an untrustworthy landing: decode from the start
        picked = _decode(source, wanted, short_side, threads, seek=False)
    assert picked is not None  # decoding from the start yields frames or raises
    return np.stack([picked[int(i)] for i in indices])


def _decode(source: Source, wanted: list[int], short_side: int | None, threads: int,
            seek: bool) -> dict[int, np.ndarray] | None:
    """One decoding pass; None when ``seek`` was asked for but could not be trusted."""
    name = _describe(source)
    with _open(source) as (container, stream):
        _configure_threads(stream, threads)
        if seek:
            frames = _seek(container, stream, wanted[0])
            if frames is None:
                return None
        else:
            frames = _counted(container.decode(stream))
        try:
            picked = _pick(frames, wanted)
        except VideoDecodeError as exc:
            raise VideoDecodeError(f"{name}: {exc}") from None
        rotation = _rotation(stream, next(iter(picked.values())))
        converted: dict[int, np.ndarray] = {}  # one conversion per distinct frame
        for index, frame in picked.items():
            if id(frame) not in converted:
                converted[id(frame)] = _to_rgb(frame, short_side, rotation)
        return {index: converted[id(frame)] for index, frame in picked.items()}


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------

def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value}")


def dense_indices(num_frames: int, clip_len: int, interval: int, *, train: bool,
                  num_clips: int = 1, rng: np.random.Generator | None = None) -> list[list[int]]:
    """Clips of ``clip_len`` frames ``interval`` apart (mmaction2 ``SampleFrames``, Kinetics).

    With ``span = clip_len * interval``:
    - train: the video is cut into ``num_clips`` equal chunks of ``num_frames - span + 1`` start
      positions and each clip starts at a random position in its chunk; for one clip that is a
      random start in ``[0, num_frames - span]``. Start 0 when the video is shorter than the span.
    - test: clip ``i`` starts at ``int(avg / 2 + i * avg)`` with ``avg = (num_frames - span + 1) /
      num_clips``, i.e. evenly spaced and centred; start 0 for every clip when the video is no
      longer than the span.
    Indices past the end wrap around (``index % num_frames``): mmaction2's ``out_of_bound_opt``
    ``'loop'``.
    """
    _check_positive(num_frames=num_frames, clip_len=clip_len, interval=interval,
                    num_clips=num_clips)
    span = clip_len * interval
    positions = num_frames - span + 1
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        chunk = positions // num_clips
        starts = ([i * chunk + int(rng.integers(chunk)) for i in range(num_clips)] if chunk > 0
                  else [0] * num_clips)
    elif num_frames > span:
        # int(avg/2 + i*avg) in exact integer arithmetic: floor((2i + 1) * positions / (2 * clips)).
        starts = [(2 * i + 1) * positions // (2 * num_clips) for i in range(num_clips)]
    else:
        starts = [0] * num_clips
    return [[(start + j * interval) % num_frames for j in range(clip_len)] for start in starts]


def _view_offset(lo: int, hi: int, view: int, num_views: int) -> int:
    """Test view ``view`` of ``num_views`` within ``[lo, hi]``: at fraction ``(2 view + 1) /
    (2 num_views)``, rounded down; one view is the middle, ``(lo + hi) // 2``."""
    return lo + (hi - lo) * (2 * view + 1) // (2 * num_views)


def uniform_indices(num_frames: int, num_segments: int, *, train: bool,
                    rng: np.random.Generator | None = None, view: int = 0,
                    num_views: int = 1) -> list[int]:
    """One frame per segment, as the released AIM configs sample SSv2 and Diving-48.

    The official rule (mmaction2 ``SampleFrames(frame_uniform=True)``, after SlowFast):
    ``seg = (num_frames - 1) / num_segments``, segment ``i`` spans ``round(seg * i)`` to
    ``round(seg * (i + 1))`` with both ends included, so neighbours share their boundary frame
    and the last frame can be drawn. ``round`` is half-to-even in float arithmetic, as NumPy's.
    train: a uniform draw in each segment; test: ``(start + end) // 2``. Further test views
    (``num_views`` > 1, which the release never uses) sit at evenly spaced offsets in each segment.
    """
    _check_positive(num_frames=num_frames, num_segments=num_segments, num_views=num_views)
    seg = (num_frames - 1) / num_segments
    bounds = [(round(seg * i), round(seg * (i + 1))) for i in range(num_segments)]
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        return [int(rng.integers(lo, hi + 1)) for lo, hi in bounds]
    return [_view_offset(lo, hi, view, num_views) for lo, hi in bounds]


def tsn_uniform_indices(num_frames: int, num_segments: int, *, train: bool,
                        rng: np.random.Generator | None = None, view: int = 0,
                        num_views: int = 1) -> list[int]:
    """One frame per segment, TSN-style: ``num_segments`` segments of ``num_frames / num_segments``.

    Segment ``i`` spans ``[floor(seg * i), floor(seg * (i + 1)))`` (end excluded); train draws
    uniformly in it, test view ``view`` of ``num_views`` sits at fraction ``(2 view + 1) /
    (2 num_views)`` of it (one view: ``int(seg * i + seg / 2)``), in exact integer arithmetic.
    """
    _check_positive(num_frames=num_frames, num_segments=num_segments, num_views=num_views)
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        bounds = [num_frames * i // num_segments for i in range(num_segments + 1)]
        return [lo + int(rng.integers(max(hi - lo, 1))) for lo, hi in zip(bounds[:-1], bounds[1:])]
    denom = 2 * num_views * num_segments
    return [num_frames * (2 * num_views * i + 2 * view + 1) // denom for i in range(num_segments)]


UNIFORM_SAMPLERS = {"uniform": uniform_indices, "uniform_tsn": tsn_uniform_indices}


def clip_indices(cfg: "DataConfig", num_frames: int, clip_len: int, *, train: bool,
                 rng: np.random.Generator | None = None) -> list[list[int]]:
    """The frame indices of each temporal view of one video, as ``cfg.sampler`` says.

    Training draws one view. Testing draws ``cfg.test_clips`` views: evenly spaced dense clips, or
    for the uniform samplers the same segments sampled at ``cfg.test_clips`` evenly spaced offsets
    within each segment (one view: the segment middles).
    """
    if cfg.sampler == "dense":
        return dense_indices(num_frames, clip_len, cfg.frame_interval, train=train,
                             num_clips=1 if train else cfg.test_clips, rng=rng)
    sample = UNIFORM_SAMPLERS.get(cfg.sampler)
    if sample is None:
        raise ValueError(f"data.sampler: expected one of {['dense', *UNIFORM_SAMPLERS]}, "
                         f"got {cfg.sampler!r}")
    if train:
        return [sample(num_frames, clip_len, train=True, rng=rng)]
    return [sample(num_frames, clip_len, train=False, view=view, num_views=cfg.test_clips)
            for view in range(cfg.test_clips)]


_SAMPLING = {"uniform": "uniform segments (the released rule)",
             "uniform_tsn": "uniform segments (TSN-style)"}


@dataclass(frozen=True)
class EvalProtocol:
    """How each video is tested: ``clips`` temporal views x ``crops`` spatial views of ``frames``
    frames, sampled as ``sampling`` says. Printed with every result and logged to MLflow, since
    numbers from different protocols do not compare."""

    clips: int
    crops: int
    frames: int
    sampling: str

    def __str__(self) -> str:
        return (f"{self.clips} clip{'s' * (self.clips != 1)} x {self.crops} "
                f"crop{'s' * (self.crops != 1)} of {self.frames} frames, {self.sampling}")


def eval_protocol(cfg: "Config") -> EvalProtocol:
    """The test protocol ``cfg`` evaluates with (:func:`clip_indices` and the test crops)."""
    data = cfg.data
    sampling = (f"dense, every {data.frame_interval} frames" if data.sampler == "dense"
                else _SAMPLING[data.sampler])
    return EvalProtocol(data.test_clips, data.test_crops, cfg.model.num_frames, sampling)
