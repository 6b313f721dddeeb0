"""Small real MP4s for tests: frames that encode their own index, written with PyAV.

Frame ``i`` is mid-grey with its index written in binary as eight black/white columns across the
bottom half (least significant bit on the left) and a white marker block in the top-left corner, so
a decoded frame tells which frame it is (robust to codec noise and resizing) and which way up it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 8  # indices 0..255
LIBC = ctypes.util.find_library("c")
HAS_LIBC = LIBC is not None


def index_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames carrying their index in binary, with an orientation marker."""
    if num_frames > 2 ** BITS:
        raise ValueError(f"at most {2 ** BITS} frames can encode their index")
    frames = np.full((num_frames, height, width, 3), 128, np.uint8)
    frames[:, : height // 4, : width // 4] = 255
    edges = [width * bit // BITS for bit in range(BITS + 1)]
    for i in range(num_frames):
        for bit in range(BITS):
            frames[i, height // 2:, edges[bit]:edges[bit + 1]] = 255 if (i >> bit) & 1 else 0
    return frames


def read_index(frame: np.ndarray) -> int:
    """The index a frame of :func:`index_frames` encodes (any size: it may have been resized)."""
    h, w = frame.shape[:2]
    column = w / BITS
    rows = frame[h * 5 // 8: h * 7 // 8]
    index = 0
    for bit in range(BITS):
        lo, hi = int(bit * column + column / 4), int((bit + 1) * column - column / 4)
        if np.median(rows[:, lo:max(hi, lo + 1)]) > 127:
            index |= 1 << bit
    return index


def textured_index_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Like :func:`index_frames`, with a random texture panning across the top half.

    Every frame then differs from its neighbours everywhere, so P- and B-frames carry real
    residuals and a frame decoded from the wrong references shows it in its pixels.
    """
    frames = index_frames(num_frames, height, width)
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height // 2, width + num_frames, 3), dtype=np.uint8)
    for i in range(num_frames):
        frames[i, : height // 2] = texture[:, i:i + width]
    return frames


def smooth_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Camera-like content: drifting colour gradients and a moving bright disc, (T, H, W, 3) uint8.

    Smooth enough that codecs at their usual quality keep it at 35-45 dB PSNR, while neighbouring
    frames differ by far more than that (see ``test_prepared.py``).
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        phase = 0.3 * t
        image = np.stack([128 + 90 * np.sin(x / 9 + phase), 128 + 90 * np.cos(y / 7 - phase),
                          128 + 60 * np.sin((x + y) / 13 + 0.5 * phase)], axis=-1)
        cx, cy = (5 + 2.5 * t) % width, height / 2 + height / 4 * np.sin(t / 5)
        image[(x - cx) ** 2 + (y - cy) ** 2 < (height / 6) ** 2] = (250, 240, 200)
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images or stacks, in dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def marker_at_top_left(frame: np.ndarray) -> bool:
    """True when the white marker is in the top-left corner and the top-right is plain grey."""
    h, w = frame.shape[:2]
    top_left = float(np.median(frame[: h // 8, : w // 8]))
    top_right = float(np.median(frame[: h // 8, -(w // 8):]))
    return top_left > 200 and abs(top_right - 128) < 40


def write_video(path: str | Path, frames: np.ndarray, fps: int = 30, codec: str = "libx264",
                pix_fmt: str = "yuv420p", gop: int | None = None, rotation: int | None = None,
                pts_steps: list[int] | None = None, x264_params: str | None = None) -> Path:
    """Encode uint8 RGB ``(T, H, W, 3)`` frames to ``path``; returns the path.

    ``gop`` fixes the keyframe interval (scene-cut keyframes off; 1 is all-intra); ``rotation``
    writes a display matrix (counter-clockwise degrees, as players rotate the coded frames);
    ``pts_steps`` gives per-frame timestamp increments in 1/(fps*6) s units to make a
    variable-frame-rate file; ``x264_params`` passes libx264 settings (``"open-gop=1"``).
    libx264 keeps its defaults otherwise: 3 B-frames, as most files in the wild have.
    """
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        options = {"x264-params": x264_params} if x264_params else {}
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec.startswith("libx264"):
                options["sc_threshold"] = "0"
        stream.options = options
        if pix_fmt.startswith("gray"):
            # swscale makes full-range grey; say so, or decoders read it as limited-range video.
            stream.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
        if rotation is not None:
            stream.set_display_rotation(rotation)
        time_base = Fraction(1, fps * 6)
        pts = 0
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts_steps is not None:
                frame.pts, frame.time_base = pts, time_base
                pts += pts_steps[i % len(pts_steps)]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: str | Path, seconds: float = 0.5, codec: str = "aac") -> Path:
    """An audio-only file (silence), e.g. ``.m4a``: a media file with no video stream."""
    path = Path(path)
    rate = 16000
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        samples = stream.codec_context.frame_size or 1024
        for k in range(int(seconds * rate) // samples + 1):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, k * samples
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def keyframe_indices(path: str | Path) -> list[int]:
    """Presentation indices of the keyframes, to check a test file has the GOP it claims."""
    with av.open(str(path)) as container:
        return [i for i, frame in enumerate(container.decode(video=0)) if frame.key_frame]


def sequential_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame of ``path`` as RGB, by the plainest decode there is: the reference that
    seek-aware decoding must match exactly."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def packets(path: str | Path) -> list[tuple[int, bool]]:
    """``(pts, is_keyframe)`` of every packet, in decode order."""
    with av.open(str(path)) as container:
        return [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]


def leading_pictures(path: str | Path) -> int:
    """How many frames follow a keyframe in decode order but are shown before it (open GOPs)."""
    order = packets(path)
    count = 0
    for position, (pts, key) in enumerate(order):
        if key and position:
            count += sum(1 for later, _ in order[position + 1:position + 17] if later < pts)
    return count


def picture_types(path: str | Path) -> set[str]:
    """The picture types (``I``, ``P``, ``B``) the decoded frames carry."""
    with av.open(str(path)) as container:
        return {av.video.frame.PictureType(frame.pict_type).name
                for frame in container.decode(video=0)}


def fill_freed_heap_with(byte: int) -> None:
    """Leave the C heap's free blocks holding ``byte``, as a long-lived Ray worker's heap holds
    whatever it last freed: memory a library reads before writing then differs."""
    libc = ctypes.CDLL(LIBC)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for size in [64, 1024, 4096, 16384, 65536, 120_000] * 300:
        blocks.append(libc.malloc(size))
        ctypes.memset(blocks[-1], byte, size)
    for block in blocks:
        libc.free(block)
