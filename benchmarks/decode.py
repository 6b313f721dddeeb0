"""Decode benchmark: CPU per Kinetics training clip against bytes per video, raw and prepared.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/decode.py [--videos 4] [--clips 8] [--rounds 3]
[--json out.json] [--calibrate]``

Generates Kinetics-like videos (10 s at 30 fps, 340x256, textured moving content with sensor
noise: ``benchmarks/ingest.py``'s generator), encodes each with x264's defaults (the raw file: a
keyframe every 250 frames, 3 B-frames, preset medium, crf 23), converts it with
``aim_core.prepared.prepare_video`` into each candidate storage form, then measures per form, with
one decoder thread and one torch thread:

- CPU ms (``time.process_time``) and wall ms per 8x16 dense training clip (random start, the
  Kinetics recipe), decoding only, through ``aim_core.video.decode_frames``; the median of
  ``--rounds`` rounds, the forms interleaved within each round so machine load hits all alike;
- the same plus the Kinetics train transform (random-resized crop to 224, flip), measured once on
  decoded clips, and the CPU cores that decoding plus augmentation need per GPU at 400 clips/s;
- bytes per video, PSNR of the decoded frames against the raw file's (what the conversion keeps),
  and the CPU seconds the one-off conversion took per video.

``--calibrate`` also sweeps the seek cost that ``plan_decoding`` charges (``SEEK_COST_FRAMES``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aim_core.video as video  # noqa: E402
from aim_core.config import DataConfig, PrepareConfig  # noqa: E402
from aim_core.frame_archive import META_NAME, frame_name  # noqa: E402
from aim_core.prepared import prepare_video  # noqa: E402
from aim_core.transforms import build_train_transform  # noqa: E402
from aim_core.video import (Keyframes, decode_frames, dense_indices, iter_frames,  # noqa: E402
                            probe_video)
from benchmarks.ingest import FPS, HEIGHT, WIDTH, kinetics_like_frames  # noqa: E402

NUM_FRAMES = 300   # 10 s at 30 fps
CLIP_LEN, INTERVAL = 8, 16
IMAGE_SIZE = 224
TARGET_CLIPS_PER_S = 400
DEFAULT = PrepareConfig()  # gop 2, no B-frames, tune fastdecode, crf 18, at the raw short side/rate
PREPARED = {  # name: storage form; the H.264 ones differ from the default in what the name says
    "h264 gop 16": replace(DEFAULT, gop=16),
    "h264 gop 8": replace(DEFAULT, gop=8),
    "h264 gop 4": replace(DEFAULT, gop=4),
    "h264 gop 2": DEFAULT,
    "h264 all-intra": replace(DEFAULT, gop=1),
    "h264 gop 4, 3 B-frames": replace(DEFAULT, gop=4, bframes=3),
    "h264 gop 4, CABAC+deblock": replace(DEFAULT, gop=4, fast_decode=False),
    "jpeg q75 zip": PrepareConfig(codec="jpeg", jpeg_quality=75),
    "jpeg q90 zip": PrepareConfig(codec="jpeg", jpeg_quality=90),
}
SCANNED = "h264 gop 2"  # also read with its keyframes found per clip, as without a manifest


@dataclass
class Form:
    """One storage form: its files, and how a clip is read from one of them."""

    name: str
    read: str                                  # keyframes: through, scan or given
    files: list[Path] = field(default_factory=list)
    keyframes: list[Keyframes | None] = field(default_factory=list)
    prepare_s: float | None = None             # CPU s per video of the conversion
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)

    def clip(self, k: int, indices: list[int]) -> np.ndarray:
        path, table = self.files[k], self.keyframes[k]
        if self.read == "through":  # the previous decoder: one seek, then decode through
            return decode_frames(path, indices, keyframes=_first_entry(table, min(indices)))
        return decode_frames(path, indices, keyframes=table if self.read == "given" else None)


def _first_entry(table: Keyframes | None, first: int) -> Keyframes:
    """Only the keyframe before ``first``: what decoding from one seek to the end amounts to."""
    assert table is not None
    k = max(i for i, index in enumerate(table.indices) if index <= first)
    return Keyframes((table.indices[k],), (table.pts[k],))


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def write_x264_defaults(path: Path, frames: np.ndarray) -> None:
    """The raw file: libx264 with no options at all, as most downloaded videos were made."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def write_mjpeg_mp4(path: Path, archive: Path) -> None:
    """The archive's very JPEG bytes as an MJPEG stream in MP4: the same images read through
    PyAV's path (FFmpeg's JPEG decoder and swscale) instead of Pillow's libjpeg-turbo."""
    with zipfile.ZipFile(archive) as z, av.open(str(path), "w") as container:
        meta = json.loads(z.read(META_NAME))
        stream = container.add_stream("mjpeg", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = meta["width"], meta["height"], "yuvj420p"
        for index in range(meta["num_frames"]):
            packet = av.Packet(z.read(frame_name(index)))
            packet.pts = packet.dts = index
            packet.time_base, packet.stream, packet.is_keyframe = Fraction(1, FPS), stream, True
            container.mux(packet)


def make_forms(root: Path, num_videos: int) -> tuple[list[Form], dict[str, list[np.ndarray]]]:
    """Every form's files, and the frames to compare with: the generated ones, and the raw
    files' from a sequential decode."""
    generated = [kinetics_like_frames(seed=k, num_frames=NUM_FRAMES) for k in range(num_videos)]
    raw = [root / f"raw_{k}.mp4" for k in range(num_videos)]
    for path, frames in zip(raw, generated):
        write_x264_defaults(path, frames)
    tables = [probe_video(p, keyframes=True).keyframes for p in raw]
    forms = [Form("raw x264 defaults", read, raw, tables) for read in ("through", "scan", "given")]
    for name, fmt in PREPARED.items():
        form = Form(name, "given")
        start = time.process_time()
        for k, path in enumerate(raw):
            done = prepare_video(path, root / f"{name.replace(' ', '_')}_{k}{fmt.suffix}", fmt)
            form.files.append(Path(done.path))
            form.keyframes.append(done.keyframes)
        form.prepare_s = (time.process_time() - start) / num_videos
        forms.append(form)
        if name == SCANNED:
            forms.append(Form(name, "scan", form.files, form.keyframes, form.prepare_s))
    mjpeg = Form("mjpeg q90 mp4 (PyAV path)", "scan")
    archives = next(f for f in forms if f.name == "jpeg q90 zip").files
    for k, archive in enumerate(archives):
        mjpeg.files.append(root / f"mjpeg_{k}.mp4")
        write_mjpeg_mp4(mjpeg.files[-1], archive)
        mjpeg.keyframes.append(None)
    forms.append(mjpeg)
    decoded = [np.stack([f for _, f in iter_frames(p)]) for p in raw]
    return forms, {"generated": generated, "raw": decoded}


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------

def train_clips(num_videos: int, per_video: int, seed: int) -> list[tuple[int, list[int]]]:
    rng = np.random.default_rng(seed)
    return [(k, dense_indices(NUM_FRAMES, CLIP_LEN, INTERVAL, train=True, rng=rng)[0])
            for k in range(num_videos) for _ in range(per_video)]


def measure_round(forms: list[Form], clips: list[tuple[int, list[int]]], shift: int) -> None:
    """One timing of every form on ``clips``, starting at form ``shift`` so no form always runs
    first (or always right after the most expensive one)."""
    for form in forms[shift % len(forms):] + forms[:shift % len(forms)]:
        cpu, wall = time.process_time(), time.perf_counter()
        for k, indices in clips:
            form.clip(k, indices)
        form.cpu_ms.append((time.process_time() - cpu) * 1000 / len(clips))
        form.wall_ms.append((time.perf_counter() - wall) * 1000 / len(clips))


def check_and_score(forms: list[Form], truth: dict[str, list[np.ndarray]]
                    ) -> dict[str, dict[str, float]]:
    """PSNR of each form's clips against the generated frames and against the raw file's; reading
    the raw file must give exactly the frames of a sequential decode, however it seeks."""
    clips = train_clips(len(truth["raw"]), 2, seed=99)
    scores: dict[str, dict[str, float]] = {}
    for form in forms:
        decoded = np.stack([form.clip(k, c) for k, c in clips]).astype(np.float64)
        for against, frames in truth.items():
            mse = float(np.mean((decoded - np.stack([frames[k][c] for k, c in clips])) ** 2))
            scores.setdefault(form.name, {})[against] = (
                round(10 * np.log10(255 ** 2 / mse), 1) if mse else None)
        if form.name.startswith("raw"):
            assert scores[form.name]["raw"] is None, form.read
    return scores


def augmentation_ms(clip: np.ndarray, repeats: int = 30) -> float:
    """CPU ms of the Kinetics train transform (random-resized crop to 224, flip) on one clip."""
    transform = build_train_transform(DataConfig(), IMAGE_SIZE)
    transform(clip)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        transform(clip)
        times.append((time.process_time() - start) * 1000)
    return statistics.median(times)


def calibrate(forms: list[Form], clips: list[tuple[int, list[int]]], rounds: int) -> str:
    """CPU ms per clip for several seek costs: SEEK_COST_FRAMES should sit in the flat bottom."""
    costs, saved = (0, 1, 2, 4, 8), video.SEEK_COST_FRAMES
    chosen = [f for f in forms if f.read == "given" and f.name.startswith(("raw", "h264 gop"))]
    results = {f.name: {c: [] for c in costs} for f in chosen}
    try:
        for _ in range(rounds):
            for cost in costs:
                video.SEEK_COST_FRAMES = cost
                for form in chosen:
                    start = time.process_time()
                    for k, indices in clips:
                        form.clip(k, indices)
                    results[form.name][cost].append((time.process_time() - start) * 1000
                                                    / len(clips))
    finally:
        video.SEEK_COST_FRAMES = saved
    lines = ["seek cost (frames) | " + " | ".join(f"{c:>5}" for c in costs)]
    for name, by_cost in results.items():
        lines.append(f"{name:<18} | " + " | ".join(f"{statistics.median(v):5.1f}"
                                                    for v in by_cost.values()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def rows(forms: list[Form], psnr: dict[str, dict[str, float]], aug_ms: float
         ) -> list[dict[str, object]]:
    out = []
    for form in forms:
        cpu = statistics.median(form.cpu_ms)
        out.append({
            "form": form.name, "read": form.read, "cpu_ms": round(cpu, 2),
            "wall_ms": round(statistics.median(form.wall_ms), 2),
            "cpu_ms_with_aug": round(cpu + aug_ms, 2),
            "cores_per_gpu": round((cpu + aug_ms) * TARGET_CLIPS_PER_S / 1000, 1),
            "mb_per_video": round(np.mean([os.path.getsize(p) for p in form.files]) / 1e6, 3),
            "psnr_db_vs_generated": psnr[form.name]["generated"],
            "psnr_db_vs_raw": psnr[form.name]["raw"],  # None: identical
            "prepare_cpu_s": None if form.prepare_s is None else round(form.prepare_s, 2)})
    return out


def format_table(table: list[dict[str, object]]) -> str:
    header = ("| storage | keyframes | decode CPU ms | wall ms | + Kinetics aug | cores/GPU at 400 "
              "clips/s | MB per 10 s video | PSNR dB vs generated | vs raw | prepare CPU s |")
    lines = [header, "|" + "---|" * 10]
    read_names = {"through": "one seek, decode through (old)", "scan": "scanned per clip",
                  "given": "given (manifest)"}
    for r in table:
        prep = "-" if r["prepare_cpu_s"] is None else f"{r['prepare_cpu_s']:.1f}"
        fidelity = "exact" if r["psnr_db_vs_raw"] is None else f"{r['psnr_db_vs_raw']:.1f}"
        cells = [r["form"], read_names[r["read"]], f"{r['cpu_ms']:.1f}", f"{r['wall_ms']:.1f}",
                 f"{r['cpu_ms_with_aug']:.1f}", f"{r['cores_per_gpu']:.1f}",
                 f"{r['mb_per_video']:.2f}", f"{r['psnr_db_vs_generated']:.1f}", fidelity, prep]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--clips", type=int, default=8, help="training clips per video per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="aim_decode_bench_") as tmp:
        start = time.perf_counter()
        forms, truth = make_forms(Path(tmp), args.videos)
        print(f"wrote {args.videos} raw videos ({NUM_FRAMES} frames, {WIDTH}x{HEIGHT}, {FPS} fps) "
              f"and {len(PREPARED) + 1} prepared forms in {time.perf_counter() - start:.0f} s")
        psnr = check_and_score(forms, truth)
        clips = train_clips(args.videos, args.clips, seed=0)
        for r in range(args.rounds):
            measure_round(forms, train_clips(args.videos, args.clips, seed=r), shift=r * 5)
        aug_ms = augmentation_ms(decode_frames(forms[0].files[0], clips[0][1]))
        table = rows(forms, psnr, aug_ms)
        calibration = calibrate(forms, clips, args.rounds) if args.calibrate else None

    print(f"\n8x16 Kinetics training clips, one decoder thread, median of {args.rounds} rounds of "
          f"{len(clips)} clips; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; PyAV "
          f"{av.__version__}; Kinetics train transform {aug_ms:.1f} ms CPU per clip\n")
    print(format_table(table))
    if calibration:
        print(f"\nCPU ms per clip by seek cost (SEEK_COST_FRAMES = {video.SEEK_COST_FRAMES})\n"
              + calibration)
    if args.json:
        args.json.write_text(json.dumps({"aug_ms": aug_ms, "rows": table}, indent=1))


if __name__ == "__main__":
    main()
