"""Video decoding (PyAV) and the frame-index samplers of the AIM recipes.

Decoding is the cost centre of video training, so :func:`decode_frames` decodes only around the
sampled frames. It knows where the keyframes are (from one demuxing pass over the packets, which
decodes nothing, or from the caller, who can keep them from ingest's scan) and reaches each wanted
frame either by decoding on from the previous one or by seeking to the last keyframe before it,
whichever decodes fewer frames; it stops after the last wanted frame and converts to RGB (resizing
on the way, in swscale) only the frames it returns. The frames are exactly those of a plain
sequential decode, B-frames, open GOPs and variable frame rates included. Every failure to read a
file surfaces as :class:`VideoDecodeError`, so ingest can skip and report bad files instead of
dying on them. Prepared JPEG-frame archives (:mod:`aim_core.frame_archive`) read through the same
two functions, :func:`probe_video` and :func:`decode_frames`.

Frame indices are presentation order, counted from 0. The samplers are pure functions of their
arguments and a ``numpy.random.Generator``; they follow mmaction2's ``SampleFrames`` as the released
AIM configs use it: dense clips (Kinetics) and ``frame_uniform`` segments (SSv2, Diving-48), with
TSN-style segments as an alternative.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, TYPE_CHECKING, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .frame_archive import FrameArchive, is_frame_archive

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream

    from aim_core.config import Config, DataConfig

Source = Union[str, "os.PathLike[str]", IO[bytes]]

# What a seek costs, in decoded frames: the decoder's flush and restart, and the frames it decodes
# past the target before it can return it (benchmarks/decode.py measures it: about one frame).
SEEK_COST_FRAMES = 2
# When every wanted frame is below this index, decoding from the start is cheaper than demuxing
# the whole file to find its keyframes.
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


@dataclass(frozen=True)
class Keyframes:
    """Where decoding can start: each keyframe's presentation index and packet pts, ascending.

    A keyframe's index is the rank of its pts among all the stream's packets, which stays right
    with B-frames, with open GOPs (whose leading pictures follow the keyframe in decode order but
    are shown before it) and with variable frame rates. Learning them demuxes every packet once and
    decodes nothing (``probe_video(source, keyframes=True)``; about 1 ms for 10 s of 340x256
    H.264, against 0.2-1 ms to decode one frame). Ingest can keep them per video and pass them to
    every later :func:`decode_frames` call. Empty: decode from the start (packets without pts).
    """

    indices: tuple[int, ...] = ()
    pts: tuple[int, ...] = ()

    def __post_init__(self) -> None:  # accept lists and numpy arrays, e.g. from a Ray Data row
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        object.__setattr__(self, "pts", tuple(int(p) for p in self.pts))
        if len(self.indices) != len(self.pts):
            raise ValueError(f"keyframes: {len(self.indices)} indices but {len(self.pts)} pts")
        if list(self.indices) != sorted(set(self.indices)):
            raise ValueError("keyframes: indices must be strictly increasing")


@dataclass
class VideoInfo:
    """What :func:`probe_video` learns about a file's first video stream.

    ``width`` and ``height`` are those of the upright frames :func:`decode_frames` returns (the
    coded size, swapped for a 90/270 degree rotation). ``rotation`` is the counter-clockwise angle
    (0, 90, 180 or 270) applied to coded frames to show them upright, as the display matrix says.
    ``keyframes`` is filled when asked for.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float
    rotation: int
    keyframes: Keyframes | None = None


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


@contextmanager
def _open_archive(source: Source) -> Iterator[FrameArchive]:
    """Open a JPEG-frame archive; any failure to read it becomes a VideoDecodeError naming it."""
    name = _describe(source)
    try:
        archive = FrameArchive(source)
    except Exception as exc:  # zipfile, json and torchvision raise several types
        raise VideoDecodeError(f"{name}: not a readable frame archive ({exc})") from exc
    with archive:
        try:
            yield archive
        except VideoDecodeError:
            raise
        except Exception as exc:
            raise VideoDecodeError(f"{name}: frame archive unreadable ({exc})") from exc


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


