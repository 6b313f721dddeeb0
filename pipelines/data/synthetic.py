"""The embedded demo data set: tiny real H.264 MP4s whose classes need temporal order.

Two families of classes:

- appearance classes (``red_square``, ``blue_circle``): a fixed colour and shape wandering randomly;
  one frame is enough to tell them apart.
- temporal-order pairs (``move_left_to_right`` / ``move_right_to_left``, ``move_top_to_bottom`` /
  ``move_bottom_to_top``, ``grow`` / ``shrink``): the second class of a pair is the *reversed frame
  list* of the first, rendered once. Video ``k`` of one class is exactly video ``k`` of its partner
  played backwards, so their frame sets are identical (rendering the reverse separately lets
  rounding make the sets differ, and a space-only model then scores above chance). Object colour
  and shape, background texture, start offset and speed are random per video, so only the order
  of frames tells the classes apart.

Output (``out_dir``)::

    videos/<class>/<class>_<k:04d>.mp4   folder-per-class layout (format: folder, root: videos)
    train.txt, val.txt                   list-format annotations relative to videos/ (format: list);
                                         the split the folder format makes with data.seed = seed
    labels.txt                           class names, one per line (data.labels_file for 'list')
    class_map.json                       ClassMap; metadata.temporal_order[name] is a bool,
                                         metadata.reverse_of[name] names the partner class
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from aim_core.annotations import ClassMap, VideoRecord, stratified_split
from aim_core.config import X264_PARAMS


@dataclass(frozen=True)
class SynthClass:
    """How a class is made: ``motion`` for rendered classes, ``reverse_of`` for reversed ones."""

    name: str
    motion: str | None = None                # random_walk | horizontal | vertical | scale
    colour: tuple[int, int, int] | None = None  # fixed colour (appearance classes)
    shape: str | None = None                 # fixed shape (appearance classes)
    reverse_of: str | None = None

    @property
    def temporal_order(self) -> bool:
        return self.motion in ("horizontal", "vertical", "scale") or self.reverse_of is not None


CLASSES: dict[str, SynthClass] = {c.name: c for c in (
    SynthClass("red_square", "random_walk", (220, 30, 30), "square"),
    SynthClass("blue_circle", "random_walk", (30, 60, 230), "circle"),
    SynthClass("move_left_to_right", "horizontal"),
    SynthClass("move_right_to_left", reverse_of="move_left_to_right"),
    SynthClass("move_top_to_bottom", "vertical"),
    SynthClass("move_bottom_to_top", reverse_of="move_top_to_bottom"),
    SynthClass("grow", "scale"),
    SynthClass("shrink", reverse_of="grow"),
)}

DEFAULT_CLASSES: tuple[str, ...] = ("blue_circle", "move_bottom_to_top", "move_left_to_right",
                                    "move_right_to_left", "move_top_to_bottom", "red_square")

# Temporal classes draw colours away from pure red and blue so appearance classes stay distinct.
_PALETTE = np.array([(40, 200, 60), (230, 210, 40), (40, 210, 210), (210, 60, 210),
                     (240, 240, 240), (240, 140, 30)], dtype=np.float32)
_SHAPES = ("square", "circle", "diamond")


def generate_synthetic(out_dir: str | Path, *, videos_per_class: int = 40,
                       size: int | tuple[int, int] = 64, frames: int = 16, fps: int = 8,
                       seed: int = 0, classes: Sequence[str] = DEFAULT_CLASSES,
                       val_fraction: float = 0.2) -> Path:
    """Write the demo set under ``out_dir`` (see the module docstring); deterministic by seed.

    Classes are indexed in sorted order, as the ``folder`` format reads them.
    """
    width, height = (size, size) if isinstance(size, int) else size
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"size: expected even sides >= 16 (yuv420p), got {width}x{height}")
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"classes: unknown {unknown}; available: {list(CLASSES)}")
    if videos_per_class < 1 or frames < 2:
        raise ValueError("videos_per_class must be >= 1 and frames >= 2")
    classes = sorted(classes)  # the order the folder format reads, so both formats agree
    out = Path(out_dir)
    class_map = ClassMap(list(classes), {
        "temporal_order": {c: CLASSES[c].temporal_order for c in classes},
        "reverse_of": {c: CLASSES[c].reverse_of for c in classes if CLASSES[c].reverse_of},
        "generator": {"videos_per_class": videos_per_class, "size": [width, height],
                      "frames": frames, "fps": fps, "seed": seed},
    })
    records = []
    for label, name in enumerate(classes):
        folder = out / "videos" / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(videos_per_class):
            rel = f"{name}/{name}_{k:04d}.mp4"
            write_mp4(out / "videos" / rel, render_video(name, k, seed, (width, height), frames), fps)
            records.append(VideoRecord(rel, label, rel[:-4], name))
    train, val = stratified_split(records, val_fraction, seed)
    for split, rows in (("train", train), ("val", val)):
        (out / f"{split}.txt").write_text("".join(f"{r.path} {r.label}\n" for r in rows))
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    class_map.save(str(out / "class_map.json"))
    return out


def render_video(name: str, index: int, seed: int, size: tuple[int, int], frames: int
                 ) -> np.ndarray:
    """Frames ``uint8 (T, H, W, 3)`` of video ``index`` of class ``name``, before encoding."""
    spec = CLASSES[name]
    if spec.reverse_of is not None:
        return render_video(spec.reverse_of, index, seed, size, frames)[::-1].copy()
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), index])
    width, height = size
    background = _background(rng, width, height)
    if spec.colour is not None:
        colour, shape = np.array(spec.colour, np.float32), spec.shape
    else:
        colour, shape = _PALETTE[rng.integers(len(_PALETTE))], _SHAPES[rng.integers(len(_SHAPES))]
    centres, radii = _trajectory(spec.motion, rng, width, height, frames)
    noise = rng.normal(0, 6, size=(frames, height, width, 1)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        mask = _shape_mask(shape, xx, yy, centres[t], radii[t])[..., None]
        frame = np.where(mask, colour, background) + noise[t]
        video[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


def write_mp4(path: Path, video: np.ndarray, fps: int) -> None:
    """H.264 (libx264, yuv420p, single-threaded and without the macroblock tree, so the bytes
    depend only on the frames: x264's macroblock tree reads uninitialised memory on small frames,
    see ``aim_core.prepared.write_h264``).

    Frames are converted to yuv420p explicitly: leaving the conversion to ``encode()`` gave
    different bytes from run to run (PyAV 18), which breaks determinism by seed.
    """
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={
            "crf": "18", "threads": "1", "x264-params": X264_PARAMS})
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        for frame in video:
            yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(yuv))
        container.mux(stream.encode())


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A dim base colour plus a smooth random texture, fixed over the video."""
    base = rng.uniform(20, 90, size=3).astype(np.float32)
    coarse = rng.normal(0, 18, size=(height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]
    return base + texture


def _trajectory(motion: str | None, rng: np.random.Generator, width: int, height: int,
                frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Object centres ``(T, 2)`` (x, y) and radii ``(T,)`` for one video."""
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32)[:, None]
    side = min(width, height)
    if motion == "scale":
        r0, r1 = side * rng.uniform(0.06, 0.12), side * rng.uniform(0.28, 0.4)
        radii = r0 + (r1 - r0) * t[:, 0]
        centre = np.array([rng.uniform(0.4, 0.6) * width, rng.uniform(0.4, 0.6) * height])
        return np.repeat(centre[None], frames, 0), radii
    r = side * rng.uniform(0.1, 0.16)
    radii = np.full(frames, r, np.float32)
    if motion in ("horizontal", "vertical"):
        along, across = (width, height) if motion == "horizontal" else (height, width)
        span = along - 2 * r
        length = span * rng.uniform(0.5, 0.95)              # speed
        start = r + rng.uniform(0, span - length)           # start offset
        pos = start + length * t[:, 0]
        other = rng.uniform(r, across - r) + rng.normal(0, 0.5, frames)  # small wobble
        xy = np.stack([pos, other] if motion == "horizontal" else [other, pos], axis=1)
        return xy, radii
    # random walk with reflections at the borders
    lo, hi = np.array([r, r]), np.array([width - r, height - r])
    xy = np.empty((frames, 2), np.float32)
    xy[0] = rng.uniform(lo, hi)
    velocity = rng.normal(0, side * 0.06, size=2)
    for i in range(1, frames):
        velocity = 0.8 * velocity + rng.normal(0, side * 0.03, size=2)
        nxt = xy[i - 1] + velocity
        bounce = (nxt < lo) | (nxt > hi)
        velocity[bounce] *= -1
        xy[i] = np.clip(nxt, lo, hi)
    return xy, radii


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, centre: np.ndarray, r: float
                ) -> np.ndarray:
    dx, dy = np.abs(xx - centre[0]), np.abs(yy - centre[1])
    if shape == "square":
        return (dx <= r) & (dy <= r)
    if shape == "diamond":
        return dx + dy <= r * 1.3
    return dx * dx + dy * dy <= r * r
