"""Loader benchmark: the training data path alone, raw against prepared, inside Ray Train workers.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/loader.py [--videos 24] [--seconds 10]
[--epochs 3] [--workers 1,2] [--device cpu|cuda] [--json out.json]``

Generates Kinetics-like videos (``--seconds`` at 30 fps, 340x256, textured moving content with
sensor noise: ``benchmarks/ingest.py``'s generator) encoded with x264's defaults (the raw set), and
converts them once with ``aim-video prepare``'s job (the prepared set, default settings). Then, per
storage and per number of workers, it trains a no-op model on the Kinetics-400 ViT-B/16 8x16
recipe: the real datasets (:func:`pipelines.data.training.training_data`) handed to a real
``TorchTrainer``, each worker reading its shard with the training loop's own
:func:`pipelines.train.worker.train_batches` and normalising on its device, no model. It reports,
over the epochs after the first (steady state):

- clips/s delivered to the workers together;
- CPU ms per clip: decoding and augmentation (the decode tasks' own ``time.process_time``), the
  training processes' own share (their CPU time, less the normalisation, which runs on the GPU
  there), and all of Ray's processes together less the training processes (decode tasks plus
  Ray's own overhead), sampled from ``/proc`` through psutil;
- that against the same decoder and transform called in a plain loop in one process, and the CPU
  cores the data path needs per GPU at 400 clips/s;
- bytes per video.

Targets (issue 11): the training process at most 1 ms of CPU per clip; prepared decoding plus
augmentation at most 20 ms per clip; Ray Data's CPU per clip at most 1.2x the plain loop's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aim_core.config import Config  # noqa: E402
from aim_core.transforms import build_train_transform, to_model_input  # noqa: E402
from benchmarks.decode import write_x264_defaults  # noqa: E402
from benchmarks.ingest import FPS, kinetics_like_frames  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "k400_vitb16_8f.yaml"
CLASSES = ("pan_left", "pan_right")
TARGET_CLIPS_PER_S = 400


# ----------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------

def make_raw(root: Path, videos: int, seconds: float) -> Path:
    """``root/<class>/<id>.mp4``: x264 defaults, as most downloaded videos were made."""
    for i in range(videos):
        path = root / CLASSES[i % len(CLASSES)] / f"v{i:04d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_x264_defaults(path, kinetics_like_frames(i, round(seconds * FPS)))
    return root


def recipe(root: Path, fmt: str, workers: int, device: str, storage: Path) -> Config:
    """The Kinetics-400 ViT-B/16 8x16 recipe's data path, on ``root``."""
    return Config.load(RECIPE, {
        "data.root": str(root), "data.format": fmt, "data.val_fraction": 0.1,
        "data.videos_per_task": 4, "model.num_classes": len(CLASSES),
        "optim.per_device_batch": 8, "optim.batch_size": 8 * workers,
        # The no-op workers hold little CPU, so the decode tasks get the machine's cores.
        "run.num_workers": workers, "run.cpus_per_worker": 0.25,
        "run.use_gpu": device == "cuda", "run.storage_path": str(storage), "run.name": "loader"})


def bytes_per_video(root: Path, suffixes: tuple[str, ...]) -> float:
    files = [p for p in root.rglob("*") if p.suffix in suffixes]
    return sum(p.stat().st_size for p in files) / len(files)


# ----------------------------------------------------------------------------------------------
# The no-op training loop and the CPU it costs
# ----------------------------------------------------------------------------------------------