def _first_frame_and_packets(container: InputContainer, stream: VideoStream, scan: bool
                             ) -> tuple[av.VideoFrame | None, list[tuple[int | None, bool]]]:
    """Decode just the first frame (for its rotation side data) and, if asked, list every packet's
    ``(pts, is_keyframe)``.

    Listing demuxes without decoding: one packet per frame for the codecs we meet, and cheap.
    The final empty packet flushes the decoder, so a file with a single frame still yields it.
    """
    first, packets = None, []
    for packet in container.demux(stream):
        if packet.size:
            packets.append((packet.pts, packet.is_keyframe))
        if first is None:
            frames = packet.decode()
            first = frames[0] if frames else None
        if first is not None and not scan:
            break
    return first, packets


def _keyframes_of(packets: list[tuple[int | None, bool]]) -> Keyframes:
    """Presentation index and pts of each keyframe among ``packets``; empty without usable pts."""
    times = [pts for pts, _ in packets]
    if None in times or len(set(times)) != len(times):
        return Keyframes()
    rank = {pts: i for i, pts in enumerate(sorted(times))}
    keys = sorted((rank[pts], pts) for pts, key in packets if key)
    return Keyframes(tuple(i for i, _ in keys), tuple(p for _, p in keys))


def probe_video(source: Source, *, keyframes: bool = False) -> VideoInfo:
    """Frame count, rate, upright size, duration and rotation of the first video stream.

    Uses the container's frame count when it has one (MP4), otherwise counts packets (MKV, WebM).
    Decodes one frame, because rotation lives in frame side data and because a file whose first
    frame does not decode is not worth sampling. ``keyframes=True`` also lists every packet to
    fill :attr:`VideoInfo.keyframes` (a demuxing pass, no decoding). A JPEG-frame archive reports
    what its ``frames.json`` says.
    """
    if is_frame_archive(source):
        with _open_archive(source) as archive:
            a = archive.info
            return VideoInfo(num_frames=a.num_frames, fps=a.fps, width=a.width, height=a.height,
                             duration=a.num_frames / a.fps, rotation=0)
    name = _describe(source)
    with _open(source) as (container, stream):
        first, packets = _first_frame_and_packets(container, stream,
                                                  scan=keyframes or not stream.frames)
        num_frames = len(packets) if keyframes else stream.frames or len(packets)
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
                         duration=duration or (num_frames / fps if fps else 0.0), rotation=rotation,
                         keyframes=_keyframes_of(packets) if keyframes else None)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

def _configure_threads(stream: VideoStream, threads: int) -> None:
    # AUTO lets FFmpeg use frame and slice threads; 0 asks it to pick the count.
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = max(int(threads), 0)


Plan = list[tuple[Union[int, None], list[int]]]


def plan_decoding(wanted: Sequence[int], keyframes: Sequence[int], *,
                  at_start: bool = True) -> Plan | None:
    """Split sorted, unique ``wanted`` indices into runs that each begin with a seek or not.

    Each run is ``(k, indices)``: seek to keyframe ``keyframes[k]`` and decode on through
    ``indices``, or with ``k`` None decode on from where the previous run stopped (the file's start
    for the first run, when ``at_start``). A wanted frame starts a run when seeking to the last
    keyframe before it decodes fewer frames, counting :data:`SEEK_COST_FRAMES` for the seek, than
    decoding on does. Choosing frame by frame is optimal: the decoder ends at the same frame either
    way. None when the first frame cannot be reached (not ``at_start`` and no keyframe before it).
    """
    runs: Plan = []
    next_index = 0 if at_start else None  # the frame the decoder returns next, if it goes on
    for index in wanted:
        k = bisect_right(keyframes, index) - 1
        on = index - next_index + 1 if next_index is not None else None
        seek = index - keyframes[k] + 1 + SEEK_COST_FRAMES if k >= 0 else None
        if seek is not None and (on is None or seek < on):
            runs.append((k, [index]))
        elif on is None:
            return None
        elif runs:
            runs[-1][1].append(index)
        else:
            runs.append((None, [index]))
        next_index = index + 1
    return runs


class _MissedKeyframe(Exception):
    """A seek did not reach the keyframe the table names (a stale table, an odd demuxer)."""


