"""Loader benchmark: the training data path alone, raw against prepared, inside Ray Train workers.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/loader.py [--videos 24] [--copies 1] [--seconds 10]
[--epochs 3] [--workers 1,2] [--storage raw,prepared] [--device cpu|cuda] [--step-ms 0[,1000]]
[--fractions 1[,0.5]] [--json out.json]``

Generates Kinetics-like videos (``--seconds`` at 30 fps, 340x256, textured moving content with
sensor noise: ``benchmarks/ingest.py``'s generator) encoded with x264's defaults (the raw set), and
converts them once with ``aim-video prepare``'s job (the prepared set, default settings). Then, per
storage and per number of workers, it trains a no-op model on the Kinetics-400 ViT-B/16 8x16
recipe, as training starts it (``ensure_ray``'s cluster and Ray Data settings): the real datasets
(:func:`pipelines.data.training.training_data`) handed to a real ``TorchTrainer``, each worker
reading its shard with the training loop's own :func:`pipelines.train.worker.train_batches` and
normalising on its device, no model.

CPU time is sampled from ``/proc`` (psutil) for every process of the Ray session and split into
the training processes (less the normalisation, which runs on the GPU there) and all of Ray's
other processes (decode tasks, split coordinator, raylet, GCS, Train's actors, dashboard), over
whole epochs after the first (their starts included: planning and launching a Ray Data
execution). It is also taken beyond the processes' idle rates, measured while the workers sleep
between the first and second epochs: Ray's background is paid per second and per node whatever
the clip rate, so at this benchmark's few clips a second it is a large share of each clip, and
at a GPU node's hundreds a small one.

It reports clips/s; CPU ms per clip of decoding and augmentation (the decode tasks' own
``time.process_time``), of the training processes and of Ray's processes; the same decoder and
transform called in a plain loop in this process, alone on the machine (Ray's processes against
it), and Ray's processes against the tasks' own clocks (the same function under the same load:
on a small shared machine the plain loop runs faster than the tasks by contention alone); the
idle rates; the CPU cores the data path needs per GPU at 400 clips/s; bytes per video; and CPU
per clip of each kind of process over whole epochs. With several ``--step-ms`` (the consumer
slowed, as by a GPU step, so clips come at other rates) or ``--fractions`` (epochs of other
sizes), Ray's CPU beyond idle is fitted as a cost per clip, one by the second of a running
execution and one per epoch, which gives its CPU per clip at a GPU node's 400 clips/s on a
Kinetics-size epoch: what the target is about, and what this machine cannot reach.

Targets (issue 11): the training process at most 1 ms of CPU per clip; prepared decoding plus
augmentation at most 20 ms per clip; Ray Data's CPU per clip at most 1.2x the plain loop's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
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
KINETICS_TRAIN_CLIPS = 240_000   # a Kinetics-400 epoch: one clip per training video


# ----------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------

def make_raw(root: Path, videos: int, seconds: float, copies: int = 1) -> Path:
    """``root/<class>/<id>.mp4``: x264 defaults, as most downloaded videos were made; each
    generated video also saved ``copies - 1`` more times under other names (an epoch of the
    size that fills training blocks, for a fraction of the encoding time: a copy costs what
    the original costs to decode, prepare and augment)."""
    for i in range(videos):
        path = root / CLASSES[i % len(CLASSES)] / f"v{i:04d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_x264_defaults(path, kinetics_like_frames(i, round(seconds * FPS)))
        for k in range(1, copies):
            shutil.copyfile(path, path.with_name(f"v{i:04d}-{k}.mp4"))
    return root


def recipe(root: Path, fmt: str, workers: int, device: str, storage: Path) -> Config:
    """The Kinetics-400 ViT-B/16 8x16 recipe's data path, on ``root``."""
    return Config.load(RECIPE, {
        "data.root": str(root), "data.format": fmt, "data.val_fraction": 0.1,
        "model.num_classes": len(CLASSES),
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
    """A training worker without a model: the batches, cast and normalised on the device.

    After the first epoch, which also starts and warms every process, every worker idles
    ``idle_s``: the session's background CPU, no data moving. With ``step_s`` each batch "takes"
    that long on the device (a sleep, as a worker waiting on its GPU); without, the consumer
    always waits on the data."""
    import ray.train
    import ray.train.torch

    from pipelines.train.worker import train_batches

    cfg = Config.from_dict(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(1, cfg.optim.epochs + 1):
        if epoch == 2:
            idle = {"start": time.time(), "cpu_s": time.process_time()}
            time.sleep(config["idle_s"])
            idle.update(end=time.time(), cpu_s=time.process_time() - idle["cpu_s"])
            Path(config["out"], f"idle-{rank}.json").write_text(json.dumps(idle))
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
            time.sleep(config["step_s"])
        stats.update(end=time.time(), cpu_s=time.process_time() - cpu)
        Path(config["out"], f"epoch-{rank}-{epoch}.json").write_text(json.dumps(stats))
        ray.train.report({"epoch": epoch})


class SessionCpu:
    """CPU seconds of every process of the Ray session, sampled every 0.1 s (a process that
    exits keeps its last sample), by process and by kind of process (its ``ray::`` name or
    executable; a task process between tasks is ``ray::IDLE``, so it keeps the name of the last
    task it was seen running), as functions of time.

    One sample reads many processes, which on a busy machine takes longer than its period, so
    each keeps when its reads began and ended: a window is measured from the last sample read
    wholly before it to the first read wholly after it, never missing CPU at either edge."""

    def __init__(self, session_dir: str) -> None:
        from pipelines.runtime import session_processes

        self._pids = lambda: session_processes(session_dir)
        self._last: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self.samples: list[tuple[float, float, dict[int, float]]] = []
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
            begun = time.time()
            for pid in self._pids():
                try:
                    process = psutil.Process(pid)
                    t = process.cpu_times()
                    self._last[pid] = t.user + t.system
                    kind = process_kind(process)
                    if kind is None:               # exiting: keep the name it had while alive
                        self.kinds.setdefault(pid, process.name())
                    elif kind != "ray::IDLE" or not self.kinds.get(pid, "").startswith("ray::"):
                        self.kinds[pid] = kind     # a task process is named by its last task
                except psutil.Error:
                    pass
            self.samples.append((begun, time.time(), dict(self._last)))
            self._stop.wait(0.1)

    def by_kind(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each kind of process spent between ``start`` and ``end``."""
        before = next((s for s in reversed(self.samples) if s[1] <= start), self.samples[0])[2]
        after = next((s for s in self.samples if s[0] >= end), self.samples[-1])[2]
        kinds: dict[str, float] = {}
        for pid, cpu in after.items():
            kind = self.kinds.get(pid, "?")
            kinds[kind] = kinds.get(kind, 0.0) + cpu - before.get(pid, 0.0)
        return kinds


def process_kind(process: psutil.Process) -> str | None:
    """A Ray worker's task or actor (``ray::MapBatches(...)``, ``ray::SplitCoordinator``; an
    idle worker's name changes as it takes tasks), else the executable's name; None for a
    process with no command line (one exiting, or a kernel thread): its name is cut to 15
    characters."""
    cmdline = process.cmdline()
    if not cmdline:
        return None
    if cmdline[0].startswith("ray::"):
        return cmdline[0].split(".")[0]
    if any(arg.endswith("default_worker.py") for arg in cmdline[:3]):
        return "ray::IDLE"      # a worker not yet renamed: it has taken no task so far
    return process.name()


def measure_ray(cfg: Config, out: Path, session_dir: str, step_s: float = 0.0,
                idle_s: float = 5.0) -> dict[str, Any]:
    """One no-op training run on ``cfg``: per steady epoch (all but the first), its clips,
    seconds and CPU seconds (the training processes less their normalisation, and all other
    processes of the session), and the idle rates (CPU seconds per second) of both."""
    import ray
    import ray.train
    import ray.train.torch

    from pipelines.data.clips import training_clips_per_task
    from pipelines.data.training import EveryRowOnce, training_data
    from pipelines.resources import train_scaling

    data = training_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    trainer = ray.train.torch.TorchTrainer(
        no_op_loop, datasets=data.datasets, dataset_config=EveryRowOnce(),
        train_loop_config={"cfg": cfg.to_dict(), "clock": data.clock, "out": str(out),
                           "step_s": step_s, "idle_s": idle_s},
        scaling_config=ray.train.ScalingConfig(**train_scaling(
            cfg.run, ray.cluster_resources().get("GPU", 0))),
        run_config=ray.train.RunConfig(name=f"loader-{out.name}", storage_path=str(out)))
    with SessionCpu(session_dir) as cpu:
        trainer.fit()
    ranks = [json.loads(p.read_text()) for p in out.glob("epoch-*.json")]
    epochs = []
    for n in sorted({r["epoch"] for r in ranks if r["epoch"] > 1}):
        of = [r for r in ranks if r["epoch"] == n]
        start, end = min(r["start"] for r in of), max(r["end"] for r in of)
        train = sum(r["cpu_s"] - r["normalise_s"] for r in of)
        kinds = cpu.by_kind(start, end)
        epochs.append({"clips": sum(r["clips"] for r in of), "seconds": end - start,
                       "train_cpu_s": train,
                       "ray_cpu_s": sum(kinds.values()) - sum(r["cpu_s"] for r in of),
                       "by_kind_s": kinds})
    steady = [r for r in ranks if r["epoch"] > 1]
    clips = sum(r["clips"] for r in steady)
    idle = [json.loads(p.read_text()) for p in out.glob("idle-*.json")]
    idle_start, idle_end = max(i["start"] for i in idle), min(i["end"] for i in idle)
    train_idle = sum(i["cpu_s"] / (i["end"] - i["start"]) for i in idle)
    return {"epochs": epochs, "train_idle_cores": train_idle,
            "clips_per_task": training_clips_per_task(cfg, data.train_clips),
            "ray_idle_cores": sum(cpu.by_kind(idle_start, idle_end).values()) /
            (idle_end - idle_start) - train_idle,
            "decode_ms": sum(r["decode_ms"] for r in steady) / clips,
            "augment_ms": sum(r["augment_ms"] for r in steady) / clips,
            "normalise_ms": 1e3 * sum(r["normalise_s"] for r in steady) / clips}


def per_clip(run: dict[str, Any]) -> dict[str, float]:
    """CPU ms per clip over whole epochs (their starts included), as measured and beyond the
    processes' idle rates: Ray's background is paid per second and per node, so on a GPU node
    delivering hundreds of clips a second it all but vanishes per clip, while on this benchmark's
    few clips a second it is a large share."""
    clips = sum(e["clips"] for e in run["epochs"])
    seconds = sum(e["seconds"] for e in run["epochs"])
    figures = {"clips_per_s": clips / seconds}
    for part in ("train", "ray"):
        used = sum(e[f"{part}_cpu_s"] for e in run["epochs"])
        figures[f"{part}_ms"] = 1e3 * used / clips
        figures[f"{part}_beyond_idle_ms"] = 1e3 * (used - run[f"{part}_idle_cores"] * seconds) / \
            clips
        figures[f"{part}_idle_cores"] = run[f"{part}_idle_cores"]
    for key in ("decode_ms", "augment_ms", "normalise_ms"):
        figures[key] = run[key]
    return figures


def split_costs(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Ray's CPU beyond idle split into a cost per clip (ms), one by the second of a running
    execution (cores: the split coordinator's scheduling loop, stats and metrics) and one per
    epoch (s: planning and starting the execution), by non-negative least squares over the epochs
    of runs at other clip rates (``--step-ms``) and epoch sizes (``--fractions``). At a rate R and
    E clips an epoch the CPU per clip is then ``ms + 1000 * (cores / R + s / E)``."""
    rows = [(e["clips"], e["seconds"], 1.0,
             e["ray_cpu_s"] - run["ray_idle_cores"] * e["seconds"])
            for run in runs for e in run["epochs"]]
    design = np.array([r[:3] for r in rows], dtype=float)
    used = np.array([r[3] for r in rows], dtype=float)
    best: tuple[float, np.ndarray] | None = None
    for mask in range(1, 8):     # every subset of the three costs, the others held at zero
        cols = [c for c in range(3) if mask >> c & 1]
        if np.linalg.matrix_rank(design[:, cols]) < len(cols):
            continue
        fit, *_ = np.linalg.lstsq(design[:, cols], used, rcond=None)
        if (fit < 0).any():
            continue
        coef = np.zeros(3)
        coef[cols] = fit
        error = float(np.sum((design @ coef - used) ** 2))
        if best is None or error < best[0]:
            best = (error, coef)
    coef = np.zeros(3) if best is None else best[1]
    return {"per_clip_ms": 1e3 * float(coef[0]), "cores": float(coef[1]),
            "per_epoch_s": float(coef[2])}


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
    head = ("| storage | bytes / video | workers | clips a task | device step | clips/s | "
            "decode ms | augment ms | training "
            "process ms | Ray's processes ms | plain loop ms | Ray / plain | Ray / in the tasks | "
            "idle cores: training, Ray | cores per GPU at "
            f"{TARGET_CLIPS_PER_S} clips/s |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        tasks = r["decode_ms"] + r["augment_ms"]
        lines.append(
            f"| {r['storage']} | {r['bytes'] / 1e6:.2f} MB | {r['workers']} | "
            f"{r['clips_per_task']} | "
            f"{'data-bound' if not r['step_ms'] else format(r['step_ms'], 'g') + ' ms'}"
            f"{'' if r['fraction'] == 1 else ', fraction ' + format(r['fraction'], 'g')} | "
            f"{r['clips_per_s']:.1f} | {r['decode_ms']:.1f} | {r['augment_ms']:.1f} | "
            f"{r['train_ms']:.2f} ({r['train_beyond_idle_ms']:.2f}) | "
            f"{r['ray_ms']:.1f} ({r['ray_beyond_idle_ms']:.1f}) | {r['plain_ms']:.1f} | "
            f"{r['ray_ms'] / r['plain_ms']:.2f}x ({r['ray_beyond_idle_ms'] / r['plain_ms']:.2f}x) | "
            f"{r['ray_ms'] / tasks:.2f}x ({r['ray_beyond_idle_ms'] / tasks:.2f}x) | "
            f"{r['train_idle_cores']:.3f}, {r['ray_idle_cores']:.2f} | "
            f"{(r['ray_beyond_idle_ms'] + r['train_beyond_idle_ms']) * TARGET_CLIPS_PER_S / 1e3:.1f}"
            f" + {r['train_idle_cores'] / r['workers'] + r['ray_idle_cores']:.2f} |")
    return "\n".join(lines) + (
        "\n(in brackets: beyond the idle rates; cores per GPU: per clip beyond idle, + one "
        "worker's and the node's idle rates)")


def by_kind(run: dict[str, Any]) -> str:
    """CPU ms per clip of each kind of process over whole epochs, idle included."""
    clips = sum(e["clips"] for e in run["epochs"])
    kinds: dict[str, float] = {}
    for epoch in run["epochs"]:
        for kind, used in epoch["by_kind_s"].items():
            kinds[kind] = kinds.get(kind, 0.0) + used
    return ", ".join(f"{k} {1e3 * v / clips:.1f}" for k, v in sorted(
        kinds.items(), key=lambda kv: -kv[1]) if 1e3 * v / clips >= 0.1)


def format_split(storage: str, workers: int, costs: dict[str, float], plain_ms: float) -> str:
    at_target = costs["per_clip_ms"] + 1e3 * (costs["cores"] / TARGET_CLIPS_PER_S
                                              + costs["per_epoch_s"] / KINETICS_TRAIN_CLIPS)
    return (f"- {storage}, {workers} worker(s): {costs['per_clip_ms']:.1f} ms per clip + "
            f"{costs['cores']:.3f} cores + {costs['per_epoch_s']:.2f} s per epoch; at "
            f"{TARGET_CLIPS_PER_S} clips/s and {KINETICS_TRAIN_CLIPS:,}-clip epochs "
            f"{at_target:.1f} ms per clip, {at_target / plain_ms:.2f}x the plain loop's "
            f"{plain_ms:.1f} ms")


def _numbers(parser: argparse.ArgumentParser, name: str, text: str, low: float,
             high: float = float("inf")) -> list[float]:
    """Distinct comma-separated numbers in [low, high], or a one-line usage error."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or len(set(values)) != len(values) or not all(low <= v <= high for v in values):
        bounds = f"at least {low:g}" if high == float("inf") else f"from {low:g} to {high:g}"
        parser.error(f"{name}: expected distinct numbers {bounds}, comma-separated, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--copies", type=int, default=1,
                        help="each video saved this many times in all, under other names: "
                        "epochs big enough for full training blocks (data.train_block_mb)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--step-ms", default="0",
                        help="each batch takes this long on the device (0: data-bound); "
                        "comma-separated for several runs")
    parser.add_argument("--fractions", default="1",
                        help="data.train_fraction of each run (epochs of other sizes), "
                        "comma-separated; with several step times or fractions Ray's CPU is "
                        "also split into per clip, by the second and per epoch")
    parser.add_argument("--storage", default="raw,prepared",
                        help="which sets to measure: raw, prepared or both")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    steps = _numbers(parser, "--step-ms", args.step_ms, 0)
    fractions = _numbers(parser, "--fractions", args.fractions, 0.01, 1)
    if args.videos < 1 or args.copies < 1:
        parser.error(f"--videos and --copies: expected positive integers, got {args.videos} and "
                     f"{args.copies}")
    chosen = {name.strip() for name in args.storage.split(",")}
    if not chosen or not chosen <= {"raw", "prepared"}:
        parser.error(f"--storage: expected raw, prepared or both, got {args.storage!r}")
    from pipelines.runtime import keep_private_cluster_on_loopback

    keep_private_cluster_on_loopback()          # before Ray is imported, as the CLI does
    from pipelines.data.prepare import run_prepare
    from pipelines.runtime import ensure_ray, private_sessions, shutdown_ray

    started = time.perf_counter()
    ensure_ray()   # the cluster training starts: its dashboard, Ray Data's settings
    (session_dir,) = private_sessions()
    with tempfile.TemporaryDirectory(prefix="aim_loader_") as folder:
        work = Path(folder)
        raw = make_raw(work / "raw", args.videos, args.seconds, args.copies)
        sets = {"raw (x264 defaults)": (raw, "folder", bytes_per_video(raw, (".mp4",)))}
        if "prepared" in chosen:
            prepared = work / "prepared"
            run_prepare(recipe(raw, "folder", 1, args.device, work / "runs").with_overrides(
                {"prepare.output": str(prepared)}))
            sets["prepared (default)"] = (prepared, "prepared", bytes_per_video(
                prepared / "videos", (".mp4", ".zip")))
        rows, kinds, fits = [], [], []
        for storage, (root, fmt, size) in sets.items():
            if storage.split(" ")[0] not in chosen:
                continue
            for workers in (int(w) for w in args.workers.split(",")):
                cfg = recipe(root, fmt, workers, args.device, work / "runs").with_overrides(
                    {"optim.epochs": args.epochs, "optim.warmup_epochs": 0})
                plain_ms, runs = measure_plain(cfg, args.epochs), []
                for fraction in fractions:
                    for step_ms in steps:
                        name = f"{storage}, {workers} worker(s), {step_ms:g} ms steps" + (
                            f", fraction {fraction:g}" if fraction < 1 else "")
                        run = measure_ray(
                            cfg.with_overrides({"data.train_fraction": fraction}),
                            work / f"{fmt}-{workers}-{step_ms:g}-{fraction:g}", session_dir,
                            step_ms / 1e3)
                        runs.append(run)
                        rows.append({"storage": storage, "bytes": size, "workers": workers,
                                     "step_ms": step_ms, "fraction": fraction,
                                     "clips_per_task": run["clips_per_task"], **per_clip(run),
                                     "plain_ms": plain_ms})
                        kinds.append(f"- {name}: {by_kind(run)}")
                if len(runs) > 1:
                    fits.append({"storage": storage, "workers": workers, "plain_ms": plain_ms,
                                 **split_costs(runs)})
    shutdown_ray()
    print(f"{args.videos} videos" + (f" x {args.copies} copies" if args.copies > 1 else "")
          + f" of {args.seconds:g} s at 340x256, Kinetics-400 8x16 recipe "
          f"(crop to 224, flip), {args.epochs} epochs (the first not counted), device "
          f"{args.device}, {os.cpu_count()} CPUs; {time.perf_counter() - started:.0f} s")
    print(format_table(rows))
    if fits:
        print(f"\nRay's CPU beyond idle, fitted over device steps of {args.step_ms} ms and "
              f"training fractions {args.fractions} as per clip + by the second + per epoch, "
              f"and so per clip at a GPU's rate on a Kinetics-size epoch:")
        print("\n".join(format_split(f["storage"], f["workers"], f, f["plain_ms"])
                        for f in fits))
    print("\nCPU ms per clip by kind of process, whole epochs, idle included:")
    print("\n".join(kinds))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "fits": fits}, indent=1))


if __name__ == "__main__":
    main()