def no_op_loop(config: dict[str, Any]) -> None:
    """A training worker without a model: the batches, cast and normalised on the device."""
    import ray.train
    import ray.train.torch

    from pipelines.train.worker import train_batches

    cfg = Config.from_dict(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(1, cfg.optim.epochs + 1):
        if rank == 0:
            ray.get(config["clock"].set.remote(epoch))
        stats = {"rank": rank, "epoch": epoch, "start": time.time(), "clips": 0,
                 "decode_ms": 0.0, "augment_ms": 0.0, "normalise_s": 0.0}
        cpu = time.process_time()
        for batch in train_batches(shard, cfg, device):
            started = time.process_time()
            to_model_input(batch["frames"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            stats["normalise_s"] += time.process_time() - started
            stats["clips"] += len(batch["frames"])
            stats["decode_ms"] += float(batch["decode_ms"].sum())
            stats["augment_ms"] += float(batch["augment_ms"].sum())
        stats.update(end=time.time(), cpu_s=time.process_time() - cpu)
        Path(config["out"], f"{rank}-{epoch}.json").write_text(json.dumps(stats))
        ray.train.report({"epoch": epoch})


class SessionCpu:
    """CPU seconds of every process of the Ray session, sampled every 0.1 s (a process that
    exits keeps its last sample), as a function of time."""

    def __init__(self, session_dir: str) -> None:
        from pipelines.runtime import session_processes

        self._pids = lambda: session_processes(session_dir)
        self._last: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SessionCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._pids():
                try:
                    t = psutil.Process(pid).cpu_times()
                    self._last[pid] = t.user + t.system
                except psutil.Error:
                    pass
            self.samples.append((time.time(), sum(self._last.values())))
            self._stop.wait(0.1)

    def between(self, start: float, end: float) -> float:
        def at(t: float) -> float:
            return min((s for s in self.samples if s[0] >= t), default=self.samples[-1])[1]
        return at(end) - at(start)


def measure_ray(cfg: Config, out: Path, session_dir: str) -> dict[str, float]:
    """One no-op training run on ``cfg``; the steady-state figures of its later epochs."""
    import ray
    import ray.train
    import ray.train.torch

    from pipelines.data.training import training_data
    from pipelines.resources import train_scaling

    data = training_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    trainer = ray.train.torch.TorchTrainer(
        no_op_loop, datasets=data.datasets,
        train_loop_config={"cfg": cfg.to_dict(), "clock": data.clock, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(**train_scaling(
            cfg.run, ray.cluster_resources().get("GPU", 0))),
        run_config=ray.train.RunConfig(name=f"loader-{out.name}", storage_path=str(out)))
    with SessionCpu(session_dir) as cpu:
        trainer.fit()
    epochs = [json.loads(p.read_text()) for p in out.glob("*-*.json")]
    steady = [e for e in epochs if e["epoch"] > 1] or epochs
    start, end = min(e["start"] for e in steady), max(e["end"] for e in steady)
    clips = sum(e["clips"] for e in steady)
    train_cpu = sum(e["cpu_s"] for e in steady)
    normalise = sum(e["normalise_s"] for e in steady)
    return {"clips_per_s": clips / (end - start),
            "decode_ms": sum(e["decode_ms"] for e in steady) / clips,
            "augment_ms": sum(e["augment_ms"] for e in steady) / clips,
            "train_ms": 1e3 * (train_cpu - normalise) / clips,
            "normalise_ms": 1e3 * normalise / clips,
            "ray_ms": 1e3 * (cpu.between(start, end) - train_cpu) / clips}


def measure_plain(cfg: Config, epochs: int) -> float:
    """CPU ms per clip of the decode tasks' own function, called in a plain loop here."""
    from pipelines.data.clips import augmented_clip
    from pipelines.data.scan import read_videos

    videos, _, _ = read_videos(cfg, "train")
    transform = build_train_transform(cfg.data, cfg.model.image_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in a one-CPU decode task
    try:
        started, clips = time.process_time(), 0
        for epoch in range(2, epochs + 1):
            for video in videos:
                clips += augmented_clip(video, cfg.data, cfg.model.num_frames, transform,
                                        epoch) is not None
        return 1e3 * (time.process_time() - started) / clips
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| storage | bytes / video | workers | clips/s | decode ms | augment ms | training "
            "process ms | Ray's processes ms | plain loop ms | Ray / plain | cores per GPU at "
            f"{TARGET_CLIPS_PER_S} clips/s |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['storage']} | {r['bytes'] / 1e6:.2f} MB | {r['workers']} | "
                     f"{r['clips_per_s']:.1f} | {r['decode_ms']:.1f} | {r['augment_ms']:.1f} | "
                     f"{r['train_ms']:.2f} | {r['ray_ms']:.1f} | {r['plain_ms']:.1f} | "
                     f"{r['ray_ms'] / r['plain_ms']:.2f}x | "
                     f"{r['ray_ms'] * TARGET_CLIPS_PER_S / 1e3:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    import ray

    from pipelines.data.prepare import run_prepare

    started = time.perf_counter()
    context = ray.init(address="local", include_dashboard=False, log_to_driver=False)
    session_dir = context.address_info["session_dir"]
    with tempfile.TemporaryDirectory(prefix="aim_loader_") as folder:
        work = Path(folder)
        raw = make_raw(work / "raw", args.videos, args.seconds)
        prepared = work / "prepared"
        run_prepare(recipe(raw, "folder", 1, args.device, work / "runs").with_overrides(
            {"prepare.output": str(prepared)}))
        sets = {"raw (x264 defaults)": (raw, "folder", bytes_per_video(raw, (".mp4",))),
                "prepared (default)": (prepared, "prepared", bytes_per_video(
                    prepared / "videos", (".mp4", ".zip")))}
        rows = []
        for storage, (root, fmt, size) in sets.items():
            for workers in (int(w) for w in args.workers.split(",")):
                cfg = recipe(root, fmt, workers, args.device, work / "runs").with_overrides(
                    {"optim.epochs": args.epochs, "optim.warmup_epochs": 0})
                figures = measure_ray(cfg, work / f"{fmt}-{workers}", session_dir)
                rows.append({"storage": storage, "bytes": size, "workers": workers, **figures,
                             "plain_ms": measure_plain(cfg, args.epochs)})
    ray.shutdown()
    print(f"{args.videos} videos of {args.seconds:g} s at 340x256, Kinetics-400 8x16 recipe "
          f"(crop to 224, flip), {args.epochs} epochs (the first not counted), device "
          f"{args.device}, {os.cpu_count()} CPUs; {time.perf_counter() - started:.0f} s")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