def _frames_from(container: InputContainer, stream: VideoStream,
                 key_pts: int | None) -> Iterator[av.VideoFrame]:
    """Decoded frames in presentation order from the demuxer's position.

    After a seek to the keyframe with pts ``key_pts``, packets before its own are skipped undecoded
    (the demuxer may land on an earlier keyframe), and frames shown before it are dropped: an open
    GOP's leading pictures, whose references were never decoded. The first frame returned is then
    the keyframe itself, or :class:`_MissedKeyframe` is raised.
    """
    found, first = key_pts is None, key_pts is not None
    for packet in container.demux(stream):
        if not found:
            if packet.is_keyframe and packet.pts == key_pts:
                found = True
            elif packet.size == 0 or (packet.is_keyframe and (packet.pts or 0) > key_pts):
                raise _MissedKeyframe
            else:
                continue
        for frame in packet.decode():
            if first:
                if frame.pts is not None and frame.pts < key_pts:
                    continue
                if frame.pts != key_pts:
                    raise _MissedKeyframe
                first = False
            yield frame


def _run_plan(container: InputContainer, stream: VideoStream, plan: Plan,
              keyframes: Keyframes) -> dict[int, av.VideoFrame]:
    """Decode what ``plan`` says; each wanted index maps to its frame (past the end: the last)."""
    picked: dict[int, av.VideoFrame] = {}
    frames: Iterator[av.VideoFrame] | None = None
    index, last = -1, None  # index of `last`, the latest frame decoded
    for k, run in plan:
        if k is not None:
            try:
                container.seek(keyframes.pts[k], backward=True, any_frame=False, stream=stream)
            except av.FFmpegError:
                raise _MissedKeyframe from None
            frames = _frames_from(container, stream, keyframes.pts[k])
            index = keyframes.indices[k] - 1
        elif frames is None:
            frames = _frames_from(container, stream, None)
        for wanted in run:
            while index < wanted:
                frame = next(frames, None)
                if frame is None:
                    break
                index, last = index + 1, frame
            if last is None:
                raise VideoDecodeError("no decodable video frames")
            picked[wanted] = last
    return picked


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """``(width, height)`` resized so the shorter side is ``short_side``, keeping the aspect."""
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


_converters = threading.local()


def _to_rgb(frame: av.VideoFrame, width: int, height: int, rotation: int) -> np.ndarray:
    """RGB uint8 of the coded frame resized to ``width`` x ``height`` (swscale, in the same pass
    as the colour conversion), then turned upright.

    One reformatter per thread keeps its swscale context from frame to frame and call to call:
    building one costs more than converting a 340x256 frame.
    """
    if not hasattr(_converters, "reformatter"):
        _converters.reformatter = VideoReformatter()
    rgb = _converters.reformatter.reformat(frame, format="rgb24", width=width, height=height)
    return rotate_upright(rgb.to_ndarray(), rotation)


def _to_rgb_short_side(frame: av.VideoFrame, short_side: int | None, rotation: int) -> np.ndarray:
    # The short side does not change under rotation: resizing before rotating gives the same size.
    return _to_rgb(frame, *scaled_size(frame.width, frame.height, short_side), rotation)


def _check_indices(indices: Sequence[int]) -> list[int]:
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        raise ValueError("decode_frames needs at least one frame index")
    if wanted[0] < 0:
        raise ValueError(f"frame indices must be >= 0, got {wanted[0]}")
    return wanted


