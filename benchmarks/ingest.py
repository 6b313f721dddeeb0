"""Ingest benchmark: how much decoding only what is sampled saves over decoding every frame.

Run: ``.venv/bin/python benchmarks/ingest.py [--files 24] [--frames 300] [--repeats 2]``

Generates its own realistic H.264 files (340x256, textured moving content, B-frames, as re-encoded
Kinetics files are) with a long (250, ffmpeg's default) and a short (30) keyframe interval, then
measures, for each keyframe interval:
  (a) a plain sequential PyAV loop that decodes every frame to RGB, then samples one 8x16 clip;
  (b) ``aim_core.video.decode_frames`` for the same clip (seek, early stop, convert only 8 frames);
  (c) Ray Data decode tasks (the scan, then one view per video, as evaluation reads them);
  (d) per file: sampling 8 of the frames with ``decode_frames`` vs decoding the whole file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aim_core.video import decode_frames, dense_indices  # noqa: E402

WIDTH, HEIGHT, FPS = 340, 256, 30
CLIP_LEN, INTERVAL = 8, 16
GOPS = (250, 30)


# ----------------------------------------------------------------------------------------------
# Test videos
# ----------------------------------------------------------------------------------------------

def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random colour texture (blurred noise), larger than the frame so it can pan."""
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)
    for axis in (0, 1):  # box blur: soft edges like real footage, not blocks
        fine = sum(np.roll(fine, s, axis=axis) for s in range(-4, 4)) / 8
    return fine