def decode_frames(source: Source, indices: Sequence[int], short_side: int | None = None,
                  threads: int = 1, keyframes: Keyframes | None = None) -> np.ndarray:
    """Decode the frames at ``indices`` as uint8 RGB ``(T, H, W, 3)``, in the order given.

    Indices are presentation-order positions from 0 and may repeat or be unsorted. Rule for short
    files: an index past the last frame gets the last frame (the samplers already loop or clamp;
    this is the safety net). Frames come out upright (the display rotation is applied) and, with
    ``short_side``, resized so their shorter side has that length, keeping the aspect ratio.

    Only what the indices need is decoded (see :func:`plan_decoding`): ``keyframes`` from an
    earlier ``probe_video(source, keyframes=True)`` saves the demuxing pass that finds them here.
    Should a seek land elsewhere than the table says, the file is decoded from the start instead.
    ``threads`` is FFmpeg's decoder thread count (0: FFmpeg chooses). JPEG-frame archives decode
    just the frames asked for.
    """
    wanted = _check_indices(indices)
    if is_frame_archive(source):
        picked = _read_archive(source, wanted, short_side)
    else:
        picked = _decode(source, wanted, short_side, threads, keyframes)
        if picked is None:  # no usable keyframe table, or a seek that missed: go sequentially
            picked = _decode(source, wanted, short_side, threads, Keyframes())
    assert picked is not None  # decoding from the start yields frames or raises
    return np.stack([picked[int(i)] for i in indices])


def _decode(source: Source, wanted: list[int], short_side: int | None, threads: int,
            keyframes: Keyframes | None) -> dict[int, np.ndarray] | None:
    """One decoding pass (scanning for keyframes first when none are given and it may pay);
    None when the plan needs seeks the file does not support."""
    name = _describe(source)
    with _open(source) as (container, stream):
        _configure_threads(stream, threads)
        scanned = keyframes is None and wanted[-1] >= SEEK_MIN_FRAMES
        if scanned:  # demux only: the decoder starts after the first seek
            keyframes = _keyframes_of([(p.pts, p.is_keyframe)
                                       for p in container.demux(stream) if p.size])
        plan = plan_decoding(wanted, (keyframes or Keyframes()).indices, at_start=not scanned)
        if plan is None:
            return None
        try:
            picked = _run_plan(container, stream, plan, keyframes or Keyframes())
        except _MissedKeyframe:
            return None
        except VideoDecodeError as exc:
            raise VideoDecodeError(f"{name}: {exc}") from None
        rotation = _rotation(stream, next(iter(picked.values())))
        converted: dict[int, np.ndarray] = {}  # one conversion per distinct frame
        for index, frame in picked.items():
            if id(frame) not in converted:
                converted[id(frame)] = _to_rgb_short_side(frame, short_side, rotation)
        return {index: converted[id(frame)] for index, frame in picked.items()}


def _read_archive(source: Source, wanted: list[int],
                  short_side: int | None) -> dict[int, np.ndarray]:
    """The wanted frames of a JPEG-frame archive (past the end: the last), resized if asked."""
    with _open_archive(source) as archive:
        last = archive.info.num_frames - 1
        frames = {i: archive.read(min(i, last)) for i in sorted({min(i, last) for i in wanted})}
    for i, image in frames.items():  # resized by swscale, as video frames are
        if scaled_size(image.shape[1], image.shape[0], short_side) != image.shape[1::-1]:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frames[i] = _to_rgb_short_side(frame, short_side, 0)
    return {i: frames[min(i, last)] for i in wanted}


def iter_frames(source: Source, size: tuple[int, int] | None = None, threads: int = 1
                ) -> Iterator[tuple[Fraction, np.ndarray]]:
    """Every frame in presentation order, with its time in seconds from the first frame.

    For converting whole videos (``aim_core.prepared``); sampling goes through
    :func:`decode_frames`. Frames are upright uint8 RGB, resized to ``size`` = ``(width, height)``
    of the upright frame when given. Times come from the timestamps (exact, variable rates
    included), or from the frame count and average rate where a file has none.
    """
    with _open(source) as (container, stream):
        _configure_threads(stream, threads)
        rate = Fraction(stream.average_rate or stream.guessed_rate or 30)
        time_base = Fraction(stream.time_base) if stream.time_base else None
        start, rotation, coded = None, 0, None
        for count, frame in enumerate(container.decode(stream)):
            if coded is None:  # the size to give swscale, which sees the frames before rotation
                rotation = _rotation(stream, frame)
                coded = (frame.width, frame.height)
                if size is not None:
                    coded = (size[1], size[0]) if rotation % 180 else size
            if frame.pts is None or time_base is None:
                time = Fraction(count) / rate
            else:
                start = frame.pts if start is None else start
                time = (frame.pts - start) * time_base
            yield time, _to_rgb(frame, *coded, rotation)


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