def kinetics_like_frames(seed: int, num_frames: int) -> np.ndarray:
    """A panning textured background, a moving bright object, and sensor-like noise: content whose
    encoding and decoding cost is like real footage's (flat shapes cost a codec almost nothing)."""
    rng = np.random.default_rng(seed)
    background = _texture(rng, HEIGHT + 64, WIDTH + 2 * num_frames)
    out = np.empty((num_frames, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(num_frames):
        frame = background[32 + int(8 * np.sin(t / 20)):, 2 * t:][:HEIGHT, :WIDTH].copy()
        x, y = (40 + 3 * t) % (WIDTH - 40), int(HEIGHT / 2 + 60 * np.sin(t / 15))
        frame[max(y - 20, 0):y + 20, x:x + 40] = (240, 200, 60)
        frame += rng.normal(0, 4, frame.shape).astype(np.float32)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def write_h264(path: Path, frames: np.ndarray, gop: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "23", "sc_threshold": "0"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_dataset(root: Path, num_files: int, num_frames: int, gop: int,
                 distinct: int = 4) -> list[Path]:
    """``num_files`` files for one keyframe interval; ``distinct`` encodes, copied, to save time.

    Copies decode exactly like distinct files (the OS cache is warm for all of them either way).
    """
    folder = root / f"gop{gop}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for k in range(min(distinct, num_files)):
        path = folder / f"video_{k:03d}.mp4"
        write_h264(path, kinetics_like_frames(seed=k, num_frames=num_frames), gop)
        sources.append(path)
    files = list(sources)
    for k in range(len(sources), num_files):
        path = folder / f"video_{k:03d}.mp4"
        path.write_bytes(sources[k % len(sources)].read_bytes())
        files.append(path)
    return files


# ----------------------------------------------------------------------------------------------
# Decoders under test
# ----------------------------------------------------------------------------------------------

def decode_all_rgb(path: Path) -> list[np.ndarray]:
    """The plain loop: every frame decoded and converted to RGB."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def baseline_clip(path: Path, indices: list[int]) -> np.ndarray:
    frames = decode_all_rgb(path)
    return np.stack([frames[min(i, len(frames) - 1)] for i in indices])


def train_clips(num_files: int, num_frames: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [dense_indices(num_frames, CLIP_LEN, INTERVAL, train=True, rng=rng)[0]
            for _ in range(num_files)]


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` runs: the least disturbed by other load on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------

def measure(files: list[Path], num_frames: int, repeats: int) -> dict[str, float]:
    clips = train_clips(len(files), num_frames)
    for path, clip in zip(files[:2], clips):  # same frames either way
        assert np.array_equal(baseline_clip(path, clip), decode_frames(path, clip))

    t_a = best_time(lambda: [baseline_clip(p, c) for p, c in zip(files, clips)], repeats)
    t_b = best_time(lambda: [decode_frames(p, c) for p, c in zip(files, clips)], repeats)

    # (d) one file: a centred test clip (frames 86..198 of 300) vs decoding the whole file
    probe = files[0]
    (centred,) = dense_indices(num_frames, CLIP_LEN, INTERVAL, train=False)
    reps = max(3, 2 * repeats)
    t_sampled = best_time(lambda: decode_frames(probe, centred), reps)
    t_whole = best_time(lambda: decode_all_rgb(probe), reps)
    return {"a": len(files) / t_a, "b": len(files) / t_b, "sampled_s": t_sampled,
            "whole_s": t_whole}


# (c) Ray Data ingest (pipelines/data/ingest.py)
RAY_CPUS = (1, 2)
RAY_VIDEOS_PER_TASK = 4


def ray_clips_per_s(files: list[Path], num_cpus: int, repeats: int = 2) -> tuple[float, float]:
    """(scan seconds, clips/s of one execution) on a fresh ``ray.init(num_cpus=...)``.

    The files go through the real path: a ``list`` annotation file, ``load_split``, the probe scan
    (frame counts and keyframe tables), then executions of the evaluation dataset with one 8x16
    view per video cropped at the files' own size (``short_side`` 256, ``image_size`` 256: the
    transform is a crop, so decoding is what is measured; the training path, with augmentation,
    is ``benchmarks/loader.py``). The first execution warms the workers up; the best of
    ``repeats`` later ones is reported.
    """
    import ray

    from aim_core.config import Config
    from pipelines.data.clips import evaluation_dataset
    from pipelines.data.scan import read_videos

    folder = files[0].parent
    listing = folder / "bench_list.txt"
    listing.write_text("".join(f"{p.name} 0\n" for p in files))
    cfg = Config.from_dict({
        "data": {"root": str(folder), "format": "list", "train_annotations": str(listing),
                 "val_annotations": str(listing), "sampler": "dense",
                 "frame_interval": INTERVAL, "short_side": HEIGHT, "test_clips": 1,
                 "test_crops": 1, "videos_per_task": RAY_VIDEOS_PER_TASK},
        "model": {"num_frames": CLIP_LEN, "image_size": HEIGHT}, "run": {"ingest_cpus": 1}})
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        videos, _, report = read_videos(cfg, "val")
        scan_s = time.perf_counter() - start
        assert report.good == len(files), report.summary()
        dataset = evaluation_dataset(cfg, videos)

        def execution() -> int:
            return sum(len(b["label"]) for b in dataset.iter_batches(batch_size=8))

        assert execution() == len(files)
        best = min(best_time(execution, 1) for _ in range(repeats))
        return scan_s, len(files) / best
    finally:
        ray.shutdown()


def measure_ray(files: list[Path], num_cpus: int) -> float | None:
    """Clips/s through Ray Data with 1 and 2 CPUs, printed with the ratio to the plain loop (a)
    measured again here on the same files; returns the rate with the most CPUs for the table."""
    try:
        import pipelines.data.ingest  # noqa: F401  (lazy: Ray starts only when this is measured)
    except ImportError:
        print("(c) Ray Data ingest: skipped (pipelines.data.ingest not available)")
        return None
    from aim_core.video import probe_video

    clips = train_clips(len(files), probe_video(files[0]).num_frames)
    plain = len(files) / best_time(lambda: [baseline_clip(p, c) for p, c in zip(files, clips)], 2)
    rate = None
    for cpus in (c for c in RAY_CPUS if c <= max(num_cpus, 1)):
        scan_s, rate = ray_clips_per_s(files, cpus)
        print(f"(c) Ray Data, {cpus} CPU: {rate:6.1f} clips/s ({rate / plain:.2f}x the plain loop's "
              f"{plain:.1f}); probe scan of {len(files)} files {scan_s:.1f} s incl. start-up")
    return rate


def format_table(rows: list[tuple[int, dict[str, float], float | None]]) -> str:
    header = (f"{'GOP':>5} | {'(a) all-frames':>14} | {'(b) decode_frames':>17} | "
              f"{'b/a':>5} | {'(c) Ray':>8} | {'(d) 8 of N s':>12} | {'whole s':>8} | "
              f"{'sampled/whole':>13}")
    lines = [header, "-" * len(header)]
    for gop, r, ray in rows:
        ray_text = f"{ray:8.1f}" if ray is not None else f"{'skipped':>8}"
        lines.append(f"{gop:>5} | {r['a']:>10.1f} c/s | {r['b']:>13.1f} c/s | "
                     f"{r['b'] / r['a']:>5.2f} | {ray_text} | {r['sampled_s']:>12.4f} | "
                     f"{r['whole_s']:>8.4f} | {r['sampled_s'] / r['whole_s']:>13.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="aim_ingest_bench_") as tmp:
        for gop in GOPS:
            start = time.perf_counter()
            files = make_dataset(Path(tmp), args.files, args.frames, gop)
            print(f"GOP {gop}: wrote {len(files)} files of {args.frames} frames "
                  f"{WIDTH}x{HEIGHT} in {time.perf_counter() - start:.1f} s")
            result = measure(files, args.frames, args.repeats)
            rows.append((gop, result, measure_ray(files, num_cpus=os.cpu_count() or 1)))
    print()
    print(f"clips of {CLIP_LEN}x{INTERVAL} (dense, train sampling), one process, "
          f"{os.cpu_count()} CPUs, PyAV {av.__version__}; c/s = clips per second")
    print(format_table(rows))


if __name__ == "__main__":
    main()
